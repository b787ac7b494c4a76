//! The Redis transport of the route sync against a real `redis-server` that requires a
//! password, on a database other than 0: both ways of configuring them (URL, separate keys)
//! load the routes stored there and store local changes there.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use control::host::{RelayHost, SharedHost};
use control::sync::{LinkState, SharedRoute};
use porter_core::{Relay, RelayConfig, RouteName};

const PASSWORD: &str = "p@ss word";

/// A `redis-server` with a password, stopped on drop.
struct Server {
    port: u16,
    child: Child,
}

impl Server {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir: PathBuf =
            std::env::temp_dir().join(format!("porter-redis-sync-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                PASSWORD,
            ])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server ({e}); scripts/test installs it"));
        let server = Self { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    async fn connection(&self, db: u32) -> redis::aio::MultiplexedConnection {
        let url = format!("redis://:p%40ss%20word@127.0.0.1:{}/{db}", self.port);
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host() -> SharedHost {
    RelayHost::new(Relay::new(RelayConfig::default()), false).shared()
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
    let server = Server::start();
    let mut db3 = server.connection(3).await;
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
        let config = control::config::from_str(&section, "test.yaml").unwrap();
        let redis = config.redis.expect("redis enabled");
        let host = host();
        let sync = control::redis_sync::start_tokio(&redis, host.clone()).unwrap();
        wait_until("the load", || sync.status().state == LinkState::Synced).await;
        let stored = RouteName::parse("stored.test").unwrap();
        assert!(
            RelayHost::lock(&host).relay().route(&stored).is_some(),
            "{section}"
        );

        let shared = SharedRoute::from_entry(
            control::sync::RouteType::Simple,
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
        let mut db0 = server.connection(0).await;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut db0).await.unwrap();
        assert!(keys.is_empty(), "database 0 was written: {keys:?}");
        assert!(sync.remove_route(&RouteName::parse("local.test").unwrap()).is_some());
        wait_until("the delete", || sync.status().outbox == 0).await;
    }
}

#[tokio::test]
async fn a_wrong_password_keeps_the_link_down_with_the_reason() {
    let server = Server::start();
    let section = format!(
        "redis: {{enabled: true, address: \"127.0.0.1:{}\", password: wrong}}",
        server.port
    );
    let config = control::config::from_str(&section, "test.yaml").unwrap();
    let sync = control::redis_sync::start_tokio(&config.redis.unwrap(), host()).unwrap();
    wait_until("the link to fail", || {
        sync.status().state == LinkState::Down
    })
    .await;
    let reason = sync.status().reason.unwrap_or_default();
    assert!(reason.contains("Redis unavailable"), "{reason}");
}
