//! Hot reload of the configuration file: watched, and reloaded on request (SIGHUP).
//!
//! A watcher thread looks at the file every `reload.interval` and reloads it when its
//! content changed. It reads through symlinks and compares content hashes, so the three
//! ways a file is replaced are all seen without inotify: an edit in place, a new file
//! renamed over it, and Kubernetes' ConfigMap update (the mounted file is a symlink into a
//! `..data` directory symlink that is swapped atomically). [`Reloader::request`] (the
//! drivers call it on SIGHUP) reloads at once, even when the content is the same.
//!
//! A reload reads and checks the whole file (porter-config's checker, then the target
//! resolution of [`Settings::from_config`]) before anything changes; a file with a
//! problem leaves everything as it was, and every problem is logged with its location.
//! A valid file's routes are applied in one [`RelayHandle::edit_routes`] call. The file
//! owns a route name only while the relay holds the very route the file set: routes from
//! the API or Redis, and file routes the API has since replaced, are left alone. Sessions
//! to a target that no route has any more drain or are closed, as
//! `reload.removed_sessions` says. Other sections are read at start-up only; a reload that
//! changes them logs that they need a restart.
//!
//! The outcome of each reload shows in `/metrics` ([`Reloader::render_metrics`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use porter_config::{self as config, Config, RemovedSessions};
use porter_core::{BackendAddr, Relay, RelayConfig, Route, RouteName, RouteTarget};
use porter_host::RelayHandle;

use crate::setup::Settings;

/// Follows the configuration file of a running relay. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Reloader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    relay: RelayHandle,
    state: Mutex<State>,
    /// Wakes the watcher thread: a reload was requested.
    wake: Condvar,
}

#[derive(Debug)]
struct State {
    /// The configuration running: the start-up sections, the routes of the last file
    /// applied.
    running: Config,
    /// The routes the file set, as it set them (targets resolved).
    file_routes: BTreeMap<RouteName, Route>,
    /// What the file looked like when last read.
    seen: Fingerprint,
    requested: bool,
    successes: u64,
    failures: u64,
    last_success: bool,
    last_reload: Option<SystemTime>,
}

/// A file's content hash and length, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    Content { hash: u64, len: usize },
    Unreadable(std::io::ErrorKind),
}

fn fingerprint(path: &Path) -> Fingerprint {
    match std::fs::read(path) {
        Ok(bytes) => {
            let mut h = DefaultHasher::new();
            h.write(&bytes);
            Fingerprint::Content {
                hash: h.finish(),
                len: bytes.len(),
            }
        }
        Err(e) => Fingerprint::Unreadable(e.kind()),
    }
}

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Routes the file added.
    pub added: Vec<String>,
    /// Routes the file changed.
    pub changed: Vec<String>,
    /// Routes the file removed.
    pub removed: Vec<String>,
    /// Names the file adds, changes or removes that the API or Redis holds: left alone.
    pub kept: Vec<String>,
    /// Targets no route has any more, with the sessions closed (policy `close`) or
    /// `None` (policy `drain`: they run until idle).
    pub removed_targets: Vec<(BackendAddr, Option<usize>)>,
    /// Sections that changed but are read at start-up only.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", problems.join("\n"))]
#[non_exhaustive]
pub struct ReloadError {
    /// Every problem, each with its location (`file:line:column: key: message`).
    pub problems: Vec<String>,
}

impl Reloader {
    /// A reloader for the relay behind `relay`, started with `settings`; `None` when the
    /// settings came from no file (the built-in example). With `reload.watch`, starts the
    /// watcher thread.
    ///
    /// # Errors
    /// The watcher thread cannot be started.
    pub fn start(settings: &Settings, relay: RelayHandle) -> std::io::Result<Option<Self>> {
        let Some(path) = settings.config_file.clone() else {
            return Ok(None);
        };
        let reloader = Self::new(path, settings, relay);
        reloader.spawn_watcher()?;
        Ok(Some(reloader))
    }

    /// A reloader without a watcher thread: reloads happen through [`Self::reload`].
    pub fn new(path: PathBuf, settings: &Settings, relay: RelayHandle) -> Self {
        let seen = fingerprint(&path);
        let file_routes = settings
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                path,
                relay,
                state: Mutex::new(State {
                    running: settings.config.clone(),
                    file_routes,
                    seen,
                    requested: false,
                    successes: 0,
                    failures: 0,
                    last_success: true,
                    last_reload: None,
                }),
                wake: Condvar::new(),
            }),
        }
    }

    /// The file followed.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Asks the watcher thread to reload now (SIGHUP), whether or not the file changed.
    pub fn request(&self) {
        tracing::info!(config = %self.inner.path.display(), "reload requested");
        self.lock().requested = true;
        self.inner.wake.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_watcher(&self) -> std::io::Result<()> {
        let this = self.clone();
        std::thread::Builder::new()
            .name("porter-reload".into())
            .spawn(move || this.watch())
            .map(drop)
    }

    /// The watcher thread: waits for a request or the next look at the file (with
    /// `reload.watch`), and reloads when asked or when the content changed.
    fn watch(&self) {
        let (watch, interval) = {
            let state = self.lock();
            (state.running.reload.watch, state.running.reload.interval)
        };
        if watch {
            tracing::info!(
                config = %self.inner.path.display(),
                interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
                "watching the configuration file"
            );
        }
        loop {
            let requested = {
                let mut state = self.lock();
                if !state.requested {
                    state = if watch {
                        self.inner
                            .wake
                            .wait_timeout(state, interval)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    } else {
                        self.inner
                            .wake
                            .wait(state)
                            .unwrap_or_else(|e| e.into_inner())
                    };
                }
                std::mem::take(&mut state.requested)
            };
            if requested {
                let _ = self.reload();
                continue;
            }
            if watch {
                let now = fingerprint(&self.inner.path);
                if now != self.lock().seen {
                    tracing::info!(config = %self.inner.path.display(), "configuration file changed");
                    let _ = self.reload();
                }
            }
        }
    }

    /// Reads, checks and applies the file now. On a problem nothing changes; either way
    /// the outcome is logged and counted.
    ///
    /// # Errors
    /// Every problem found, each with its location.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut state = self.lock();
        state.seen = fingerprint(&self.inner.path);
        state.last_reload = Some(SystemTime::now());
        let origin = self.inner.path.display().to_string();
        match self.apply(&mut state) {
            Ok(report) => {
                state.successes += 1;
                state.last_success = true;
                log_report(&origin, &report);
                Ok(report)
            }
            Err(error) => {
                state.failures += 1;
                state.last_success = false;
                for problem in &error.problems {
                    tracing::error!(config = %origin, "reload rejected: {problem}");
                }
                tracing::error!(
                    config = %origin,
                    problems = error.problems.len(),
                    "configuration not reloaded: the running configuration stays"
                );
                Err(error)
            }
        }
    }

    fn apply(&self, state: &mut State) -> Result<ReloadReport, ReloadError> {
        let new = config::load(&self.inner.path).map_err(|errors| ReloadError {
            problems: errors.to_string().lines().map(str::to_owned).collect(),
        })?;
        let origin = self.inner.path.display();
        let settings = Settings::from_config(&new).map_err(|e| ReloadError {
            problems: e
                .problems
                .iter()
                .map(|p| format!("{origin}: {p}"))
                .collect(),
        })?;
        // The core's own checks, on a scratch relay, so that no route is half applied.
        let mut scratch = Relay::new(RelayConfig::default());
        let problems: Vec<String> = settings
            .routes
            .iter()
            .filter_map(|r| scratch.set_route(r.clone()).err())
            .map(|e| format!("{origin}: {e}"))
            .collect();
        if !problems.is_empty() {
            return Err(ReloadError { problems });
        }
        for warning in &new.warnings {
            tracing::warn!(config = %origin, "{warning}");
        }

        let mut report = ReloadReport {
            needs_restart: changed_sections(&state.running, &new),
            ..ReloadReport::default()
        };
        let wanted: BTreeMap<RouteName, Route> = settings
            .routes
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        let policy = state.running.reload.removed_sessions;
        let old_targets: BTreeSet<BackendAddr> = state
            .file_routes
            .values()
            .flat_map(simple_targets)
            .collect();
        let now = Instant::now();
        self.inner.relay.edit_routes(|editor| {
            for (name, old) in &state.file_routes {
                if wanted.contains_key(name) {
                    continue;
                }
                if editor.route(name) == Some(old) {
                    editor.remove_route(name);
                    report.removed.push(name.to_string());
                } else {
                    report.kept.push(name.to_string());
                }
            }
            for (name, route) in &wanted {
                let old = state.file_routes.get(name);
                if old == Some(route) {
                    continue;
                }
                if editor.route(name) != old {
                    // The API or Redis set this name since (or before) the file did.
                    report.kept.push(name.to_string());
                    continue;
                }
                // Checked on the scratch relay above: cannot fail.
                if editor.set_route(route.clone()).is_ok() {
                    match old {
                        Some(_) => report.changed.push(name.to_string()),
                        None => report.added.push(name.to_string()),
                    }
                }
            }
            let still: BTreeSet<BackendAddr> =
                editor.routes().iter().flat_map(simple_targets).collect();
            for gone in old_targets.difference(&still) {
                let closed = match policy {
                    RemovedSessions::Close => Some(editor.close_sessions_to(now, *gone)),
                    RemovedSessions::Drain => None,
                };
                report.removed_targets.push((*gone, closed));
            }
        });
        state.file_routes = wanted;
        state.running.routes = new.routes;
        Ok(report)
    }

    /// Appends the reload metrics in the Prometheus text format:
    /// `porter_config_reloads_total{outcome}`, `porter_config_last_reload_success`,
    /// `porter_config_last_reload_timestamp_seconds`.
    pub fn render_metrics(&self, out: &mut String) {
        let state = self.lock();
        let _ = writeln!(
            out,
            "# HELP porter_config_reloads_total Reloads of the configuration file, by outcome \
             (failure: the file was rejected and the running configuration stayed).\n\
             # TYPE porter_config_reloads_total counter\n\
             porter_config_reloads_total{{outcome=\"success\"}} {}\n\
             porter_config_reloads_total{{outcome=\"failure\"}} {}",
            state.successes, state.failures
        );
        let _ = writeln!(
            out,
            "# HELP porter_config_last_reload_success 1 if the last reload applied (or none \
             was tried), 0 if it was rejected.\n\
             # TYPE porter_config_last_reload_success gauge\n\
             porter_config_last_reload_success {}",
            u8::from(state.last_success)
        );
        let at = state
            .last_reload
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or(Duration::ZERO);
        let _ = writeln!(
            out,
            "# HELP porter_config_last_reload_timestamp_seconds When the last reload was \
             tried (Unix time; 0: never).\n\
             # TYPE porter_config_last_reload_timestamp_seconds gauge\n\
             porter_config_last_reload_timestamp_seconds {:.3}",
            at.as_secs_f64()
        );
    }
}

/// The backends of a simple route; none for an Agones route (its game servers are
/// allocated, not configured).
fn simple_targets(route: &Route) -> Vec<BackendAddr> {
    match &route.target {
        RouteTarget::Simple(backends) => backends.clone(),
        RouteTarget::Agones { .. } => Vec::new(),
    }
}

/// The sections other than `routes` that differ: read at start-up only.
fn changed_sections(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if running.udp != new.udp {
        changed.push("udp");
    }
    if running.api != new.api {
        changed.push("api");
    }
    if running.redis != new.redis {
        changed.push("redis");
    }
    if running.agones != new.agones {
        changed.push("agones");
    }
    if running.relay != new.relay {
        changed.push("relay");
    }
    if running.log != new.log {
        changed.push("log");
    }
    if running.reload != new.reload {
        changed.push("reload");
    }
    changed
}

fn log_report(origin: &str, report: &ReloadReport) {
    for section in &report.needs_restart {
        tracing::warn!(
            config = %origin,
            section = *section,
            "`{section}` changed in the file: it needs a restart to apply; the running value stays"
        );
    }
    for name in &report.kept {
        tracing::info!(
            config = %origin,
            fqdn = %name,
            "route set through the API or Redis: the file's version is not applied"
        );
    }
    for (backend, closed) in &report.removed_targets {
        match closed {
            Some(n) => tracing::info!(
                config = %origin,
                %backend,
                policy = "close",
                sessions = *n,
                "target removed: its sessions were closed"
            ),
            None => tracing::info!(
                config = %origin,
                %backend,
                policy = "drain",
                "target removed: its sessions drain until idle"
            ),
        }
    }
    tracing::info!(
        config = %origin,
        added = %report.added.join(","),
        changed = %report.changed.join(","),
        removed = %report.removed.join(","),
        "configuration reloaded"
    );
}
