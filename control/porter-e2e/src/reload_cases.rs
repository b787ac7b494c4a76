//! End-to-end cases for hot reload, written once for every relay binary: the config file
//! changed in place, by a rename over it, and by Kubernetes' ConfigMap symlink swap; an
//! invalid change; SIGHUP; the policy for the sessions of a removed target.
//!
//! Each case keeps a QUIC connection open across the reload and checks that it still
//! echoes afterwards, on the same process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use porter_test_support::*;

use crate::peers::*;

/// How soon a changed file must carry traffic (acceptance 1 of the operations issue).
const WITHIN: Duration = Duration::from_secs(3);

fn simple_route(fqdn: &str, target: SocketAddr) -> String {
    format!("  - {{fqdn: \"{fqdn}\", type: simple, target: \"{target}\"}}\n")
}

/// Lays out a ConfigMap volume as the kubelet does: `config.yaml` is a symlink to
/// `..data/config.yaml`, and `..data` a symlink to a timestamped directory holding the
/// file. Returns the path of `config.yaml`.
fn configmap_layout(dir: &Path, text: &str) -> PathBuf {
    let version = dir.join("..2026_01_01_00_00_00.000000001");
    std::fs::create_dir(&version).expect("configmap version dir");
    std::fs::write(version.join("config.yaml"), text).expect("write configmap file");
    std::os::unix::fs::symlink(version.file_name().unwrap(), dir.join("..data"))
        .expect("..data symlink");
    let path = dir.join("config.yaml");
    std::os::unix::fs::symlink("..data/config.yaml", &path).expect("config.yaml symlink");
    path
}

/// The kubelet's update: a new timestamped directory, a new `..data` symlink renamed
/// over the old one (atomic), the old directory removed.
fn configmap_swap(path: &Path, text: &str) {
    let dir = path.parent().expect("config dir");
    let old = std::fs::read_link(dir.join("..data")).expect("..data is a symlink");
    let version = dir.join("..2026_01_01_00_00_01.000000002");
    std::fs::create_dir(&version).expect("new configmap version dir");
    std::fs::write(version.join("config.yaml"), text).expect("write new configmap file");
    std::os::unix::fs::symlink(version.file_name().unwrap(), dir.join("..data_tmp"))
        .expect("..data_tmp symlink");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(dir.join(old)).expect("remove the old version");
}

/// Writes `text` into the existing file (truncate and write: same inode).
fn edit_in_place(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open config in place");
    file.write_all(text.as_bytes())
        .expect("write config in place");
}

/// Writes `text` to a new file beside it and renames it over the config (a new inode).
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.new");
    std::fs::write(&tmp, text).expect("write new config");
    std::fs::rename(&tmp, path).expect("rename over config");
}

/// Connects to `sni` through `porter` until it works or `within` passes; the echo of
/// the first connection that works.
async fn first_echo(
    client: &quinn::Endpoint,
    porter: &Porter,
    sni: &str,
    within: Duration,
) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(conn) = connect(client, porter.udp, sni).await {
            let reply = echo(&conn, sni.as_bytes()).await;
            conn.close(0u32.into(), b"done");
            return Some(reply);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reloads(porter: &Porter, outcome: &str) -> f64 {
    metric(
        &porter.metrics(),
        "porter_config_reloads_total",
        &[("outcome", outcome)],
    )
    .unwrap_or_else(|| panic!("no porter_config_reloads_total{{outcome={outcome}}}"))
}

/// The shared body: a route to A, a connection to it kept open; `change` puts a file
/// with a second route (to B) in place; B works within three seconds on the same
/// process while the kept connection keeps echoing.
async fn a_change_adds_a_route(
    bin: Binary,
    extra: &str,
    place: impl FnOnce(&Path, &str) -> PathBuf,
    change: impl FnOnce(&Porter, &str),
    logged: &[&str],
) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let b = EchoServer::start("B", pki.server_config(&["b.test"]), false);
    let body = format!("{extra}routes:\n{}", simple_route("a.test", a.addr));
    let mut porter = Porter::start_placed(bin, "", &body, place);
    let pid = porter.pid();
    let client = client_endpoint(pki.client_config(None));
    let kept = connect(&client, porter.udp, "a.test")
        .await
        .unwrap_or_else(|e| panic!("a.test: {e}; log:\n{}", porter.log()));
    assert_eq!(echo(&kept, b"before").await, "A:before");
    assert!(
        connect(&client, porter.udp, "b.test").await.is_err(),
        "b.test has no route yet"
    );

    let text = format!(
        "{}{extra}routes:\n{}{}",
        porter.config_head,
        simple_route("a.test", a.addr),
        simple_route("b.test", b.addr)
    );
    let changed = Instant::now();
    change(&porter, &text);
    let reply = first_echo(&client, &porter, "b.test", WITHIN).await;
    let took = changed.elapsed();
    assert_eq!(
        reply.as_deref(),
        Some("B:b.test"),
        "b.test did not work within {WITHIN:?} ({took:?}); log:\n{}",
        porter.log()
    );
    assert!(took <= WITHIN, "{took:?}");
    assert_eq!(echo(&kept, b"after").await, "A:after", "{}", porter.log());
    assert!(porter.is_running() && porter.pid() == pid, "no restart");
    assert_eq!(reloads(&porter, "success"), 1.0, "{}", porter.log());
    assert_eq!(reloads(&porter, "failure"), 0.0);
    for line in ["configuration reloaded"].iter().chain(logged) {
        assert!(porter.log().contains(line), "{line}: {}", porter.log());
    }
}

/// Acceptance 1: editing the file in place adds a route that works within 3 s.
pub async fn editing_the_config_in_place_adds_a_route(bin: Binary) {
    a_change_adds_a_route(
        bin,
        "",
        |dir, text| {
            let path = dir.join("config.yaml");
            std::fs::write(&path, text).expect("write config");
            path
        },
        |porter, text| edit_in_place(&porter.config_path, text),
        &["configuration file changed"],
    )
    .await;
}

/// Acceptance 1: a new file renamed over the config adds a route that works within 3 s.
pub async fn renaming_a_file_over_the_config_adds_a_route(bin: Binary) {
    a_change_adds_a_route(
        bin,
        "",
        |dir, text| {
            let path = dir.join("config.yaml");
            std::fs::write(&path, text).expect("write config");
            path
        },
        |porter, text| rename_over(&porter.config_path, text),
        &["configuration file changed"],
    )
    .await;
}

/// Acceptance 1: Kubernetes' ConfigMap update (the `..data` symlink swapped) adds a route
/// that works within 3 s.
pub async fn a_configmap_symlink_swap_adds_a_route(bin: Binary) {
    a_change_adds_a_route(
        bin,
        "",
        configmap_layout,
        |porter, text| {
            configmap_swap(&porter.config_path, text);
        },
        &["configuration file changed"],
    )
    .await;
}

/// Acceptance 1: with the watch off, SIGHUP reloads; a changed section that needs a
/// restart is reported as such and not applied.
pub async fn sighup_reloads_the_config(bin: Binary) {
    a_change_adds_a_route(
        bin,
        "reload: {watch: false}\n",
        |dir, text| {
            let path = dir.join("config.yaml");
            std::fs::write(&path, text).expect("write config");
            path
        },
        |porter, text| {
            // The udp section changes too (log_requests off): needs a restart.
            let text = text.replace("log_requests: true", "log_requests: false");
            rename_over(&porter.config_path, &text);
            porter.hangup();
        },
        &[
            "reload requested",
            "`udp` changed in the file: it needs a restart to apply; the running value stays",
        ],
    )
    .await;
}

/// Acceptance 1: an invalid edit is reported with its location, shows in the metrics and
/// changes nothing; fixing it then applies.
pub async fn an_invalid_edit_is_reported_and_changes_nothing(bin: Binary) {
    let pki = Pki::new();
    let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
    let b = EchoServer::start("B", pki.server_config(&["b.test"]), false);
    let porter = Porter::start(bin, &format!("routes:\n{}", simple_route("a.test", a.addr)));
    let client = client_endpoint(pki.client_config(None));
    let kept = connect(&client, porter.udp, "a.test")
        .await
        .unwrap_or_else(|e| panic!("a.test: {e}; log:\n{}", porter.log()));
    assert_eq!(echo(&kept, b"before").await, "A:before");
    let routes_before = porter.get("/routes").expect("GET /routes");

    // Two problems: an unknown key (line 3) and a target that is no address (line 6).
    // The valid new route beside them must not be applied either.
    let bad = format!(
        "{}relya: {{}}\nroutes:\n{}  - {{fqdn: c.test, type: simple, target: \"no-port\"}}\n{}",
        porter.config_head,
        simple_route("b.test", b.addr),
        simple_route("a.test", a.addr),
    );
    edit_in_place(&porter.config_path, &bad);
    let rejected = wait_for(WITHIN, || {
        (reloads(&porter, "failure") >= 1.0).then_some(())
    });
    assert!(rejected.is_some(), "not rejected; log:\n{}", porter.log());
    let samples = porter.metrics();
    assert_eq!(
        metric(&samples, "porter_config_last_reload_success", &[]),
        Some(0.0)
    );
    assert_eq!(reloads(&porter, "success"), 0.0);
    let log = porter.log();
    let path = porter.config_path.display().to_string();
    assert!(
        log.contains(&format!("{path}:3:1: relya: unknown key `relya`")),
        "{log}"
    );
    assert!(log.contains(&format!("{path}:6:")), "{log}");
    assert!(log.contains("the running configuration stays"), "{log}");
    assert_eq!(porter.get("/routes").expect("GET /routes"), routes_before);
    assert!(
        connect(&client, porter.udp, "b.test").await.is_err(),
        "b.test must not be routed"
    );
    assert_eq!(echo(&kept, b"still").await, "A:still");

    // Fixed: it applies.
    let good = format!(
        "{}routes:\n{}{}",
        porter.config_head,
        simple_route("b.test", b.addr),
        simple_route("a.test", a.addr),
    );
    edit_in_place(&porter.config_path, &good);
    let reply = first_echo(&client, &porter, "b.test", WITHIN).await;
    assert_eq!(reply.as_deref(), Some("B:b.test"), "{}", porter.log());
    assert_eq!(
        metric(&porter.metrics(), "porter_config_last_reload_success", &[]),
        Some(1.0)
    );
    assert_eq!(echo(&kept, b"after").await, "A:after");
}

/// A target removed from the file: with `removed_sessions: drain` its session keeps
/// echoing; with `close` it is closed at once, and the log says which policy applied.
/// Routes added through the API are not touched by a reload.
pub async fn removed_targets_drain_or_close_as_configured(bin: Binary) {
    for policy in ["drain", "close"] {
        let pki = Pki::new();
        let a = EchoServer::start("A", pki.server_config(&["a.test"]), false);
        let b = EchoServer::start("B", pki.server_config(&["b.test"]), false);
        let porter = Porter::start(
            bin,
            &format!(
                "reload: {{removed_sessions: {policy}}}\nroutes:\n{}{}",
                simple_route("a.test", a.addr),
                simple_route("b.test", b.addr)
            ),
        );
        let (status, _) = http(
            porter.api,
            "POST",
            "/routes",
            Some(&format!(
                r#"{{"fqdn":"api.test","type":"simple","target":"{}"}}"#,
                a.addr
            )),
            None,
        )
        .expect("POST /routes");
        assert_eq!(status, 200);
        let client = client_endpoint(pki.client_config(None));
        let to_a = connect(&client, porter.udp, "a.test")
            .await
            .expect("a.test");
        let to_b = connect(&client, porter.udp, "b.test")
            .await
            .expect("b.test");
        assert_eq!(echo(&to_b, b"before").await, "B:before");

        let text = format!(
            "{}reload: {{removed_sessions: {policy}}}\nroutes:\n{}",
            porter.config_head,
            simple_route("a.test", a.addr)
        );
        rename_over(&porter.config_path, &text);
        let gone = wait_for(WITHIN, || porter.route("b.test").is_none().then_some(()));
        assert!(gone.is_some(), "{policy}: b.test stayed; {}", porter.log());
        assert!(porter.route("api.test").is_some(), "the API's route stays");
        let line = match policy {
            "drain" => "target removed: its sessions drain until idle",
            _ => "target removed: its sessions were closed",
        };
        assert!(porter.wait_log(line, WITHIN), "{policy}: {}", porter.log());
        assert_eq!(echo(&to_a, b"a").await, "A:a");
        if policy == "drain" {
            assert_eq!(echo(&to_b, b"still").await, "B:still");
        } else {
            // The relay forgot the session: the client's datagrams go nowhere, and its
            // stream gets no answer.
            let (mut send, mut recv) = to_b.open_bi().await.expect("open stream");
            send.write_all(b"lost").await.expect("write");
            send.finish().expect("finish");
            let answer =
                tokio::time::timeout(Duration::from_secs(2), recv.read_to_end(1 << 10)).await;
            assert!(
                !matches!(answer, Ok(Ok(_))),
                "close: the session must be gone; got {answer:?}"
            );
            let stats = porter.stats();
            assert_eq!(
                stats["sessions"], 1,
                "only the session to A is left: {stats}"
            );
        }
    }
}
