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
