//! `GET /metrics`: the relay's counters and gauges, and the Redis link, in the Prometheus
//! text exposition format (version 0.0.4).

use std::fmt::Write as _;
use std::time::Duration;

use porter_core::{DropReason, RefuseReason};
use porter_host::{Histogram, HostStats, NO_ROUTE_LABEL};

use super::DriverGauges;
use crate::sync::{LinkState, SyncStatus};

/// Builds the exposition text.
struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a metric family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let val = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{key}=\"{val}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The samples of one histogram of the current family (`_bucket`, `_sum`, `_count`),
    /// in seconds, with `labels` before `le`.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let bucket = format!("{name}_bucket");
        for (le, n) in h.buckets() {
            let le = le.map_or_else(|| "+Inf".to_owned(), |d| d.as_secs_f64().to_string());
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, n);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum().as_secs_f64());
        self.sample(&format!("{name}_count"), labels, h.count());
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// One target of a simple route, for the per-target families.
pub(super) struct Backend {
    /// The route's name.
    pub(super) route: String,
    /// The target's address.
    pub(super) target: String,
    /// What the health checks say (healthy while checks are off).
    pub(super) healthy: bool,
    /// Sessions on it now.
    pub(super) sessions: u32,
}

/// Appends the per-target families: health and sessions, labelled by route and target.
pub(super) fn render_backends(out: &mut String, backends: &[Backend]) {
    let mut m = Exposition {
        out: std::mem::take(out),
    };
    m.family(
        "porter_backend_healthy",
        "gauge",
        "1 while the target of a simple route passes its health checks (always 1 with checks off).",
    );
    for b in backends {
        let labels = [("route", b.route.as_str()), ("target", b.target.as_str())];
        m.sample("porter_backend_healthy", &labels, u8::from(b.healthy));
    }
    m.family(
        "porter_backend_sessions",
        "gauge",
        "Sessions on the target of a simple route now.",
    );
    for b in backends {
        let labels = [("route", b.route.as_str()), ("target", b.target.as_str())];
        m.sample("porter_backend_sessions", &labels, b.sessions);
    }
    *out = m.out;
}

/// Renders every metric.
pub(super) fn render(
    host: &HostStats,
    gauges: DriverGauges,
    uptime: Duration,
    sync: Option<&SyncStatus>,
) -> String {
    let stats = &host.relay;
    let mut m = Exposition { out: String::new() };
    m.single(
        "porter_uptime_seconds",
        "gauge",
        "Seconds since the API started.",
        uptime.as_secs_f64(),
    );
    m.single(
        "porter_sessions",
        "gauge",
        "Sessions (relayed connections) open, routed or not.",
        stats.sessions,
    );
    m.single(
        "porter_pending_sessions",
        "gauge",
        "Sessions waiting for their ClientHello or an allocation.",
        stats.pending_sessions,
    );
    m.single(
        "porter_unvalidated_sessions",
        "gauge",
        "Sessions whose client has not yet used a connection ID the backend issued.",
        stats.unvalidated_sessions,
    );
    m.single(
        "porter_sessions_validated_total",
        "counter",
        "Sessions validated: their client used a connection ID the backend issued.",
        stats.sessions_validated,
    );
    m.single(
        "porter_upstream_sockets",
        "gauge",
        "Upstream UDP sockets open (one per client path of a routed session).",
        gauges.upstream_sockets,
    );
    m.single(
        "porter_listener_receive_buffer_bytes",
        "gauge",
        "Kernel receive buffer in effect on the listener sockets (the smallest), in bytes.",
        gauges.listener_receive_buffer,
    );
    m.single(
        "porter_listener_batched_sends_total",
        "counter",
        "sendmmsg calls that sent client-bound datagrams of many clients at once.",
        gauges.batched_sends.calls,
    );
    m.single(
        "porter_listener_batched_datagrams_total",
        "counter",
        "Datagrams sent by those sendmmsg calls.",
        gauges.batched_sends.datagrams,
    );
    m.single(
        "porter_listener_send_queue_drops_total",
        "counter",
        "Client-bound datagrams dropped because a listener's send queue was over its backlog (the socket did not take them as fast as they came).",
        gauges.batched_sends.dropped,
    );
    m.single(
        "porter_upstream_socket_limit",
        "gauge",
        "Most upstream sockets the relay opens: relay.max_upstream_sockets, lowered at start to the file-descriptor limit less a reserve and to the ephemeral port range.",
        host.upstream_socket_limit,
    );
    m.single(
        "porter_upstream_failures_total",
        "counter",
        "Upstream sockets that could not be opened (their connection refused as socket_failed, or their path ended).",
        stats.upstream_failures,
    );
    m.single(
        "porter_paths",
        "gauge",
        "Client paths open (a routed session has one per client address).",
        stats.paths,
    );
    m.single(
        "porter_paths_opened_total",
        "counter",
        "Paths opened beyond each session's first: clients that moved, or datagrams that claimed to be theirs.",
        stats.paths_opened,
    );
    m.single(
        "porter_connection_ids",
        "gauge",
        "Connection IDs tracked.",
        stats.connection_ids,
    );
    m.single(
        "porter_buffered_bytes",
        "gauge",
        "Bytes held for connections not yet routed.",
        stats.buffered_bytes,
    );
    m.single("porter_routes", "gauge", "Routes installed.", stats.routes);
    m.single(
        "porter_sessions_opened_total",
        "counter",
        "Sessions routed to a backend.",
        stats.sessions_opened,
    );
    m.single(
        "porter_sessions_closed_total",
        "counter",
        "Sessions ended.",
        stats.sessions_closed,
    );
    m.single(
        "porter_refused_total",
        "counter",
        "Connections refused (no route, allocation failed).",
        stats.refused,
    );
    m.family(
        "porter_refusals_total",
        "counter",
        "Connections refused, by reason.",
    );
    for reason in RefuseReason::ALL {
        m.sample(
            "porter_refusals_total",
            &[("reason", reason.as_str())],
            stats.refusals(*reason),
        );
    }
    m.family(
        "porter_datagrams_total",
        "counter",
        "Datagrams relayed, by direction.",
    );
    m.sample(
        "porter_datagrams_total",
        &[("direction", "to_backend")],
        stats.to_backend.datagrams,
    );
    m.sample(
        "porter_datagrams_total",
        &[("direction", "to_client")],
        stats.to_client.datagrams,
    );
    m.family(
        "porter_bytes_total",
        "counter",
        "UDP payload bytes relayed, by direction.",
    );
    m.sample(
        "porter_bytes_total",
        &[("direction", "to_backend")],
        stats.to_backend.bytes,
    );
    m.sample(
        "porter_bytes_total",
        &[("direction", "to_client")],
        stats.to_client.bytes,
    );
    m.family(
        "porter_drops_total",
        "counter",
        "Datagrams dropped, by reason.",
    );
    for reason in DropReason::ALL {
        m.sample(
            "porter_drops_total",
            &[("reason", reason.as_str())],
            stats.drops(*reason),
        );
    }
    m.family(
        "porter_quic_lb_total",
        "counter",
        "Unknown CIDs decoded as QUIC-LB CIDs, by outcome (routed by server ID, or fell back).",
    );
    let lb = &stats.quic_lb;
    for (outcome, value) in [
        ("routed", lb.routed),
        ("unroutable", lb.unroutable),
        ("unknown_config", lb.unknown_config),
        ("malformed", lb.malformed),
        ("unknown_server", lb.unknown_server),
    ] {
        m.sample("porter_quic_lb_total", &[("outcome", outcome)], value);
    }
    m.family(
        "porter_directory_lookups_total",
        "counter",
        "Lookups of unknown CIDs in the connection-ID directory, by outcome.",
    );
    let l = &stats.lookups;
    for (outcome, value) in [
        ("asked", l.asked),
        ("found", l.found),
        ("not_found", l.not_found),
        ("timed_out", l.timed_out),
        ("rate_limited", l.rate_limited),
    ] {
        m.sample(
            "porter_directory_lookups_total",
            &[("outcome", outcome)],
            value,
        );
    }
    m.family(
        "porter_shard_moves_total",
        "counter",
        "Connections a data-plane shard adopted from another shard of this instance (a client whose new 4-tuple the kernel hashed to another shard).",
    );
    m.sample("porter_shard_moves_total", &[], l.from_shards);
    m.single(
        "porter_shards",
        "gauge",
        "Data-plane shards (udp.shards): relays with listener and upstream sockets of their own.",
        host.shards,
    );
    m.single(
        "porter_directory_pending_lookups",
        "gauge",
        "Directory lookups waiting for an answer.",
        l.pending,
    );
    m.family(
        "porter_allocations_total",
        "counter",
        "Agones allocations, by outcome (requested counts every request).",
    );
    let a = &stats.allocations;
    for (outcome, n) in [
        ("requested", a.requested),
        ("succeeded", a.succeeded),
        ("failed", a.failed),
        ("timed_out", a.timed_out),
        ("rejected", a.rejected),
        ("over_budget", a.over_budget),
    ] {
        m.sample("porter_allocations_total", &[("outcome", outcome)], n);
    }
    m.family(
        "porter_allocation_failures_total",
        "counter",
        "Failed Agones allocations, by kind of failure.",
    );
    for (kind, n) in &host.allocation_failures {
        m.sample(
            "porter_allocation_failures_total",
            &[("kind", kind.as_str())],
            n,
        );
    }
    render_routes(&mut m, host);
    render_histograms(&mut m, host);
    m.single(
        "porter_host_lock_acquisitions_total",
        "counter",
        "Acquisitions of the data-plane lock (one per received batch slot, timer expiry, \
         allocation answer and control-plane change).",
        host.lock_acquisitions,
    );
    m.single(
        "porter_host_lock_contended_total",
        "counter",
        "Acquisitions of the data-plane lock that found it held and waited.",
        host.lock_contended,
    );
    m.single(
        "porter_log_lines_suppressed_total",
        "counter",
        "Per-session, per-datagram and socket-error log lines left out by their rate limits.",
        host.log_lines_suppressed,
    );
    m.single(
        "porter_allocations_in_flight",
        "gauge",
        "Agones allocations waiting for an answer.",
        stats.allocations_in_flight,
    );
    m.single(
        "porter_redis_enabled",
        "gauge",
        "1 if routes are shared through Redis.",
        u8::from(sync.is_some()),
    );
    let Some(sync) = sync else {
        return m.out;
    };
    m.family(
        "porter_redis_link",
        "gauge",
        "The Redis link: 1 for the current state.",
    );
    for state in LinkState::ALL {
        m.sample(
            "porter_redis_link",
            &[("state", state.as_str())],
            u8::from(sync.state == state),
        );
    }
    m.single(
        "porter_redis_synced",
        "gauge",
        "1 if the routes are in sync with Redis.",
        u8::from(sync.state == LinkState::Synced),
    );
    m.single(
        "porter_redis_outbox",
        "gauge",
        "Local route changes not yet stored in Redis.",
        sync.outbox,
    );
    m.single(
        "porter_redis_routes",
        "gauge",
        "Routes this instance knows Redis holds.",
        sync.redis_routes,
    );
    let c = &sync.counters;
    m.family(
        "porter_redis_messages_total",
        "counter",
        "Route messages received, by outcome.",
    );
    for (outcome, n) in [
        ("applied", c.messages_applied),
        ("own", c.messages_own),
        ("deferred", c.messages_deferred),
        ("invalid", c.messages_invalid),
    ] {
        m.sample("porter_redis_messages_total", &[("outcome", outcome)], n);
    }
    m.single(
        "porter_redis_writes_total",
        "counter",
        "Route changes stored in Redis.",
        c.writes,
    );
    m.single(
        "porter_redis_loads_total",
        "counter",
        "Full loads of the routes from Redis (one per connection).",
        c.loads,
    );
    m.single(
        "porter_redis_disconnects_total",
        "counter",
        "Times the Redis link went down.",
        c.disconnects,
    );
    m.single(
        "porter_redis_restored_total",
        "counter",
        "Routes written back after Redis lost its data.",
        c.restored,
    );
    m.out
}

/// The per-route families: labels are route names from the configuration (and
/// [`NO_ROUTE_LABEL`] for refusals that matched no route), never network input. Each
/// family's HELP and TYPE are written even with no route.
fn render_routes(m: &mut Exposition, host: &HostStats) {
    m.family(
        "porter_route_sessions",
        "gauge",
        "Sessions routed through the route and open now.",
    );
    for r in &host.routes {
        m.sample("porter_route_sessions", &[("route", &r.route)], r.sessions);
    }
    m.family(
        "porter_route_sessions_opened_total",
        "counter",
        "Sessions routed through the route.",
    );
    for r in &host.routes {
        m.sample(
            "porter_route_sessions_opened_total",
            &[("route", &r.route)],
            r.sessions_opened,
        );
    }
    m.family(
        "porter_route_refusals_total",
        "counter",
        "Connections refused, by the route their server name matched (route=\"none\": no route matched).",
    );
    for r in &host.routes {
        m.sample(
            "porter_route_refusals_total",
            &[("route", &r.route)],
            r.refusals,
        );
    }
    m.sample(
        "porter_route_refusals_total",
        &[("route", NO_ROUTE_LABEL)],
        host.refused_without_route,
    );
    m.family(
        "porter_route_datagrams_total",
        "counter",
        "Datagrams relayed by the route's sessions, by direction; counted when each session ends.",
    );
    for r in &host.routes {
        for (direction, t) in [("to_backend", r.to_backend), ("to_client", r.to_client)] {
            m.sample(
                "porter_route_datagrams_total",
                &[("route", &r.route), ("direction", direction)],
                t.datagrams,
            );
        }
    }
    m.family(
        "porter_route_bytes_total",
        "counter",
        "UDP payload bytes relayed by the route's sessions, by direction; counted when each session ends.",
    );
    for r in &host.routes {
        for (direction, t) in [("to_backend", r.to_backend), ("to_client", r.to_client)] {
            m.sample(
                "porter_route_bytes_total",
                &[("route", &r.route), ("direction", direction)],
                t.bytes,
            );
        }
    }
}

/// The histogram families (fixed buckets, seconds).
fn render_histograms(m: &mut Exposition, host: &HostStats) {
    let h = &host.histograms;
    m.family(
        "porter_routing_wait_seconds",
        "histogram",
        "Time a routed connection waited for its route (ClientHello, allocation).",
    );
    m.histogram("porter_routing_wait_seconds", &[], &h.routing_wait);
    m.family(
        "porter_session_duration_seconds",
        "histogram",
        "Lifetime of routed sessions, observed when each ends.",
    );
    m.histogram("porter_session_duration_seconds", &[], &h.session_duration);
    m.family(
        "porter_allocation_seconds",
        "histogram",
        "Time from an Agones allocation request to the allocator's answer, by outcome \
         (success, or the kind of failure).",
    );
    for (outcome, hist) in &h.allocation {
        m.histogram("porter_allocation_seconds", &[("outcome", outcome)], hist);
    }
}

/// The connection-ID directory's link, queue and counters (with `redis.directory`).
pub(super) fn render_directory(out: &mut String, d: &crate::directory::DirectoryStatus) {
    let mut m = Exposition {
        out: std::mem::take(out),
    };
    m.single(
        "porter_directory_up",
        "gauge",
        "1 if the connection-ID directory's link to Redis is up.",
        u8::from(d.up),
    );
    m.single(
        "porter_directory_queued_writes",
        "gauge",
        "Directory writes waiting for Redis.",
        d.queued,
    );
    m.single(
        "porter_directory_sessions",
        "gauge",
        "Sessions whose connection IDs this instance publishes.",
        d.sessions,
    );
    let c = &d.counters;
    m.family(
        "porter_directory_writes_total",
        "counter",
        "Directory writes, by outcome (set and refreshed, deleted, dropped: queue full or Redis down).",
    );
    for (outcome, n) in [
        ("set", c.writes),
        ("deleted", c.deletes),
        ("dropped", c.dropped),
    ] {
        m.sample("porter_directory_writes_total", &[("outcome", outcome)], n);
    }
    m.single(
        "porter_directory_round_trips_total",
        "counter",
        "Write pipelines sent to Redis (one round trip each).",
        c.flushes,
    );
    m.family(
        "porter_directory_redis_lookups_total",
        "counter",
        "Directory lookups by what Redis said (down: answered not found at once, the link being down).",
    );
    for (outcome, n) in [
        ("asked", c.lookups),
        ("found", c.lookups_found),
        ("failed", c.lookups_failed),
        ("down", c.lookups_down),
    ] {
        m.sample(
            "porter_directory_redis_lookups_total",
            &[("outcome", outcome)],
            n,
        );
    }
    m.single(
        "porter_directory_disconnects_total",
        "counter",
        "Times the directory's link to Redis went down.",
        c.disconnects,
    );
    *out = m.out;
}
