//! Configuration files the tests load as they are.

/// The original project's `config.yaml`, byte for byte.
pub const ORIGINAL_CONFIG: &str = r#"udp: {port: 7777, log_requests: true}
api: {port: 8080, log_requests: false}
redis: {enabled: false, address: "localhost:6379", password: "", db: 0, channel: "porter_routes"}
agones: {enabled: false, namespace: default, allocator_host: "agones-allocator.agones-system.svc:443", allocator_client_cert: /certs/client.crt, allocator_client_key: /certs/client.key, allocator_ca_cert: /certs/ca.crt}
routes:
  - {fqdn: game1.example.com, type: simple, target: "10.0.0.5:7777"}
  - {fqdn: game2.example.com, type: agones, target: my-fleet}
"#;
