//! Balancing policies and backend health checks, end to end (issue 16, acceptance 2 and
//! 3): real quinn backends behind the real binary.

use std::time::{Duration, Instant};

use porter_test_support::*;

use crate::peers::*;

/// Which backend (`A`, `B`, ...) answers a new connection for `sni`, or the error.
async fn served_by(
    client: &quinn::Endpoint,
    porter: &Porter,
    sni: &str,
) -> Result<String, quinn::ConnectionError> {
    let conn = connect(client, porter.udp, sni).await?;
    let reply = echo(&conn, b"x").await;
    conn.close(0u32.into(), b"done");
    Ok(reply.split(':').next().unwrap_or_default().to_owned())
}

/// Acceptance 3: weights 3:1 split 40 new connections 30:10 (within ±5).
pub async fn weights_split_new_connections(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["w.test"]), false);
    let b = EchoServer::start("B", pki.server_config(&["w.test"]), false);
    let routes = format!(
        "routes:\n  - {{fqdn: w.test, type: simple, target: [\"{}\", \"{}\"], weights: [3, 1]}}\n",
        a.addr, b.addr
    );
    let porter = Porter::start(bin, &routes);
    let client = client_endpoint(pki.client_config(None));
    let mut to_a = 0;
    for i in 0..40 {
        let who = served_by(&client, &porter, "w.test")
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}; log:\n{}", porter.log()));
        to_a += usize::from(who == "A");
    }
    assert!(
        (25..=35).contains(&to_a),
        "A got {to_a} of 40, B {}",
        40 - to_a
    );
    let route = porter.route("w.test").expect("the route");
    assert_eq!(route["policy"], "weighted", "{route}");
    assert_eq!(route["weights"], serde_json::json!([3, 1]), "{route}");
}

/// Acceptance 3: with the client-IP hash, six connections from one IP (six client
/// sockets) all reach one backend (round robin would alternate).
pub async fn client_ip_hash_keeps_one_ip_on_one_backend(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["h.test"]), false);
    let b = EchoServer::start("B", pki.server_config(&["h.test"]), false);
    let c = EchoServer::start("C", pki.server_config(&["h.test"]), false);
    let routes = format!(
        "routes:\n  - {{fqdn: h.test, type: simple, target: [\"{}\", \"{}\", \"{}\"], policy: client_ip_hash}}\n",
        a.addr, b.addr, c.addr
    );
    let porter = Porter::start(bin, &routes);
    let mut seen = Vec::new();
    for i in 0..6 {
        let client = client_endpoint(pki.client_config(None));
        let who = served_by(&client, &porter, "h.test")
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}; log:\n{}", porter.log()));
        seen.push(who);
    }
    assert!(seen.iter().all(|w| *w == seen[0]), "{seen:?}");
}

fn healthy(porter: &Porter, fqdn: &str, target: std::net::SocketAddr) -> Option<bool> {
    let (_, body) = porter.get("/routes").ok()?;
    let list: serde_json::Value = serde_json::from_str(&body).ok()?;
    list.as_array()?.iter().find(|r| r["fqdn"] == fqdn)?["health"]
        .as_array()?
        .iter()
        .find(|t| t["target"] == target.to_string())?["healthy"]
        .as_bool()
}

/// Acceptance 2: one of two backends stops: within 10 s no new connection goes to it;
/// restarted, it is back in rotation within 15 s; with both down a new connection is
/// refused in under a second.
pub async fn unhealthy_backends_leave_and_rejoin_the_rotation(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["hc.test"]), false);
    let b = EchoServer::start("B", pki.server_config(&["hc.test"]), false);
    let (a_addr, b_addr) = (a.addr, b.addr);
    let routes = format!(
        "health: {{enabled: true, interval: 300ms, timeout: 200ms, rise: 2, fall: 2}}\n\
         routes:\n  - {{fqdn: hc.test, type: simple, target: [\"{a_addr}\", \"{b_addr}\"]}}\n"
    );
    let porter = Porter::start(bin, &routes);
    let client = client_endpoint(pki.client_config(None));
    assert_eq!(healthy(&porter, "hc.test", b_addr), Some(true));

    b.stop().await;
    let stopped = Instant::now();
    // B is found down (no connection is tried meanwhile: one sent to a stopped backend
    // only ends at the client's idle timeout).
    let down = wait_for(Duration::from_secs(10), || {
        (healthy(&porter, "hc.test", b_addr) == Some(false)).then_some(())
    });
    assert!(
        down.is_some(),
        "B never marked down; log:\n{}",
        porter.log()
    );
    assert!(porter.wait_log("backend unhealthy", Duration::from_secs(1)));
    // Then, still within 10 s of the stop, new connections go to A only: four in a row
    // (round robin over two healthy backends would give B every second one).
    for i in 0..4 {
        let who = served_by(&client, &porter, "hc.test")
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}; log:\n{}", porter.log()));
        assert_eq!(who, "A", "connection {i}");
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopped.elapsed()
    );

    let b = EchoServer::start_at("B", pki.server_config(&["hc.test"]), false, b_addr);
    let restarted = Instant::now();
    loop {
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "B not back in rotation; log:\n{}",
            porter.log()
        );
        if served_by(&client, &porter, "hc.test").await.ok().as_deref() == Some("B") {
            break;
        }
    }
    assert_eq!(healthy(&porter, "hc.test", b_addr), Some(true));

    a.stop().await;
    b.stop().await;
    let both = wait_for(Duration::from_secs(10), || {
        (healthy(&porter, "hc.test", a_addr) == Some(false)
            && healthy(&porter, "hc.test", b_addr) == Some(false))
        .then_some(())
    });
    assert!(
        both.is_some(),
        "both never marked down; log:\n{}",
        porter.log()
    );
    let started = Instant::now();
    let err = connect(&client, porter.udp, "hc.test")
        .await
        .expect_err("no healthy backend");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    match err {
        quinn::ConnectionError::ConnectionClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED
            );
        }
        other => panic!("expected CONNECTION_REFUSED, got {other:?}"),
    }
    assert!(porter.wait_log("no_healthy_backend", Duration::from_secs(1)));
}
