//! From a loaded configuration to the settings a driver runs.

use porter_config::Secret;
use porter_control::setup::Settings;
use porter_core::{RouteName, RouteTarget};
use porter_test_support::ORIGINAL_CONFIG as ORIGINAL;

#[test]
fn original_sample_runs() {
    let config = porter_config::from_str(ORIGINAL, "original.yaml").expect("loads");
    assert!(
        !config.warnings.is_empty(),
        "an agones route with agones disabled deserves a warning"
    );
    let settings = Settings::from_config_with_env(&config, |_| None).expect("settings");
    assert_eq!(settings.listen, vec!["0.0.0.0:7777".parse().unwrap()]);
    assert!(settings.agones.is_none());
    let relay = settings.host_settings().new_relay().expect("relay");
    let routes = relay.routes();
    assert_eq!(routes.len(), 2);
    assert_eq!(
        routes[0].name,
        RouteName::parse("game1.example.com").unwrap()
    );
    assert_eq!(
        routes[0].target,
        RouteTarget::Simple(vec![porter_core::BackendAddr(
            "10.0.0.5:7777".parse().unwrap()
        )])
    );
    assert!(matches!(&routes[1].target, RouteTarget::Agones { fleet } if &**fleet == "my-fleet"));
}

#[test]
fn api_token_comes_from_the_environment() {
    let text = "api: {port: 8080, token_env: MY_TOKEN}\nroutes: []\n";
    let config = porter_config::from_str(text, "t.yaml").unwrap();
    let settings = Settings::from_config_with_env(&config, |name| {
        (name == "MY_TOKEN").then(|| "s3cret".to_owned())
    })
    .unwrap();
    assert_eq!(
        settings.api.unwrap().token.as_ref().map(Secret::expose),
        Some("s3cret")
    );
}

#[test]
fn quic_lb_configurations_and_path_limits_reach_the_relay() {
    let text = "relay: {max_paths_per_session: 3, path_idle_timeout: 2s}\n\
                quic_lb:\n  - {config_id: 1, server_id_len: 2, nonce_len: 14, \
                key: 000102030405060708090a0b0c0d0e0f, servers: {\"0a0b\": \"10.0.0.5:4433\"}}\n";
    let config = porter_config::from_str(text, "t.yaml").unwrap();
    let settings = Settings::from_config_with_env(&config, |_| None).unwrap();
    let relay = settings.host_settings().new_relay().expect("relay");
    let c = relay.config();
    assert_eq!(c.max_paths_per_session, 3);
    assert_eq!(c.path_idle_timeout, std::time::Duration::from_secs(2));
    let lb = &c.quic_lb;
    assert!(lb.is_enabled());
    let configs: Vec<_> = lb.configs().collect();
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0].mode(), porter_core::quic_lb::Mode::SinglePass);
    // A CID the backend would issue routes to it.
    let cid = configs[0].encode(&[0x0a, 0x0b], &[7; 14]).unwrap();
    let (backend, len) = lb.route(cid.as_bytes()).unwrap();
    assert_eq!(backend.0, "10.0.0.5:4433".parse().unwrap());
    assert_eq!(len, 17);
}

#[test]
fn udp_transparent_reaches_the_data_plane_and_is_off_by_default() {
    let settings = |text: &str| {
        let config = porter_config::from_str(text, "t.yaml").unwrap();
        Settings::from_config_with_env(&config, |_| None).unwrap()
    };
    assert!(!settings("udp: {port: 7777}\n").host_settings().transparent);
    assert!(
        settings("udp: {port: 7777, transparent: true}\n")
            .host_settings()
            .transparent
    );
    // Not a boolean: an error naming the key and its place.
    let e = porter_config::from_str("udp: {transparent: yes}\n", "t.yaml").unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("t.yaml:1:") && text.contains("udp.transparent"),
        "{text}"
    );
}

#[test]
fn shards_reach_the_host_settings_auto_as_the_available_cores() {
    let settings = |text: &str| {
        let config = porter_config::from_str(text, "t.yaml").unwrap();
        Settings::from_config_with_env(&config, |_| None).unwrap()
    };
    let two = settings("udp: {shards: 2}\n");
    assert_eq!((two.shards, two.host_settings().shards), (2, 2));
    let cores = std::thread::available_parallelism().unwrap().get();
    for text in ["", "udp: {shards: auto}\n"] {
        let auto = settings(text);
        assert_eq!(
            auto.shards,
            cores.min(porter_config::Shards::MAX),
            "{text:?}"
        );
        assert_eq!(auto.host_settings().shards, auto.shards);
    }
}
