//! The Agones allocator client against the test allocator, over real mutual TLS on
//! 127.0.0.1.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use porter_agones::proto::game_server_selector::GameServerState;
use porter_agones::proto::{ListAction, ListSelector};
use porter_agones::{
    AgonesClient, AgonesClientConfig, AllocateError, ClientConfigError, PemRole, TlsError,
    FLEET_LABEL,
};
use porter_test_support::{
    ServerCert, TestAllocator, TestGameServer, TestGameServerState, TestPki, SERVER_DNS_NAME,
};
use tokio::time::Instant;
use tonic::Code;

const NS: &str = "game-servers";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Game servers `<fleet>-0`, `<fleet>-1`, ... with `capacity` player slots each.
fn fleet(fleet: &str, servers: u16, capacity: i64) -> Vec<TestGameServer> {
    (0..servers)
        .map(|i| {
            TestGameServer::ready(&format!("{fleet}-{i}"), NS, fleet, addr(7000 + i), capacity)
        })
        .collect()
}

async fn start(cert: ServerCert, servers: Vec<TestGameServer>) -> TestAllocator {
    TestAllocator::start(&TestPki::generate(), cert, NS, servers)
        .await
        .expect("start test allocator")
}

fn client(config: AgonesClientConfig) -> AgonesClient {
    AgonesClient::new(config).expect("valid client config")
}

fn in_secs(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

#[tokio::test]
async fn sends_the_documented_request_and_reads_the_answer() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let client = client(allocator.client_config());

    let allocation = client
        .allocate("arena", "conn-1", in_secs(10))
        .await
        .unwrap();
    assert_eq!(allocation.game_server_name, "arena-0");
    assert_eq!(allocation.address, "127.0.0.1");
    assert_eq!(allocation.port, 7000);
    assert_eq!(allocation.socket_addr, Some(addr(7000)));

    let requests = allocator.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.namespace, NS);
    let fleet_label = HashMap::from([(FLEET_LABEL.to_owned(), "arena".to_owned())]);
    let players_free = HashMap::from([("players".to_owned(), ListSelector { min_available: 1 })]);
    let states: Vec<GameServerState> = request
        .game_server_selectors
        .iter()
        .map(|s| s.game_server_state())
        .collect();
    assert_eq!(states, [GameServerState::Allocated, GameServerState::Ready]);
    for selector in &request.game_server_selectors {
        assert_eq!(selector.match_labels, fleet_label);
        assert_eq!(selector.lists, players_free);
    }
    assert_eq!(
        request.lists,
        HashMap::from([(
            "players".to_owned(),
            ListAction {
                add_values: vec!["conn-1".to_owned()]
            }
        )])
    );
    assert_eq!(request, &client.request("arena", "conn-1"));
    assert_eq!(
        allocator.game_server("arena-0").unwrap().players(),
        ["conn-1"]
    );
}

#[tokio::test]
async fn without_slot_reservation_no_list_action_is_sent() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let mut config = allocator.client_config();
    config.reserve_player_slot = false;
    config.player_list = "seats".to_owned();
    let client = client(config);
    let request = client.request("arena", "conn-1");
    assert!(request.lists.is_empty());
    assert!(request
        .game_server_selectors
        .iter()
        .all(|s| s.lists.contains_key("seats")));
}

#[tokio::test]
async fn players_fill_one_game_server_before_the_next_then_the_fleet_is_full() {
    let mut servers = fleet("arena", 2, 2);
    servers.extend(fleet("other", 1, 10));
    let allocator = start(ServerCert::WithDnsName, servers).await;
    let client = client(allocator.client_config());

    let mut placed = Vec::new();
    for i in 0..4 {
        let allocation = client
            .allocate("arena", &format!("conn-{i}"), in_secs(10))
            .await
            .unwrap();
        placed.push(allocation.game_server_name);
    }
    assert_eq!(placed, ["arena-0", "arena-0", "arena-1", "arena-1"]);
    assert_eq!(
        allocator.game_server("arena-0").unwrap().players(),
        ["conn-0", "conn-1"]
    );
    assert_eq!(
        allocator.game_server("arena-1").unwrap().players(),
        ["conn-2", "conn-3"]
    );
    let other = allocator.game_server("other-0").unwrap();
    assert_eq!(other.state, TestGameServerState::Ready);
    assert!(other.players().is_empty());

    let before = allocator.requests().len();
    let deadline = in_secs(10);
    let error = client
        .allocate("arena", "conn-4", deadline)
        .await
        .unwrap_err();
    assert!(Instant::now() < deadline, "gave up only at the deadline");
    assert!(
        matches!(
            error,
            AllocateError::NoGameServerAvailable { attempts: 4, .. }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("no game server available in fleet `arena`"),
        "{text}"
    );
    assert!(text.contains("ResourceExhausted to 4 attempt(s)"), "{text}");
    assert_eq!(
        allocator.requests().len() - before,
        4,
        "1 attempt + 3 retries"
    );
    assert!(error.is_transient());
}

#[tokio::test]
async fn many_allocations_in_flight_over_one_client() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 4, 5)).await;
    let client = client(allocator.client_config());

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .allocate("arena", &format!("c{i}"), in_secs(10))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut tags = BTreeSet::new();
    for gs in allocator.game_servers() {
        assert_eq!(gs.players().len(), 5, "{} not full", gs.name);
        tags.extend(gs.players().iter().cloned());
    }
    assert_eq!(tags.len(), 20);
}

#[tokio::test]
async fn unavailable_and_aborted_are_retried() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let client = client(allocator.client_config());
    allocator.fail_next(2, Code::Unavailable);

    let allocation = client
        .allocate("arena", "conn-1", in_secs(10))
        .await
        .unwrap();
    assert_eq!(allocation.game_server_name, "arena-0");
    assert_eq!(allocator.requests().len(), 3);

    allocator.fail_next(1, Code::Aborted);
    client
        .allocate("arena", "conn-2", in_secs(10))
        .await
        .unwrap();
    assert_eq!(allocator.requests().len(), 5);
}

#[tokio::test]
async fn retries_stop_at_the_budget() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let mut config = allocator.client_config();
    config.max_retries = 2;
    let client = client(config);
    allocator.fail_next(10, Code::Unavailable);

    let error = client
        .allocate("arena", "conn-1", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AllocateError::Unavailable {
                code: Code::Unavailable,
                attempts: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(allocator.requests().len(), 3);
}

#[tokio::test]
async fn invalid_argument_is_not_retried() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let client = client(allocator.client_config());
    allocator.fail_next(1, Code::InvalidArgument);

    let error = client
        .allocate("arena", "conn-1", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AllocateError::Rejected {
                code: Code::InvalidArgument,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("refused the allocation from fleet `arena`"),
        "{error}"
    );
    assert!(!error.is_transient());
    assert_eq!(allocator.requests().len(), 1);
}

#[tokio::test]
async fn slow_allocator_fails_at_the_deadline() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let mut config = allocator.client_config();
    config.request_timeout = Duration::from_secs(30);
    let client = client(config);
    allocator.set_delay(Duration::from_secs(60));

    let start = Instant::now();
    let deadline = start + Duration::from_millis(500);
    let error = client
        .allocate("arena", "conn-1", deadline)
        .await
        .unwrap_err();
    let finished = Instant::now();
    assert!(
        matches!(error, AllocateError::Timeout { attempts: 1, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("timed out"), "{error}");
    assert!(finished >= deadline, "returned before the deadline");
    assert!(
        finished < deadline + Duration::from_secs(2),
        "returned long after the deadline"
    );
    assert!(allocator.wait_for_requests(1, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn each_attempt_is_bounded_by_the_request_timeout() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let mut config = allocator.client_config();
    config.request_timeout = Duration::from_millis(200);
    config.max_retries = 2;
    let client = client(config);
    allocator.set_delay(Duration::from_secs(60));

    let error = client
        .allocate("arena", "conn-1", in_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AllocateError::Timeout { attempts: 3, .. }),
        "{error:?}"
    );
    assert!(allocator.wait_for_requests(3, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_deadline_already_past_makes_no_request() {
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let client = client(allocator.client_config());
    let error = client
        .allocate("arena", "c", Instant::now())
        .await
        .unwrap_err();
    assert!(
        matches!(error, AllocateError::Timeout { attempts: 0, .. }),
        "{error:?}"
    );
    assert!(allocator.requests().is_empty());
}

#[tokio::test]
async fn client_certificate_the_allocator_does_not_trust() {
    let pki = TestPki::generate();
    let allocator = TestAllocator::start(&pki, ServerCert::WithDnsName, NS, fleet("arena", 1, 4))
        .await
        .unwrap();
    let mut config = allocator.client_config();
    config.client_cert_pem = pki.untrusted_client.cert_pem.clone().into();
    config.client_key_pem = pki.untrusted_client.key_pem.clone().into();
    let client = client(config);

    let error = client
        .allocate("arena", "c", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AllocateError::Tls(TlsError::ClientCertificateRejected { .. })
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(
        text.contains("rejected Porter's client certificate"),
        "{text}"
    );
    assert!(text.contains("does not trust it"), "{text}");
    assert!(!error.is_transient());
    assert!(allocator.requests().is_empty());
}

#[tokio::test]
async fn allocator_certificate_not_signed_by_the_configured_ca() {
    let pki = TestPki::generate();
    let allocator = TestAllocator::start(&pki, ServerCert::WithDnsName, NS, fleet("arena", 1, 4))
        .await
        .unwrap();
    let mut config = allocator.client_config();
    config.ca_cert_pem = pki.other_ca_pem.clone().into();
    let client = client(config);

    let error = client
        .allocate("arena", "c", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AllocateError::Tls(TlsError::ServerCertificateUntrusted { .. })
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("certificate"), "{text}");
    assert!(
        text.contains("is not signed by the configured CA"),
        "{text}"
    );
    assert!(allocator.requests().is_empty());
}

#[tokio::test]
async fn server_name_mismatch_names_both_sides() {
    // The certificate names only allocator.porter.test; the client checks 127.0.0.1.
    let allocator = start(ServerCert::WithDnsName, fleet("arena", 1, 4)).await;
    let mut config = allocator.client_config();
    config.tls_server_name = None;
    let error = client(config)
        .allocate("arena", "c", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AllocateError::Tls(TlsError::ServerNameMismatch { .. })
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("server name mismatch"), "{text}");
    assert!(text.contains("not valid for `127.0.0.1`"), "{text}");
    assert!(
        text.contains("it is valid for: allocator.porter.test)"),
        "{text}"
    );
    assert!(text.contains("set tls_server_name"), "{text}");

    // The certificate has no DNS name; the client checks one.
    let allocator = start(ServerCert::WithoutDnsName, fleet("arena", 1, 4)).await;
    let mut config = allocator.client_config();
    config.tls_server_name = Some(SERVER_DNS_NAME.to_owned());
    let error = client(config)
        .allocate("arena", "c", in_secs(10))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("server name mismatch"), "{text}");
    assert!(
        text.contains(&format!("not valid for `{SERVER_DNS_NAME}`")),
        "{text}"
    );
    assert!(text.contains("it is valid for: 127.0.0.1)"), "{text}");
}

#[tokio::test]
async fn certificate_without_dns_name_is_checked_against_the_ip() {
    let allocator = start(ServerCert::WithoutDnsName, fleet("arena", 1, 4)).await;
    let config = allocator.client_config();
    assert_eq!(config.tls_server_name, None);
    let allocation = client(config)
        .allocate("arena", "c", in_secs(10))
        .await
        .unwrap();
    assert_eq!(allocation.game_server_name, "arena-0");
}

#[tokio::test]
async fn insecure_skip_verify_is_off_by_default_and_skips_only_the_server_check() {
    let pki = TestPki::generate();
    let allocator = TestAllocator::start(&pki, ServerCert::WithDnsName, NS, fleet("arena", 1, 4))
        .await
        .unwrap();
    let mut config = allocator.client_config();
    assert!(!config.insecure_skip_verify);
    config.ca_cert_pem = Vec::new();
    config.tls_server_name = Some("anything.invalid".to_owned());
    assert!(matches!(
        AgonesClient::new(config.clone()),
        Err(ClientConfigError::InvalidPem {
            field: "ca_cert_pem",
            ..
        })
    ));
    config.insecure_skip_verify = true;
    let allocation = client(config)
        .allocate("arena", "c", in_secs(10))
        .await
        .unwrap();
    assert_eq!(allocation.game_server_name, "arena-0");

    // The allocator still checks Porter's certificate.
    let mut config = allocator.client_config();
    config.insecure_skip_verify = true;
    config.client_cert_pem = pki.untrusted_client.cert_pem.clone().into();
    config.client_key_pem = pki.untrusted_client.key_pem.clone().into();
    let error = client(config)
        .allocate("arena", "c", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AllocateError::Tls(TlsError::ClientCertificateRejected { .. })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn unreachable_allocator_is_unavailable_after_retries() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let pki = TestPki::generate();
    let config = AgonesClientConfig::new(
        NS,
        format!("127.0.0.1:{port}"),
        pki.client.cert_pem,
        pki.client.key_pem,
        pki.ca_pem,
    );
    let error = client(config)
        .allocate("arena", "c", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AllocateError::Unavailable { attempts: 4, .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains(&format!("127.0.0.1:{port} is unavailable")),
        "{error}"
    );
}

#[tokio::test]
async fn the_server_id_comes_from_the_named_label_else_the_annotation() {
    const NAME: &str = "porter.dev/server-id";
    let mut servers = fleet("arena", 3, 1);
    servers[0].labels.insert(NAME.to_owned(), "0a01".to_owned());
    servers[0]
        .annotations
        .insert(NAME.to_owned(), "ffff".to_owned());
    servers[1]
        .annotations
        .insert(NAME.to_owned(), "0a02".to_owned());
    let allocator = start(ServerCert::WithDnsName, servers).await;
    let mut config = allocator.client_config();
    config.server_id_label = Some(NAME.to_owned());
    let client = client(config);
    let mut found = Vec::new();
    for tag in ["a", "b", "c"] {
        let allocation = client.allocate("arena", tag, in_secs(10)).await.unwrap();
        found.push((allocation.game_server_name, allocation.server_id));
    }
    found.sort();
    assert_eq!(
        found,
        [
            ("arena-0".to_owned(), Some("0a01".to_owned())),
            ("arena-1".to_owned(), Some("0a02".to_owned())),
            ("arena-2".to_owned(), None),
        ]
    );

    // Without a configured name, none is read.
    let allocator = start(ServerCert::WithDnsName, {
        let mut servers = fleet("arena", 1, 1);
        servers[0].labels.insert(NAME.to_owned(), "0a01".to_owned());
        servers
    })
    .await;
    let allocation = AgonesClient::new(allocator.client_config())
        .unwrap()
        .allocate("arena", "a", in_secs(10))
        .await
        .unwrap();
    assert_eq!(allocation.server_id, None);
}

#[tokio::test]
async fn named_port_is_chosen_and_a_missing_one_is_reported() {
    let mut gs = TestGameServer::ready("arena-0", NS, "arena", addr(7000), 4);
    gs.ports = vec![("game".to_owned(), 7000), ("admin".to_owned(), 7001)];
    let allocator = start(ServerCert::WithDnsName, vec![gs]).await;

    let mut config = allocator.client_config();
    config.port_name = Some("admin".to_owned());
    let allocation = client(config)
        .allocate("arena", "a", in_secs(10))
        .await
        .unwrap();
    assert_eq!(allocation.port, 7001);
    assert_eq!(allocation.socket_addr, Some(addr(7001)));

    let mut config = allocator.client_config();
    config.port_name = Some("voice".to_owned());
    let error = client(config)
        .allocate("arena", "b", in_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(error, AllocateError::InvalidResponse { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("no port named `voice`"),
        "{error}"
    );
}

#[tokio::test]
async fn dns_name_in_the_answer_is_resolved() {
    let mut gs = TestGameServer::ready("arena-0", NS, "arena", addr(7000), 4);
    gs.address = "localhost".to_owned();
    let allocator = start(ServerCert::WithDnsName, vec![gs]).await;
    let allocation = client(allocator.client_config())
        .allocate("arena", "a", in_secs(10))
        .await
        .unwrap();
    assert_eq!(allocation.address, "localhost");
    let resolved = allocation.socket_addr.expect("localhost resolves");
    assert!(resolved.ip().is_loopback());
    assert_eq!(resolved.port(), 7000);
}

#[tokio::test]
async fn bad_settings_are_refused_with_the_field_named() {
    let pki = TestPki::generate();
    let good = AgonesClientConfig::new(
        NS,
        "127.0.0.1:1",
        pki.client.cert_pem.clone(),
        pki.client.key_pem.clone(),
        pki.ca_pem.clone(),
    );
    let refuse = |change: &dyn Fn(&mut AgonesClientConfig)| {
        let mut config = good.clone();
        change(&mut config);
        AgonesClient::new(config).unwrap_err().to_string()
    };
    assert!(refuse(&|c| c.client_cert_pem = b"junk".to_vec()).contains("client_cert_pem"));
    assert!(refuse(&|c| c.client_key_pem = b"junk".to_vec()).contains("client_key_pem"));
    assert!(refuse(&|c| c.ca_cert_pem = b"junk".to_vec()).contains("ca_cert_pem"));
    assert!(refuse(&|c| c.allocator_host = "http://a:1".into()).contains("`http://a:1`"));
    assert!(refuse(&|c| c.tls_server_name = Some("bad name".into())).contains("`bad name`"));
    // A key that is not the certificate's.
    let text = refuse(&|c| c.client_key_pem = pki.untrusted_client.key_pem.clone().into());
    assert!(text.contains("TLS"), "{text}");
}

#[test]
fn pem_files_are_read_and_a_missing_one_is_named() {
    let dir = std::env::temp_dir().join(format!("porter-agones-pem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = TestPki::generate();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, &pki.client.cert_pem).unwrap();
    std::fs::write(&key, &pki.client.key_pem).unwrap();
    let missing = dir.join("ca.crt");

    let error = AgonesClientConfig::from_pem_files(NS, "a:1", &cert, &key, &missing).unwrap_err();
    assert_eq!(error.role, PemRole::CaCertificate);
    let text = error.to_string();
    assert!(text.contains("Agones allocator CA certificate"), "{text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");

    std::fs::write(&missing, &pki.ca_pem).unwrap();
    let config = AgonesClientConfig::from_pem_files(NS, "a:1", &cert, &key, &missing).unwrap();
    assert_eq!(config.client_cert_pem, pki.client.cert_pem.as_bytes());
    assert_eq!(config.ca_cert_pem, pki.ca_pem.as_bytes());
    assert!(!format!("{config:?}").contains("PRIVATE KEY"));
    std::fs::remove_dir_all(&dir).unwrap();
}
