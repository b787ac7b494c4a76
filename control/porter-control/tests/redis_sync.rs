//! The Redis transport of the route sync against a real `redis-server` that requires a
//! password, on a database other than 0: both ways of configuring them (URL, separate keys)
//! load the routes stored there and store local changes there.

use std::time::{Duration, Instant};

use porter_control::sync::{LinkState, SharedRoute};
use porter_core::RouteName;
use porter_test_support::{host, RedisServer};

const PASSWORD: &str = "p@ss word";

/// A connection to database `db` of `server`, with the password in the URL.
async fn connection(server: &RedisServer, db: u32) -> redis::aio::MultiplexedConnection {
    let url = format!("redis://:p%40ss%20word@127.0.0.1:{}/{db}", server.port);
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn password_and_database_from_url_or_keys() {
    let server = RedisServer::start_with_password(PASSWORD);
    let mut db3 = connection(&server, 3).await;
    redis::cmd("HSET")
        .arg("porter:routes:simple")
        .arg("stored.test")
        .arg("127.0.0.1:7001")
        .query_async::<()>(&mut db3)
        .await
        .unwrap();
    let port = server.port;
    for section in [
        format!("redis: {{enabled: true, address: \"redis://:p%40ss%20word@127.0.0.1:{port}/3\"}}"),
        format!(
            "redis: {{enabled: true, address: \"127.0.0.1:{port}\", password: \"{PASSWORD}\", db: 3}}"
        ),
    ] {
        let config = porter_config::from_str(&section, "test.yaml").unwrap();
        let redis = config.redis.expect("redis enabled");
        let host = host();
        let sync = porter_control::redis_sync::start_tokio(&redis, host.clone()).unwrap();
        wait_until("the load", || sync.status().state == LinkState::Synced).await;
        let stored = RouteName::parse("stored.test").unwrap();
        assert!(
            host.route(&stored).is_some(),
            "{section}"
        );

        let shared = SharedRoute::from_entry(
            porter_control::sync::RouteType::Simple,
            "local.test",
            "127.0.0.1:7002",
        )
        .unwrap();
        sync.set_route(shared.to_route().unwrap(), shared).unwrap();
        wait_until("the write", || sync.status().outbox == 0).await;
        let value: Option<String> = redis::cmd("HGET")
            .arg("porter:routes:simple")
            .arg("local.test")
            .query_async(&mut db3)
            .await
            .unwrap();
        assert_eq!(value.as_deref(), Some("127.0.0.1:7002"), "{section}");
        let mut db0 = connection(&server, 0).await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut db0).await.unwrap();
        assert!(keys.is_empty(), "database 0 was written: {keys:?}");
        assert!(sync.remove_route(&RouteName::parse("local.test").unwrap()).is_some());
        wait_until("the delete", || sync.status().outbox == 0).await;
    }
}

#[tokio::test]
async fn a_wrong_password_keeps_the_link_down_with_the_reason() {
    let server = RedisServer::start_with_password(PASSWORD);
    let section = format!(
        "redis: {{enabled: true, address: \"127.0.0.1:{}\", password: wrong}}",
        server.port
    );
    let config = porter_config::from_str(&section, "test.yaml").unwrap();
    let sync = porter_control::redis_sync::start_tokio(&config.redis.unwrap(), host()).unwrap();
    wait_until("the link to fail", || {
        sync.status().state == LinkState::Down
    })
    .await;
    let reason = sync.status().reason.unwrap_or_default();
    assert!(reason.contains("Redis unavailable"), "{reason}");
}
