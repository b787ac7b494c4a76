//! Hot reload against a real file and a relay behind a `RelayHandle`: which routes a
//! reload owns, what it reports, and that a rejected file changes nothing.

use porter_control::reload::Reloader;
use porter_control::setup::Settings;
use porter_core::{BackendAddr, Route, RouteTarget};
use porter_host::RelayHandle;

fn route(name: &str, target: &str) -> Route {
    Route {
        name: name.parse().unwrap(),
        target: RouteTarget::Simple(vec![BackendAddr(target.parse().unwrap())]),
        balance: Default::default(),
    }
}

fn routes_text(relay: &RelayHandle) -> Vec<String> {
    relay
        .routes()
        .iter()
        .map(|r| match &r.target {
            RouteTarget::Simple(b) => format!("{} {}", r.name, b[0]),
            RouteTarget::Agones { fleet } => format!("{} fleet {fleet}", r.name),
        })
        .collect()
}

fn start(text: &str) -> (std::path::PathBuf, Reloader, RelayHandle) {
    let dir = porter_test_support::temp_dir();
    let path = dir.join("porter.yaml");
    std::fs::write(&path, text).unwrap();
    let config = porter_config::load_with_env(&path, &|_| None).expect("valid start config");
    let settings = Settings::from_config_with_env(&config, |_| None).expect("settings");
    let relay = RelayHandle::detached(settings.host_settings().new_relay().unwrap());
    let reloader = Reloader::new(path.clone(), &settings, relay.clone());
    (path, reloader, relay)
}

const HEAD: &str = "udp: {port: 7000}\n";

#[test]
fn a_reload_owns_the_file_routes_only_and_reports_what_it_did() {
    let (path, reloader, relay) = start(&format!(
        "{HEAD}routes:\n\
         - {{fqdn: a.test, type: simple, target: \"127.0.0.1:1\"}}\n\
         - {{fqdn: b.test, type: simple, target: \"127.0.0.1:2\"}}\n\
         - {{fqdn: e.test, type: simple, target: \"127.0.0.1:5\"}}\n"
    ));
    // The API adds c.test and replaces b.test.
    relay
        .set_route(route("c.test", "127.0.0.1:3"), None)
        .unwrap();
    relay
        .set_route(route("b.test", "127.0.0.1:22"), None)
        .unwrap();

    std::fs::write(
        &path,
        "udp: {port: 7001}\nroutes:\n\
         - {fqdn: a.test, type: simple, target: \"127.0.0.1:11\"}\n\
         - {fqdn: c.test, type: simple, target: \"127.0.0.1:33\"}\n\
         - {fqdn: d.test, type: simple, target: \"127.0.0.1:4\"}\n",
    )
    .unwrap();
    let report = reloader.reload().expect("valid file");
    assert_eq!(report.added, ["d.test"]);
    assert_eq!(report.changed, ["a.test"]);
    assert_eq!(report.removed, ["e.test"]);
    // b.test (removed from the file) and c.test (added to it) are the API's.
    let mut kept = report.kept.clone();
    kept.sort();
    assert_eq!(kept, ["b.test", "c.test"]);
    assert_eq!(report.needs_restart, ["udp"]);
    let gone: Vec<String> = report
        .removed_targets
        .iter()
        .map(|(b, closed)| format!("{b} {closed:?}"))
        .collect();
    // Drain (the default): nothing closed. 127.0.0.1:2 went with the API's b.test before.
    assert_eq!(
        gone,
        ["127.0.0.1:1 None", "127.0.0.1:2 None", "127.0.0.1:5 None"]
    );
    assert_eq!(
        routes_text(&relay),
        [
            "a.test 127.0.0.1:11",
            "b.test 127.0.0.1:22",
            "c.test 127.0.0.1:3",
            "d.test 127.0.0.1:4"
        ]
    );

    // The same file again changes nothing.
    let again = reloader.reload().expect("same file");
    assert!(again.added.is_empty() && again.changed.is_empty() && again.removed.is_empty());
    let mut metrics = String::new();
    reloader.render_metrics(&mut metrics);
    assert!(
        metrics.contains("porter_config_reloads_total{outcome=\"success\"} 2"),
        "{metrics}"
    );
    let parsed = porter_test_support::parse_prometheus(&metrics).expect("valid exposition");
    assert_eq!(
        porter_test_support::metric(&parsed, "porter_config_last_reload_success", &[]),
        Some(1.0)
    );
}

#[test]
fn a_rejected_file_changes_nothing_and_names_every_problem() {
    let (path, reloader, relay) = start(&format!(
        "{HEAD}routes:\n- {{fqdn: a.test, type: simple, target: \"127.0.0.1:1\"}}\n"
    ));
    let before = routes_text(&relay);
    std::fs::write(
        &path,
        format!(
            "{HEAD}relya: {{}}\nroutes:\n\
             - {{fqdn: b.test, type: simple, target: \"127.0.0.1:2\"}}\n\
             - {{fqdn: c.test, type: simple, target: \"no-port\"}}\n"
        ),
    )
    .unwrap();
    let error = reloader.reload().expect_err("invalid file");
    let origin = path.display().to_string();
    assert_eq!(error.problems.len(), 2, "{error}");
    assert!(
        error.problems[0].starts_with(&format!("{origin}:2:1: relya: unknown key")),
        "{error}"
    );
    assert!(
        error.problems[1].starts_with(&format!("{origin}:5:")),
        "{error}"
    );
    assert_eq!(routes_text(&relay), before);

    let mut metrics = String::new();
    reloader.render_metrics(&mut metrics);
    let parsed = porter_test_support::parse_prometheus(&metrics).expect("valid exposition");
    let get = |name, labels: &[(&str, &str)]| porter_test_support::metric(&parsed, name, labels);
    assert_eq!(
        get("porter_config_reloads_total", &[("outcome", "failure")]),
        Some(1.0)
    );
    assert_eq!(
        get("porter_config_reloads_total", &[("outcome", "success")]),
        Some(0.0)
    );
    assert_eq!(get("porter_config_last_reload_success", &[]), Some(0.0));

    // A file that goes missing is a failure too; the routes stay.
    std::fs::remove_file(&path).unwrap();
    assert!(reloader.reload().is_err());
    assert_eq!(routes_text(&relay), before);
}

#[test]
fn a_change_of_udp_shards_needs_a_restart_and_still_applies_the_routes() {
    let (path, reloader, relay) = start(&format!(
        "{HEAD}routes:\n- {{fqdn: a.test, type: simple, target: \"127.0.0.1:1\"}}\n"
    ));
    std::fs::write(
        &path,
        "udp: {port: 7000, shards: 2}\nroutes:\n\
         - {fqdn: a.test, type: simple, target: \"127.0.0.1:11\"}\n",
    )
    .unwrap();
    let report = reloader.reload().expect("valid file");
    assert_eq!(report.needs_restart, ["udp"]);
    assert_eq!(report.changed, ["a.test"]);
    assert_eq!(routes_text(&relay), ["a.test 127.0.0.1:11"]);
}
