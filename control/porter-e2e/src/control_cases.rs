//! End-to-end cases for the control plane, written once for every relay binary: the
//! management API over real HTTP, Prometheus metrics under real QUIC traffic, and route
//! sharing between instances through a real `redis-server` (started by the tests, stopped
//! and restarted to simulate an outage).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use porter_test_support::*;

use crate::peers::*;

/// Enough for a debug build on a loaded two-core machine; conditions are polled, so a
/// passing run takes only as long as the condition needs.
const PATIENCE: Duration = Duration::from_secs(15);

fn redis_section(redis: &RedisServer) -> String {
    format!(
        "redis: {{enabled: true, address: \"{}\"}}\n",
        redis.address()
    )
}

fn route_body(fqdn: &str, target: SocketAddr) -> String {
    format!(r#"{{"fqdn":"{fqdn}","type":"simple","target":"{target}"}}"#)
}

fn target_of(porter: &Porter, fqdn: &str) -> Option<String> {
    porter
        .route(fqdn)
        .and_then(|r| r["target"].as_str().map(str::to_owned))
}

fn readyz(porter: &Porter) -> (u16, String) {
    porter.get("/readyz").expect("GET /readyz")
}

/// Acceptance 1: two instances on one Redis; a route POSTed to A carries real QUIC traffic
/// through B within a second, and a DELETE on A removes it from B. Messages on the channel
/// that are not valid routes are ignored whole.
pub async fn a_route_set_on_one_instance_routes_traffic_through_another(bin: Binary) {
    let redis = RedisServer::start();
    let pki = Pki::new();
    let server = EchoServer::start("S", pki.server_config(&["shared.test"]), false);
    let a = Porter::start(bin, &redis_section(&redis));
    let b = Porter::start(bin, &redis_section(&redis));
    assert!(
        a.wait_ready(PATIENCE),
        "A not ready: {:?}\n{}",
        readyz(&a),
        a.log()
    );
    assert!(
        b.wait_ready(PATIENCE),
        "B not ready: {:?}\n{}",
        readyz(&b),
        b.log()
    );

    let (status, reply) = http(
        a.api,
        "POST",
        "/routes",
        Some(&route_body("shared.test", server.addr)),
        None,
    )
    .unwrap();
    assert_eq!((status, reply.as_str()), (200, r#"{"status":"ok"}"#));
    let posted = Instant::now();
    let seen = wait_for(Duration::from_secs(1), || target_of(&b, "shared.test"));
    let elapsed = posted.elapsed();
    assert_eq!(
        seen.as_deref(),
        Some(server.addr.to_string().as_str()),
        "B did not have the route within 1 s ({elapsed:?}); B log:\n{}",
        b.log()
    );
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, b.udp, "shared.test")
        .await
        .unwrap_or_else(|e| panic!("through B: {e}; B log:\n{}", b.log()));
    assert_eq!(echo(&conn, b"via B").await, "S:via B");
    conn.close(0u32.into(), b"done");
    // Stored as the original project stores it.
    assert_eq!(
        redis.hgetall("porter:routes:simple"),
        [("shared.test".to_owned(), server.addr.to_string())]
    );

    // Invalid messages are ignored whole; a valid one after them still applies.
    for junk in [
        "not json at all",
        r#"{"fqdn":"x.test","type":"simple","target":"127.0.0.1:1,not-an-address"}"#,
        r#"{"fqdn":"x..test","type":"simple","target":"127.0.0.1:1"}"#,
        r#"{"fqdn":"x.test","type":"wormhole","target":"127.0.0.1:1"}"#,
    ] {
        redis.command(&["PUBLISH", "porter_routes", junk]).unwrap();
    }
    redis
        .command(&[
            "PUBLISH",
            "porter_routes",
            r#"{"fqdn":"y.test","type":"simple","target":"127.0.0.1:9"}"#,
        ])
        .unwrap();
    assert!(
        wait_for(PATIENCE, || target_of(&b, "y.test")).is_some(),
        "{}",
        b.log()
    );
    assert_eq!(b.route("x.test"), None);
    assert_eq!(
        metric(
            &b.metrics(),
            "porter_redis_messages_total",
            &[("outcome", "invalid")]
        ),
        Some(4.0)
    );
    assert!(b.log().contains("ignoring an invalid route message"));

    let (status, _) = http(a.api, "DELETE", "/routes/shared.test", None, None).unwrap();
    assert_eq!(status, 200);
    let gone = wait_for(Duration::from_secs(1), || {
        b.route("shared.test").is_none().then_some(())
    });
    assert!(gone.is_some(), "B still has the route; B log:\n{}", b.log());
    let err = connect(&client, b.udp, "shared.test")
        .await
        .expect_err("the route is gone from B");
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(ref c)
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{err:?}"
    );
    assert!(redis.hgetall("porter:routes:simple").is_empty());
    // A ignored its own messages, B applied them.
    let a_metrics = a.metrics();
    assert!(
        metric(
            &a_metrics,
            "porter_redis_messages_total",
            &[("outcome", "own")]
        ) >= Some(1.0)
    );
    assert!(
        metric(
            &b.metrics(),
            "porter_redis_messages_total",
            &[("outcome", "applied")]
        ) >= Some(2.0)
    );
}

/// Acceptance 2: Redis stops; the relays keep routing; a route changed and one added on A
/// during the outage reach B once Redis is back (empty: it had no persistence), without a
/// restart; and after every instance restarts, no route is lost.
pub async fn after_a_redis_outage_instances_converge_and_keep_every_route(bin: Binary) {
    let mut redis = RedisServer::start();
    let pki = Pki::new();
    let names = ["one.test", "two.test", "three.test"];
    let first = EchoServer::start("FIRST", pki.server_config(&names), false);
    let second = EchoServer::start("SECOND", pki.server_config(&names), false);
    let a = Porter::start(bin, &redis_section(&redis));
    let b = Porter::start(bin, &redis_section(&redis));
    assert!(a.wait_ready(PATIENCE) && b.wait_ready(PATIENCE));
    let (status, _) = http(
        a.api,
        "POST",
        "/routes",
        Some(&route_body("one.test", first.addr)),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    // three.test is set before the outage and left alone: Redis forgets it when it
    // restarts, and the instances must put it back rather than take it as deleted.
    let (status, _) = http(
        b.api,
        "POST",
        "/routes",
        Some(&route_body("three.test", first.addr)),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(wait_for(PATIENCE, || target_of(&b, "one.test")).is_some());
    assert!(wait_for(PATIENCE, || target_of(&a, "three.test")).is_some());

    redis.stop();
    for (name, p) in [("A", &a), ("B", &b)] {
        let down = wait_for(PATIENCE, || {
            let (status, body) = readyz(p);
            (status == 503).then_some(body)
        });
        let body = down.unwrap_or_else(|| panic!("{name} still ready without Redis"));
        assert!(body.contains("Redis"), "{name}: {body}");
    }
    // Routing goes on with what the relays have.
    let client = client_endpoint(pki.client_config(None));
    let conn = connect(&client, b.udp, "one.test").await.unwrap();
    assert_eq!(echo(&conn, b"outage").await, "FIRST:outage");
    conn.close(0u32.into(), b"done");
    // Changes on A apply locally at once.
    let put = format!(r#"{{"type":"simple","target":"{}"}}"#, second.addr);
    let (status, body) = http(a.api, "PUT", "/routes/one.test", Some(&put), None).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(
        a.api,
        "POST",
        "/routes",
        Some(&route_body("two.test", second.addr)),
        None,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(target_of(&a, "two.test"), Some(second.addr.to_string()));
    assert_eq!(
        metric(&a.metrics(), "porter_redis_outbox", &[]),
        Some(2.0),
        "two changes wait for Redis"
    );
    assert_eq!(target_of(&b, "two.test"), None);

    redis.restart();
    let converged = wait_for(PATIENCE, || {
        (target_of(&b, "one.test") == Some(second.addr.to_string())
            && target_of(&b, "two.test") == Some(second.addr.to_string()))
        .then_some(())
    });
    assert!(
        converged.is_some(),
        "B did not converge: one={:?} two={:?}\nB log:\n{}",
        target_of(&b, "one.test"),
        target_of(&b, "two.test"),
        b.log()
    );
    assert!(a.wait_ready(PATIENCE) && b.wait_ready(PATIENCE));
    let conn = connect(&client, b.udp, "two.test").await.unwrap();
    assert_eq!(echo(&conn, b"after").await, "SECOND:after");
    conn.close(0u32.into(), b"done");
    let stored = redis.hgetall("porter:routes:simple");
    assert_eq!(
        stored,
        [
            ("one.test".to_owned(), second.addr.to_string()),
            ("three.test".to_owned(), first.addr.to_string()),
            ("two.test".to_owned(), second.addr.to_string())
        ]
    );
    for p in [&a, &b] {
        assert_eq!(target_of(p, "three.test"), Some(first.addr.to_string()));
    }
    let m = a.metrics();
    assert!(metric(&m, "porter_redis_disconnects_total", &[]) >= Some(1.0));
    assert_eq!(metric(&m, "porter_redis_outbox", &[]), Some(0.0));
    assert_eq!(
        metric(&m, "porter_redis_link", &[("state", "synced")]),
        Some(1.0)
    );

    // Every instance restarts; the configuration still names the old target for one.test:
    // the configuration is the base, Redis overrides it.
    drop(a);
    drop(b);
    let stale = format!(
        "routes:\n  - {{fqdn: one.test, type: simple, target: \"{}\"}}\n",
        first.addr
    );
    let a = Porter::start(bin, &format!("{}{stale}", redis_section(&redis)));
    let b = Porter::start(bin, &redis_section(&redis));
    assert!(a.wait_ready(PATIENCE) && b.wait_ready(PATIENCE));
    for p in [&a, &b] {
        assert_eq!(target_of(p, "one.test"), Some(second.addr.to_string()));
        assert_eq!(target_of(p, "two.test"), Some(second.addr.to_string()));
        assert_eq!(target_of(p, "three.test"), Some(first.addr.to_string()));
    }
    let conn = connect(&client, a.udp, "one.test").await.unwrap();
    assert_eq!(echo(&conn, b"restarted").await, "SECOND:restarted");
    conn.close(0u32.into(), b"done");
}

/// Acceptance 3 over real HTTP: the token, the body limit (413 from Content-Length, without
/// the body), JSON errors for unknown paths and wrong methods.
pub async fn api_over_http_checks_the_token_and_the_body_limit(bin: Binary) {
    let token = "e2e-token";
    let porter = Porter::start_with_api(
        bin,
        &format!(", token: {token}, max_body_bytes: 1024"),
        "routes: []\n",
    );
    let body = route_body("a.test", ([127, 0, 0, 1], 9).into());
    let (status, reply) = http(porter.api, "POST", "/routes", Some(&body), None).unwrap();
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("bearer token"), "{reply}");
    let (status, reply) = http(porter.api, "DELETE", "/routes/a.test", None, Some("nope")).unwrap();
    assert_eq!(
        (status, reply.as_str()),
        (403, r#"{"error":"wrong bearer token"}"#)
    );
    let (status, _) = http(porter.api, "POST", "/routes", Some(&body), Some(token)).unwrap();
    assert_eq!(status, 200);
    let (status, _) = http(porter.api, "GET", "/routes/a.test", None, None).unwrap();
    assert_eq!(status, 401, "reads that show routes need the token");
    let mut porter = porter;
    porter.token = Some(token.to_owned());
    assert!(
        porter.route("a.test").is_some(),
        "with the token, the route is there"
    );

    // 413 while the client has sent a few bytes of a body it says is 100 MB.
    let head = format!(
        "POST /routes HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000000"
    );
    let started = Instant::now();
    let (status, reply) = http_raw(porter.api, &head, b"{\"fqdn\":").unwrap();
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply, r#"{"error":"request body larger than 1024 bytes"}"#);
    assert!(started.elapsed() < Duration::from_secs(5));

    let (status, reply) = http(porter.api, "GET", "/nowhere", None, None).unwrap();
    assert_eq!(
        (status, reply.as_str()),
        (404, r#"{"error":"no such endpoint"}"#)
    );
    let (status, reply) = http(porter.api, "PATCH", "/routes", None, Some(token)).unwrap();
    assert_eq!(status, 405, "{reply}");
    assert!(reply.contains("not allowed"), "{reply}");
    let (status, reply) = http(porter.api, "GET", "/routes/a..test", None, Some(token)).unwrap();
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("a..test"), "{reply}");
}

/// The API on a non-loopback address without a token: Porter refuses to start, and says why.
pub async fn a_public_api_without_a_token_refuses_to_start(bin: Binary) {
    let config = format!(
        "udp: {{port: {}, bind: 127.0.0.1}}\n\
         api: {{port: {}, bind: 0.0.0.0, token_env: PORTER_E2E_TOKEN_NEVER_SET}}\nroutes: []\n",
        free_udp_port(),
        free_tcp_port()
    );
    let mut porter = Porter::spawn(bin, &config, &[]);
    let code = porter.wait_exit(Duration::from_secs(10));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}");
    let log = porter.log();
    assert!(
        log.contains("not a loopback address") && log.contains("PORTER_E2E_TOKEN_NEVER_SET"),
        "{log}"
    );
}

/// Acceptance 4: `/metrics` parses as Prometheus text and its counters follow real traffic;
/// `/sessions` pages through live sessions; the Redis link shows in the metrics.
pub async fn metrics_follow_traffic_and_sessions_page(bin: Binary) {
    let mut redis = RedisServer::start();
    let pki = Pki::new();
    let server = EchoServer::start("M", pki.server_config(&["m.test"]), false);
    let porter = Porter::start(
        bin,
        &format!(
            "{}routes:\n  - {{fqdn: m.test, type: simple, target: \"{}\"}}\n",
            redis_section(&redis),
            server.addr
        ),
    );
    assert!(porter.wait_ready(PATIENCE));
    let before = porter.metrics();
    assert_eq!(metric(&before, "porter_routes", &[]), Some(1.0));
    assert_eq!(metric(&before, "porter_redis_enabled", &[]), Some(1.0));
    assert_eq!(
        metric(&before, "porter_redis_link", &[("state", "synced")]),
        Some(1.0)
    );
    assert_eq!(metric(&before, "porter_sessions", &[]), Some(0.0));
    let datagrams =
        |m: &[Sample], dir| metric(m, "porter_datagrams_total", &[("direction", dir)]).unwrap();
    let bytes = |m: &[Sample], dir| metric(m, "porter_bytes_total", &[("direction", dir)]).unwrap();

    let client = client_endpoint(pki.client_config(None));
    let mut conns = Vec::new();
    for i in 0..3 {
        let conn = connect(&client, porter.udp, "m.test").await.unwrap();
        assert_eq!(
            echo(&conn, format!("hello{i}").as_bytes()).await,
            format!("M:hello{i}")
        );
        conns.push(conn);
    }
    let after = porter.metrics();
    for dir in ["to_backend", "to_client"] {
        assert!(datagrams(&after, dir) > datagrams(&before, dir), "{dir}");
        assert!(bytes(&after, dir) >= bytes(&before, dir) + 1200.0, "{dir}");
    }
    assert_eq!(metric(&after, "porter_sessions", &[]), Some(3.0));
    assert_eq!(
        metric(&after, "porter_sessions_opened_total", &[]),
        Some(3.0)
    );

    // Pages of two.
    let (status, body) = porter.get("/sessions?limit=2").unwrap();
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["total"], 3);
    let first = page["sessions"].as_array().unwrap();
    assert_eq!(first.len(), 2);
    let s = &first[0];
    assert_eq!(s["sni"], "m.test");
    assert_eq!(s["backend"], server.addr.to_string());
    assert_eq!(s["client"], client.local_addr().unwrap().to_string());
    assert_eq!(s["state"], "established");
    assert!(s["age_seconds"].as_f64().unwrap() >= s["idle_seconds"].as_f64().unwrap());
    for dir in ["to_backend", "to_client"] {
        assert!(s[dir]["datagrams"].as_u64().unwrap() > 0, "{s}");
        assert!(s[dir]["bytes"].as_u64().unwrap() > 0, "{s}");
    }
    let next = page["next"].as_str().expect("a next page").to_owned();
    let (_, body) = porter
        .get(&format!("/sessions?limit=2&after={next}"))
        .unwrap();
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(page["next"], serde_json::Value::Null);
    assert_ne!(page["sessions"][0]["id"], first[0]["id"]);
    assert_ne!(page["sessions"][0]["id"], first[1]["id"]);

    // A datagram that is not QUIC is dropped and counted.
    let drops_before = metric_sum(&after, "porter_drops_total");
    let junk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(&[0x40, 1, 2, 3], porter.udp).unwrap();
    let counted = wait_for(PATIENCE, || {
        (metric_sum(&porter.metrics(), "porter_drops_total") > drops_before).then_some(())
    });
    assert!(counted.is_some());

    // The Redis link going down shows.
    redis.stop();
    let down = wait_for(PATIENCE, || {
        let m = porter.metrics();
        (metric(&m, "porter_redis_link", &[("state", "down")]) == Some(1.0)
            && metric(&m, "porter_redis_synced", &[]) == Some(0.0))
        .then_some(())
    });
    assert!(down.is_some(), "{}", porter.get("/metrics").unwrap().1);
    for conn in conns {
        conn.close(0u32.into(), b"done");
    }
}
