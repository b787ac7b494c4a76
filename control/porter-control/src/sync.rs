//! Sharing routes between Porter instances: the data model, the message format, the rules
//! for applying and merging changes, and the outbox of writes not yet stored. No I/O here:
//! [`crate::redis_sync`] carries these over Redis on tokio, and another runtime can carry
//! them with its own transport.
//!
//! # Data model (as the original project, extended)
//!
//! - Hash `porter:routes:simple`: field = route name (`a.example.com`, `*.example.com`, `*`),
//!   value = target: one `host:port`, or several joined by commas (`10.0.0.1:7777,10.0.0.2:7777`).
//! - Hash `porter:routes:agones`: field = route name, value = fleet name.
//! - String `porter:routes:epoch`: a random token created by the first instance that finds it
//!   missing. A different token on reconnect means Redis lost its data (restarted without
//!   persistence, flushed): the instance then restores the routes it knew into Redis
//!   (`HSETNX`, so writes made since win), instead of taking the empty hashes as deletions.
//! - Channel (`redis.channel`, default `porter_routes`): one JSON object per change,
//!   `{"fqdn","type","target"}` as the original, plus `"op"` (`"set"`, the default, or
//!   `"delete"`, which carries no `type`/`target`) and `"instance"` (the sender's ID, so an
//!   instance ignores its own messages). A `target` may also be a JSON array of `host:port`.
//!
//! # Rules
//!
//! - Start: the configuration's routes are the base; every route Redis holds overrides them.
//! - A local change (API) applies to the relay at once and goes to the outbox. The outbox keeps
//!   the latest change per name until it is stored (`HSET`/`HDEL` and `PUBLISH` in one
//!   `MULTI`), so changes made while Redis is down are written when it is back.
//! - A message from another instance applies to the relay, unless a local change to that name
//!   is still in the outbox (it will be written after, and win).
//! - A message that is not valid route JSON, or whose route is invalid, is logged and ignored
//!   as a whole.
//! - (Re)connect: subscribe, restore if the epoch changed, flush the outbox, then load both
//!   hashes: each route there is applied, and each route that came from Redis earlier but is
//!   no longer there was deleted by another instance and is removed. Routes that never were in
//!   Redis (the configuration's) are left alone. Messages that arrive during the load are
//!   applied after it, in order, so nothing published meanwhile is missed.
//!
//! Locks: the sync state is locked before the relay host, never the other way round.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::dns::Resolver;
use porter_config::{InvalidValue, ResolveError, RouteSpec, RouteText, RouteTextError, TargetText};
use porter_core::{Notification, Route, RouteError, RouteName};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use porter_host::RelayHandle;

/// The hash that holds simple routes.
pub const SIMPLE_KEY: &str = "porter:routes:simple";
/// The hash that holds Agones routes.
pub const AGONES_KEY: &str = "porter:routes:agones";
/// The key whose value changes when Redis loses its data.
pub const EPOCH_KEY: &str = "porter:routes:epoch";

pub use porter_config::RouteType;

/// The Redis hash a route of each type is stored in.
pub trait RouteHash {
    /// The Redis hash of this type.
    fn key(self) -> &'static str;
    /// The hash of the other type.
    fn other_key(self) -> &'static str;
}

impl RouteHash for RouteType {
    fn key(self) -> &'static str {
        match self {
            Self::Simple => SIMPLE_KEY,
            Self::Agones => AGONES_KEY,
        }
    }

    fn other_key(self) -> &'static str {
        match self {
            Self::Simple => AGONES_KEY,
            Self::Agones => SIMPLE_KEY,
        }
    }
}

/// A route as Redis stores it: the entry `name` = `target` in the hash of `kind`. Made only
/// from the shared text form ([`RouteSpec`]), which checks it; each instance resolves the
/// host names itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedRoute {
    /// The name it answers to.
    pub name: RouteName,
    /// Its type.
    pub kind: RouteType,
    /// `host:port[,host:port...]` for simple routes, the fleet for Agones routes.
    pub target: String,
}

impl SharedRoute {
    /// The Redis entry of a checked route.
    pub fn from_spec(spec: &RouteSpec) -> Self {
        Self {
            name: spec.name.clone(),
            kind: spec.route_type(),
            target: spec.target_text(),
        }
    }

    /// Validates the JSON form (name, type, target syntax) without resolving anything.
    pub fn from_json(json: &RouteText) -> Result<Self, RouteTextError> {
        RouteSpec::from_text(json).map(|spec| Self::from_spec(&spec))
    }

    /// Builds one from a hash entry (`field`, `value`) of the hash of `kind`.
    pub fn from_entry(kind: RouteType, field: &str, value: &str) -> Result<Self, RouteTextError> {
        RouteSpec::from_entry(kind, field, value).map(|spec| Self::from_spec(&spec))
    }

    /// The shared text form.
    pub fn spec(&self) -> Result<RouteSpec, RouteTextError> {
        RouteSpec::with_target(
            self.name.clone(),
            self.kind,
            &TargetText::One(self.target.clone()),
        )
    }

    /// The core route, host names resolved now (to their first address).
    pub fn to_route(&self) -> Result<Route, ToRouteError> {
        self.spec()?.resolve().map_err(ToRouteError::Unresolved)
    }

    /// As [`Self::to_route`], host names looked up by `resolver` (off the executor, with
    /// its timeout).
    pub async fn to_route_with(&self, resolver: &Resolver) -> Result<Route, ToRouteError> {
        resolver
            .resolve(&self.spec()?)
            .await
            .map_err(ToRouteError::Unresolved)
    }

    /// The message announcing this route.
    pub fn set_message(&self, instance: &str) -> String {
        Message {
            op: Op::Set,
            fqdn: self.name.to_string(),
            kind: Some(self.kind.as_str().to_owned()),
            target: Some(TargetText::One(self.target.clone())),
            instance: Some(instance.to_owned()),
        }
        .encode()
    }
}

/// Why a [`SharedRoute`] is not a core route ([`SharedRoute::to_route`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ToRouteError {
    /// Its text form is not a route (the name, the type or a target's syntax).
    #[error(transparent)]
    Text(#[from] RouteTextError),
    /// Targets that do not resolve to an address: every one of them, in order (never
    /// empty). Displays as their messages joined by `; `.
    #[error("{}", join_failures(.0))]
    Unresolved(Vec<ResolveError>),
}

fn join_failures(failures: &[ResolveError]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why a message from the channel cannot be decoded ([`decode_message`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// Not the JSON of a message.
    #[error("not route JSON: {0}")]
    Json(serde_json::Error),
    /// A `set` message without `type` or `target`.
    #[error("a set message needs `type` and `target`")]
    MissingSetFields,
    /// A `set` message whose route is not valid.
    #[error(transparent)]
    Route(#[from] RouteTextError),
    /// A `delete` message whose `fqdn` is not a route name.
    #[error("fqdn: {0}")]
    DeleteName(InvalidValue),
}

/// Why a message was ignored ([`MessageOutcome::Invalid`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidMessage {
    /// It does not decode.
    #[error(transparent)]
    Decode(#[from] MessageError),
    /// Its route cannot be resolved.
    #[error(transparent)]
    Route(#[from] ToRouteError),
    /// The relay refused its route.
    #[error(transparent)]
    Refused(#[from] RouteError),
}

/// What a message asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    #[default]
    Set,
    Delete,
}

/// A message on the channel, as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    #[serde(default)]
    op: Op,
    fqdn: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<TargetText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
}

impl Message {
    fn encode(&self) -> String {
        serde_json::to_string(self).expect("a message of strings always serialises")
    }

    fn delete(name: &RouteName, instance: &str) -> String {
        Self {
            op: Op::Delete,
            fqdn: name.to_string(),
            kind: None,
            target: None,
            instance: Some(instance.to_owned()),
        }
        .encode()
    }
}

/// A change to one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace.
    Set(SharedRoute),
    /// Remove.
    Delete(RouteName),
}

impl Change {
    /// The route name changed.
    pub fn name(&self) -> &RouteName {
        match self {
            Self::Set(r) => &r.name,
            Self::Delete(n) => n,
        }
    }
}

/// A decoded message: who sent it and what it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The sender's instance ID; `None` for senders that do not say (the original project).
    pub instance: Option<String>,
    /// The change.
    pub change: Change,
}

/// Decodes a message from the channel; an error says what is wrong with it.
pub fn decode_message(payload: &[u8]) -> Result<Decoded, MessageError> {
    let msg: Message = serde_json::from_slice(payload).map_err(MessageError::Json)?;
    let change = match msg.op {
        Op::Set => {
            let (Some(kind), Some(target)) = (msg.kind, msg.target) else {
                return Err(MessageError::MissingSetFields);
            };
            let text = RouteText {
                fqdn: msg.fqdn,
                kind,
                target,
                policy: None,
                weights: None,
            };
            Change::Set(SharedRoute::from_json(&text)?)
        }
        Op::Delete => Change::Delete(
            porter_config::parse_route_name(&msg.fqdn).map_err(MessageError::DeleteName)?,
        ),
    };
    Ok(Decoded {
        instance: msg.instance,
        change,
    })
}

/// One Redis command of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisCommand {
    /// `HSET key field value`.
    HSet {
        /// The hash.
        key: &'static str,
        /// The field.
        field: String,
        /// The value.
        value: String,
    },
    /// `HDEL key field`.
    HDel {
        /// The hash.
        key: &'static str,
        /// The field.
        field: String,
    },
    /// `PUBLISH channel payload`.
    Publish {
        /// The channel.
        channel: String,
        /// The message.
        payload: String,
    },
}

/// A change waiting in the outbox, with the commands that store and announce it (to run
/// together, in one `MULTI`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWrite {
    seq: u64,
    /// The change.
    pub change: Change,
    /// The commands, in order.
    pub commands: Vec<RedisCommand>,
}

/// Where the link to Redis stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkState {
    /// Connecting, or connected and not yet loaded.
    Connecting,
    /// Connected, subscribed, loaded: routes are in sync.
    Synced,
    /// The link failed; retrying.
    Down,
}

impl LinkState {
    /// Every state, for metrics.
    pub const ALL: [Self; 3] = [Self::Connecting, Self::Synced, Self::Down];

    /// `connecting`, `synced` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Synced => "synced",
            Self::Down => "down",
        }
    }
}

/// Counters of the sync, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Messages from other instances applied.
    pub messages_applied: u64,
    /// Own messages seen and ignored.
    pub messages_own: u64,
    /// Messages ignored as invalid.
    pub messages_invalid: u64,
    /// Messages recorded but not applied, a local change to the same name being pending.
    pub messages_deferred: u64,
    /// Changes stored in Redis.
    pub writes: u64,
    /// Full loads of the routes from Redis.
    pub loads: u64,
    /// Times the link went down.
    pub disconnects: u64,
    /// Routes restored into Redis after it lost its data.
    pub restored: u64,
}

/// A snapshot of the sync, for `/readyz` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncStatus {
    /// This instance's ID.
    pub instance: String,
    /// The link.
    pub state: LinkState,
    /// Why the link is not synced (the last error), if it is not.
    pub reason: Option<String>,
    /// Local changes not yet stored in Redis.
    pub outbox: usize,
    /// Routes this instance believes Redis holds.
    pub redis_routes: usize,
    /// Counters.
    pub counters: SyncCounters,
}

/// How a message was handled.
#[derive(Debug)]
pub enum MessageOutcome {
    /// Applied to the relay.
    Applied,
    /// Sent by this instance: ignored.
    Own,
    /// Recorded; a pending local change to the same name wins.
    Deferred,
    /// Not valid: ignored (the reason).
    Invalid(InvalidMessage),
}

/// What a full load changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Routes set (new or changed).
    pub set: usize,
    /// Routes removed (deleted elsewhere).
    pub removed: usize,
    /// Entries that could not be applied (bad entry, unresolvable target).
    pub failed: usize,
}

#[derive(Debug)]
struct State {
    /// What this instance believes Redis holds.
    mirror: BTreeMap<RouteName, SharedRoute>,
    /// Local changes not yet stored: the latest per name, with its sequence number.
    outbox: BTreeMap<RouteName, (u64, Change)>,
    next_seq: u64,
    epoch: Option<String>,
    state: LinkState,
    reason: Option<String>,
    counters: SyncCounters,
}

/// The route sync of one instance: shared by the API (local changes, status) and the
/// transport (messages, loads, the outbox). Cheap to clone.
#[derive(Clone)]
pub struct RouteSync {
    inner: Arc<Inner>,
}

struct Inner {
    instance: String,
    channel: String,
    relay: RelayHandle,
    state: Mutex<State>,
    /// Temporary routes the relay removed at their expiry, to delete from Redis. A lock
    /// of its own, taken last: the relay reports expiries while its host is locked.
    expired: Mutex<Vec<RouteName>>,
    wake: Notify,
    /// Looks up the host names of routes from Redis ([`crate::dns`]).
    resolver: Mutex<Resolver>,
}

impl fmt::Debug for RouteSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteSync")
            .field("instance", &self.inner.instance)
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

impl RouteSync {
    /// A sync for the relay behind `relay`, publishing on `channel`, with a random
    /// instance ID.
    pub fn new(relay: RelayHandle, channel: impl Into<String>) -> Self {
        Self::with_instance(relay, channel, random_instance_id())
    }

    /// As [`Self::new`] with a given instance ID.
    pub fn with_instance(
        relay: RelayHandle,
        channel: impl Into<String>,
        instance: impl Into<String>,
    ) -> Self {
        let sync = Self {
            inner: Arc::new(Inner {
                instance: instance.into(),
                channel: channel.into(),
                relay: relay.clone(),
                state: Mutex::new(State {
                    mirror: BTreeMap::new(),
                    outbox: BTreeMap::new(),
                    next_seq: 0,
                    epoch: None,
                    state: LinkState::Connecting,
                    reason: Some("not connected to Redis yet".into()),
                    counters: SyncCounters::default(),
                }),
                expired: Mutex::new(Vec::new()),
                wake: Notify::new(),
                resolver: Mutex::new(Resolver::default()),
            }),
        };
        // Temporary routes the relay expires are deleted from Redis too. A weak
        // reference: the relay must not keep the sync alive.
        let weak = Arc::downgrade(&sync.inner);
        relay.subscribe(Arc::new(move |note| {
            if let Notification::RouteExpired { name } = note {
                if let Some(inner) = weak.upgrade() {
                    Self { inner }.route_expired(name.clone());
                }
            }
        }));
        sync
    }

    /// This instance's ID, carried in its messages.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The channel changes are published on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update of the state is a few assignments that cannot panic half-way.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- the API side -----

    /// Sets a route on the relay now and queues it for Redis. `route` is `shared` resolved.
    pub fn set_route(
        &self,
        route: Route,
        shared: SharedRoute,
    ) -> Result<Option<Route>, RouteError> {
        let mut st = self.state();
        let previous = self.inner.relay.set_route(route, None)?;
        st.enqueue(Change::Set(shared));
        drop(st);
        self.inner.wake.notify_one();
        Ok(previous)
    }

    /// As [`Self::set_route`], for a temporary route the relay removes at `until`; its
    /// deletion reaches Redis through [`Self::route_expired`], which the relay host calls
    /// (the sync subscribes to the relay's [`Notification::RouteExpired`]).
    pub fn set_route_until(
        &self,
        route: Route,
        shared: SharedRoute,
        until: std::time::Instant,
    ) -> Result<Option<Route>, RouteError> {
        let mut st = self.state();
        let previous = self.inner.relay.set_route(route, Some(until))?;
        st.enqueue(Change::Set(shared));
        drop(st);
        self.inner.wake.notify_one();
        Ok(previous)
    }

    /// The relay removed a temporary route at its expiry: queue the deletion for Redis.
    /// Takes no other lock.
    pub fn route_expired(&self, name: RouteName) {
        self.inner
            .expired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name);
        self.inner.wake.notify_one();
    }

    /// Removes a route from the relay now and queues the deletion for Redis; `None` (and
    /// nothing queued) if the relay has no such route.
    pub fn remove_route(&self, name: &RouteName) -> Option<Route> {
        let mut st = self.state();
        let removed = self.inner.relay.remove_route(name)?;
        st.enqueue(Change::Delete(name.clone()));
        drop(st);
        self.inner.wake.notify_one();
        Some(removed)
    }

    /// The link, the outbox and the counters.
    pub fn status(&self) -> SyncStatus {
        let st = self.state();
        SyncStatus {
            instance: self.inner.instance.clone(),
            state: st.state,
            reason: st.reason.clone(),
            outbox: st.outbox.len(),
            redis_routes: st.mirror.len(),
            counters: st.counters,
        }
    }

    // ----- the transport side -----

    /// The link is being (re)established.
    pub fn link_connecting(&self) {
        let mut st = self.state();
        st.state = LinkState::Connecting;
        st.reason = Some("connecting to Redis".into());
    }

    /// The link failed with `error`.
    pub fn link_down(&self, error: impl fmt::Display) {
        let mut st = self.state();
        if st.state != LinkState::Down {
            st.counters.disconnects += 1;
        }
        st.state = LinkState::Down;
        st.reason = Some(format!("Redis unavailable: {error}"));
    }

    /// Connected and subscribed; `epoch` is the value of [`EPOCH_KEY`]. Returns the routes to
    /// restore into Redis (with `HSETNX`, announcing those actually written): all it knew,
    /// when the epoch changed since the last connection (Redis lost its data).
    pub fn begin(&self, epoch: &str) -> Vec<SharedRoute> {
        let mut st = self.state();
        let lost = st.epoch.as_deref().is_some_and(|old| old != epoch);
        st.epoch = Some(epoch.to_owned());
        if !lost {
            return Vec::new();
        }
        let restore: Vec<SharedRoute> = st
            .mirror
            .values()
            .filter(|r| !st.outbox.contains_key(&r.name))
            .cloned()
            .collect();
        tracing::warn!(
            routes = restore.len(),
            "Redis lost its routes (new epoch): restoring the ones this instance knew"
        );
        restore
    }

    /// A route [`Self::begin`] asked to restore was written.
    pub fn restored(&self, route: &SharedRoute) {
        self.state().counters.restored += 1;
        tracing::info!(fqdn = %route.name, "route restored into Redis");
    }

    /// Changes waiting to be stored, oldest first.
    pub fn pending_writes(&self) -> Vec<PendingWrite> {
        let mut st = self.state();
        let expired =
            std::mem::take(&mut *self.inner.expired.lock().unwrap_or_else(|e| e.into_inner()));
        for name in expired {
            st.enqueue(Change::Delete(name));
        }
        let mut writes: Vec<PendingWrite> = st
            .outbox
            .values()
            .map(|(seq, change)| PendingWrite {
                seq: *seq,
                change: change.clone(),
                commands: self.commands(change),
            })
            .collect();
        writes.sort_by_key(|w| w.seq);
        writes
    }

    fn commands(&self, change: &Change) -> Vec<RedisCommand> {
        let channel = self.inner.channel.clone();
        match change {
            Change::Set(route) => vec![
                RedisCommand::HSet {
                    key: route.kind.key(),
                    field: route.name.to_string(),
                    value: route.target.clone(),
                },
                RedisCommand::HDel {
                    key: route.kind.other_key(),
                    field: route.name.to_string(),
                },
                RedisCommand::Publish {
                    channel,
                    payload: route.set_message(&self.inner.instance),
                },
            ],
            Change::Delete(name) => vec![
                RedisCommand::HDel {
                    key: SIMPLE_KEY,
                    field: name.to_string(),
                },
                RedisCommand::HDel {
                    key: AGONES_KEY,
                    field: name.to_string(),
                },
                RedisCommand::Publish {
                    channel,
                    payload: Message::delete(name, &self.inner.instance),
                },
            ],
        }
    }

    /// `write` is stored: it leaves the outbox unless a newer change to the name came.
    pub fn written(&self, write: &PendingWrite) {
        let mut st = self.state();
        st.record_in_mirror(&write.change);
        let name = write.change.name();
        if st
            .outbox
            .get(name)
            .is_some_and(|(seq, _)| *seq == write.seq)
        {
            st.outbox.remove(name);
        }
        st.counters.writes += 1;
    }

    /// Waits until a local change is queued (returns at once if one was queued since the
    /// last wait).
    pub async fn changed(&self) {
        self.inner.wake.notified().await;
    }

    /// Looks up routes' host names with `resolver` from now on (default: the system's,
    /// with [`crate::dns::DNS_TIMEOUT`]).
    pub fn set_resolver(&self, resolver: Resolver) {
        *self
            .inner
            .resolver
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = resolver;
    }

    fn resolver(&self) -> Resolver {
        self.inner
            .resolver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies a message from the channel. Host names are looked up off the executor,
    /// each within [`crate::dns::DNS_TIMEOUT`]: a lookup that takes longer makes the
    /// message invalid (the route comes again with the next full load).
    pub async fn apply_message(&self, payload: &[u8]) -> MessageOutcome {
        let decoded = match decode_message(payload) {
            Ok(d) => d,
            Err(why) => return self.invalid(payload, why.into()),
        };
        if decoded.instance.as_deref() == Some(self.inner.instance.as_str()) {
            self.state().counters.messages_own += 1;
            return MessageOutcome::Own;
        }
        // Resolve before taking any lock: DNS can be slow, the relay must not wait for it.
        let route = match &decoded.change {
            Change::Set(shared) => match shared.to_route_with(&self.resolver()).await {
                Ok(route) => Some(route),
                Err(why) => return self.invalid(payload, why.into()),
            },
            Change::Delete(_) => None,
        };
        let mut st = self.state();
        st.record_in_mirror(&decoded.change);
        if st.outbox.contains_key(decoded.change.name()) {
            st.counters.messages_deferred += 1;
            return MessageOutcome::Deferred;
        }
        match (route, &decoded.change) {
            (Some(route), _) => {
                if let Err(e) = self.inner.relay.set_route(route, None) {
                    drop(st);
                    return self.invalid(payload, e.into());
                }
                tracing::info!(fqdn = %decoded.change.name(), from = decoded.instance.as_deref().unwrap_or("-"), "route set by another instance");
            }
            (None, change) => {
                self.inner.relay.remove_route(change.name());
                tracing::info!(fqdn = %change.name(), from = decoded.instance.as_deref().unwrap_or("-"), "route deleted by another instance");
            }
        }
        st.counters.messages_applied += 1;
        MessageOutcome::Applied
    }

    fn invalid(&self, payload: &[u8], why: InvalidMessage) -> MessageOutcome {
        self.state().counters.messages_invalid += 1;
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned();
        tracing::warn!(message = %shown, "ignoring an invalid route message: {why}");
        MessageOutcome::Invalid(why)
    }

    /// Applies a full load of both hashes (`simple` and `agones` entries as
    /// `(field, value)`), then marks the link synced. See the module docs for the rules.
    ///
    /// Host names are looked up as in [`Self::apply_message`]; a route whose lookup fails
    /// or times out is counted as failed and left out.
    pub async fn apply_load(
        &self,
        simple: &[(String, String)],
        agones: &[(String, String)],
    ) -> LoadReport {
        let mut report = LoadReport::default();
        let mut loaded: BTreeMap<RouteName, (SharedRoute, Option<Route>)> = BTreeMap::new();
        // Agones first, so that a name present in both hashes ends up simple.
        for (kind, entries) in [(RouteType::Agones, agones), (RouteType::Simple, simple)] {
            for (field, value) in entries {
                let shared = match SharedRoute::from_entry(kind, field, value) {
                    Ok(shared) => shared,
                    Err(why) => {
                        report.failed += 1;
                        tracing::warn!(key = kind.key(), %field, %value, "ignoring a Redis entry: {why}");
                        continue;
                    }
                };
                // Resolved before any lock is taken (see apply_message).
                let route = match shared.to_route_with(&self.resolver()).await {
                    Ok(route) => Some(route),
                    Err(why) => {
                        report.failed += 1;
                        tracing::warn!(fqdn = %shared.name, "cannot apply the route from Redis: {why}");
                        None
                    }
                };
                loaded.insert(shared.name.clone(), (shared, route));
            }
        }
        let mut st = self.state();
        self.inner.relay.edit_routes(|relay| {
            for name in st.mirror.keys() {
                if !loaded.contains_key(name)
                    && !st.outbox.contains_key(name)
                    && relay.remove_route(name).is_some()
                {
                    report.removed += 1;
                    tracing::info!(fqdn = %name, "route deleted elsewhere while disconnected");
                }
            }
            for (name, (_, route)) in &loaded {
                let Some(route) = route else { continue };
                if st.outbox.contains_key(name) || relay.route(name) == Some(route) {
                    continue;
                }
                match relay.set_route(route.clone()) {
                    Ok(_) => report.set += 1,
                    Err(e) => {
                        report.failed += 1;
                        tracing::warn!(fqdn = %name, "cannot apply the route from Redis: {e}");
                    }
                }
            }
        });
        st.mirror = loaded.into_iter().map(|(n, (s, _))| (n, s)).collect();
        st.state = LinkState::Synced;
        st.reason = None;
        st.counters.loads += 1;
        tracing::info!(
            routes = st.mirror.len(),
            set = report.set,
            removed = report.removed,
            failed = report.failed,
            "routes loaded from Redis"
        );
        report
    }
}

impl State {
    fn enqueue(&mut self, change: Change) {
        self.next_seq += 1;
        self.outbox
            .insert(change.name().clone(), (self.next_seq, change));
    }

    fn record_in_mirror(&mut self, change: &Change) {
        match change {
            Change::Set(route) => {
                self.mirror.insert(route.name.clone(), route.clone());
            }
            Change::Delete(name) => {
                self.mirror.remove(name);
            }
        }
    }
}

/// A random instance ID: 16 hex digits (from std's randomly keyed hasher, the clock and
/// the process ID).
fn random_instance_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    format!("{:016x}", h.finish())
}

/// A fresh epoch token for [`EPOCH_KEY`].
pub fn new_epoch() -> String {
    random_instance_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_message_whose_lookup_times_out_is_invalid_and_not_applied() {
        let host = host();
        let sync = RouteSync::with_instance(host.clone(), "c", "me");
        let slow: crate::dns::Lookup = Arc::new(|_, _| {
            std::thread::sleep(std::time::Duration::from_secs(2));
            Ok(vec!["192.0.2.1:1".parse().unwrap()])
        });
        sync.set_resolver(Resolver::with_lookup(
            slow,
            std::time::Duration::from_millis(100),
        ));
        let started = std::time::Instant::now();
        let out = block(
            sync.apply_message(
                shared("slow.test", "slow.example:4433")
                    .set_message("other")
                    .as_bytes(),
            ),
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let MessageOutcome::Invalid(why) = out else {
            panic!("{out:?}");
        };
        assert!(why.to_string().contains("took longer than 100ms"), "{why}");
        assert!(!routes(&host).join(" ").contains("slow.test"));
        let report =
            block(sync.apply_load(&[("slow.test".into(), "slow.example:4433".into())], &[]));
        assert_eq!((report.set, report.failed), (0, 1));
    }
    use porter_core::{Relay, RelayConfig};

    fn host() -> RelayHandle {
        RelayHandle::detached(Relay::new(RelayConfig::default()))
    }

    fn shared(name: &str, target: &str) -> SharedRoute {
        SharedRoute::from_entry(RouteType::Simple, name, target).unwrap()
    }

    fn routes(host: &RelayHandle) -> Vec<String> {
        host.routes()
            .iter()
            .map(|r| format!("{}={:?}", r.name, r.target))
            .collect()
    }

    fn set_local(sync: &RouteSync, name: &str, target: &str) {
        let s = shared(name, target);
        sync.set_route(s.to_route().unwrap(), s).unwrap();
    }

    #[test]
    fn messages_round_trip_and_original_format_is_accepted() {
        let r = shared("A.Test", "127.0.0.1:1, 127.0.0.1:2");
        assert_eq!(r.target, "127.0.0.1:1,127.0.0.1:2");
        let msg = r.set_message("me");
        let d = decode_message(msg.as_bytes()).unwrap();
        assert_eq!(d.instance.as_deref(), Some("me"));
        assert_eq!(d.change, Change::Set(r));
        // The original project's message: no op, no instance.
        let d = decode_message(br#"{"fqdn":"b.test","type":"agones","target":"fleet"}"#).unwrap();
        assert_eq!(d.instance, None);
        assert!(matches!(d.change, Change::Set(ref s) if s.kind == RouteType::Agones));
        let del = Message::delete(&RouteName::parse("*.w.test").unwrap(), "x");
        let d = decode_message(del.as_bytes()).unwrap();
        assert_eq!(
            d.change,
            Change::Delete(RouteName::parse("*.w.test").unwrap())
        );
        // A delete message carries no type, so the original project ignores it.
        assert!(!del.contains("type"));
    }

    #[test]
    fn invalid_messages_are_rejected_whole() {
        for bad in [
            &b"not json"[..],
            br#"{"fqdn":"a.test"}"#,
            br#"{"fqdn":"a..test","type":"simple","target":"127.0.0.1:1"}"#,
            br#"{"fqdn":"a.*.test","type":"simple","target":"127.0.0.1:1"}"#,
            br#"{"fqdn":"a.test","type":"bogus","target":"127.0.0.1:1"}"#,
            br#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1"}"#,
            br#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1,"}"#,
            br#"{"fqdn":"a.test","type":"agones","target":""}"#,
            br#"{"fqdn":"a.test","op":"rename"}"#,
        ] {
            assert!(
                decode_message(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let host = host();
        let sync = RouteSync::with_instance(host.clone(), "c", "me");
        let out = block(
            sync.apply_message(br#"{"fqdn":"a.test","type":"simple","target":"127.0.0.1:1,nope"}"#),
        );
        assert!(matches!(out, MessageOutcome::Invalid(_)), "{out:?}");
        assert!(routes(&host).is_empty());
        assert_eq!(sync.status().counters.messages_invalid, 1);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let why = |bad: &[u8]| decode_message(bad).unwrap_err();
        let e = why(b"not json");
        assert!(matches!(e, MessageError::Json(_)), "{e:?}");
        assert!(e.to_string().starts_with("not route JSON: "), "{e}");
        let e = why(br#"{"fqdn":"a.test"}"#);
        assert!(matches!(e, MessageError::MissingSetFields), "{e:?}");
        assert_eq!(e.to_string(), "a set message needs `type` and `target`");
        let e = why(br#"{"fqdn":"a.test","type":"bogus","target":"127.0.0.1:1"}"#);
        assert!(
            matches!(e, MessageError::Route(RouteTextError::Type(_))),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "type: \"bogus\" is not a route type (expected \"simple\" or \"agones\")"
        );
        let e = why(br#"{"op":"delete","fqdn":"a..test"}"#);
        assert!(matches!(e, MessageError::DeleteName(_)), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("fqdn: \"a..test\" is not a valid route name: "),
            "{e}"
        );
        // An unresolvable target: every failure, joined by "; ".
        let r = SharedRoute {
            name: RouteName::parse("a.test").unwrap(),
            kind: RouteType::Simple,
            target: "nowhere.invalid:1,127.0.0.1:2,also.invalid:3".into(),
        };
        let e = r.to_route().unwrap_err();
        let ToRouteError::Unresolved(failures) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(failures.len(), 2);
        let text = e.to_string();
        assert_eq!(text.matches("; ").count(), 1, "{text}");
        assert!(
            text.starts_with("target: \"nowhere.invalid:1\" is not a reachable host:port ("),
            "{text}"
        );
        assert!(
            text.contains("; target: \"also.invalid:3\" is not a reachable host:port ("),
            "{text}"
        );
        let r = SharedRoute {
            target: "127.0.0.1".into(),
            ..r
        };
        assert!(matches!(r.to_route(), Err(ToRouteError::Text(_))));
    }

    #[test]
    fn own_messages_are_ignored_others_applied() {
        let host = host();
        let sync = RouteSync::with_instance(host.clone(), "c", "me");
        let r = shared("a.test", "127.0.0.1:1");
        let out = block(sync.apply_message(r.set_message("me").as_bytes()));
        assert!(matches!(out, MessageOutcome::Own), "{out:?}");
        assert!(routes(&host).is_empty());
        let out = block(sync.apply_message(r.set_message("other").as_bytes()));
        assert!(matches!(out, MessageOutcome::Applied), "{out:?}");
        assert_eq!(routes(&host).len(), 1);
        let del = Message::delete(&r.name, "other");
        let out = block(sync.apply_message(del.as_bytes()));
        assert!(matches!(out, MessageOutcome::Applied), "{out:?}");
        assert!(routes(&host).is_empty());
    }

    #[test]
    fn outbox_keeps_the_latest_change_until_written() {
        let host = host();
        let sync = RouteSync::with_instance(host.clone(), "chan", "me");
        set_local(&sync, "a.test", "127.0.0.1:1");
        set_local(&sync, "a.test", "127.0.0.1:2");
        set_local(&sync, "b.test", "127.0.0.1:3");
        let writes = sync.pending_writes();
        assert_eq!(writes.len(), 2);
        assert_eq!(writes[0].change.name().to_string(), "a.test");
        assert!(
            matches!(&writes[0].commands[0], RedisCommand::HSet { key, value, .. } if *key == SIMPLE_KEY && value == "127.0.0.1:2")
        );
        // A newer change arrives while the first write is in flight: it stays queued.
        set_local(&sync, "a.test", "127.0.0.1:4");
        sync.written(&writes[0]);
        sync.written(&writes[1]);
        let left = sync.pending_writes();
        assert_eq!(left.len(), 1);
        assert!(matches!(&left[0].change, Change::Set(r) if r.target == "127.0.0.1:4"));
        // A message from elsewhere for a name with a pending change does not undo it.
        let other = shared("a.test", "127.0.0.1:9");
        let out = block(sync.apply_message(other.set_message("x").as_bytes()));
        assert!(matches!(out, MessageOutcome::Deferred), "{out:?}");
        assert!(routes(&host).iter().any(|r| r.contains("127.0.0.1:4")));
    }

    #[test]
    fn load_overrides_removes_deleted_and_keeps_config_and_pending() {
        let host = host();
        host.set_route(
            shared("config.test", "127.0.0.1:1").to_route().unwrap(),
            None,
        )
        .unwrap();
        let sync = RouteSync::with_instance(host.clone(), "c", "me");
        let e = |n: &str, t: &str| (n.to_owned(), t.to_owned());
        let report = block(sync.apply_load(
            &[
                e("x.test", "127.0.0.1:2"),
                e("gone.test", "127.0.0.1:3"),
                e("bad..name", "127.0.0.1:1"),
            ],
            &[e("g.test", "fleet")],
        ));
        assert_eq!((report.set, report.removed, report.failed), (3, 0, 1));
        assert_eq!(sync.status().state, LinkState::Synced);
        // Disconnected: a local change is queued; elsewhere gone.test was deleted.
        sync.link_down("connection refused");
        assert_eq!(sync.status().state, LinkState::Down);
        set_local(&sync, "local.test", "127.0.0.1:5");
        let report = block(sync.apply_load(&[e("x.test", "127.0.0.1:7")], &[e("g.test", "fleet")]));
        assert_eq!((report.set, report.removed), (1, 1));
        let names = routes(&host).join(" ");
        assert!(names.contains("config.test"), "{names}");
        assert!(names.contains("local.test"), "{names}");
        assert!(names.contains("127.0.0.1:7"), "{names}");
        assert!(!names.contains("gone.test"), "{names}");
    }

    #[test]
    fn a_new_epoch_restores_what_was_known() {
        let host = host();
        let sync = RouteSync::with_instance(host, "c", "me");
        assert!(
            sync.begin("e1").is_empty(),
            "nothing to restore on first contact"
        );
        block(sync.apply_load(&[("a.test".into(), "127.0.0.1:1".into())], &[]));
        assert!(
            sync.begin("e1").is_empty(),
            "same epoch: Redis kept its data"
        );
        set_local(&sync, "b.test", "127.0.0.1:2");
        let restore = sync.begin("e2");
        assert_eq!(restore.len(), 1);
        assert_eq!(restore[0].name.to_string(), "a.test");
    }
}
