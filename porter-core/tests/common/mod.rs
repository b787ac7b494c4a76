//! Shared helpers for the integration tests of porter-core, porter-sim and porter-fuzz
//! (the last two include this file by path): test data loading.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

/// Path of a file in porter-core's `tests/data`, from porter-core itself, from
/// porter-sim (nested in porter-core) or from a sibling of porter-core (porter-fuzz).
pub fn data_path(name: &str) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    ["tests/data", "../tests/data", "../porter-core/tests/data"]
        .iter()
        .map(|dir| crate_dir.join(dir))
        .find(|dir| dir.join("README.md").is_file())
        .expect("porter-core/tests/data")
        .join(name)
}

/// Decodes hex, ignoring white space.
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).expect("valid hex")
}

/// Reads a `.hex` test-vector file.
pub fn hex_file(name: &str) -> Vec<u8> {
    hex(&std::fs::read_to_string(data_path(name)).expect("test vector file"))
}

/// One captured client datagram.
pub struct Captured {
    pub from: String,
    pub bytes: Vec<u8>,
}

/// Loads a capture: a JSON list of `{"from", "hex"}` datagrams in arrival order.
pub fn capture(name: &str) -> Vec<Captured> {
    let text = std::fs::read_to_string(data_path(name)).expect("capture file");
    let list: serde_json::Value = serde_json::from_str(&text).expect("capture JSON");
    list.as_array()
        .expect("capture is a list")
        .iter()
        .map(|d| Captured {
            from: d["from"].as_str().expect("from").to_owned(),
            bytes: hex(d["hex"].as_str().expect("hex")),
        })
        .collect()
}

/// Every capture, with the SNI and ALPN its README lists.
pub const CORPUS: &[(&str, &str, &str)] = &[
    ("chromium-156-h3.json", "game1.example.com", "h3"),
    (
        "chromium-156-h3-long-sni.json",
        "very-long-subdomain-name-for-testing.eu-central-1.games.example.com",
        "h3",
    ),
    ("aioquic-1.7-v1.json", "game2.example.com", "echo"),
    ("aioquic-1.7-v2.json", "v2.example.com", "echo"),
];
