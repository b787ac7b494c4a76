//! Replays the committed fuzz inputs through the fuzz targets' own logic
//! (`porter_fuzz`), so `cargo test` checks every input the fuzzer once found
//! without cargo-fuzz: `fuzz/corpus/<target>/*` (seeds and the minimised corpus) and
//! `fuzz/regressions/<target>/*` (inputs that once broke an invariant).
//!
//! `write_seed_corpus` (ignored) regenerates the seeds from the real captures and RFC
//! vectors in `porter-core/tests/data`:
//! `cargo test -p porter-fuzz --test corpus_replay -- --ignored write_seed_corpus`.

#[path = "../../porter-core/tests/common/mod.rs"]
mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use porter_core::crypto_stream::CryptoStream;
use porter_core::frame::{InitialFrame, InitialFrames};
use porter_core::initial::{Keys, Side};
use porter_core::wire::{LongType, Packet, Packets};
use porter_fuzz::{join_datagrams, RAW, TARGETS};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_committed_fuzz_input_replays_clean() {
    let mut failures = Vec::new();
    for &(name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "no corpus committed for fuzz target {name}"
        );
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for file in corpus.iter().chain(&regressions) {
            let data = fs::read(file).expect("corpus file");
            if catch_unwind(AssertUnwindSafe(|| target(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    assert!(failures.is_empty(), "fuzz inputs that fail: {failures:#?}");
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let manifest = fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for &(name, _) in TARGETS {
        let source = fuzz_dir().join(format!("fuzz_targets/{name}.rs"));
        let text = fs::read_to_string(&source).expect("fuzz target source");
        assert!(text.contains(&format!("porter_fuzz::{name}(")), "{name}");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name}");
    }
}

/// The ClientHello of a capture's first flight, read with porter's own building blocks.
fn reassembled_hello(datagrams: &[Vec<u8>]) -> Vec<u8> {
    let mut stream = CryptoStream::new(1 << 16);
    let mut scratch = Vec::new();
    for d in datagrams {
        for packet in Packets::new(d) {
            let Ok(Packet::Long(p)) = packet else {
                continue;
            };
            if p.ty != LongType::Initial {
                continue;
            }
            let keys = Keys::initial(p.version, p.dcid, Side::Client);
            let Ok(plain) = keys.decrypt(&p, None, &mut scratch) else {
                continue;
            };
            for frame in InitialFrames::new(plain.payload) {
                if let Ok(InitialFrame::Crypto { offset, data }) = frame {
                    stream.insert(offset, data).expect("capture fits");
                }
            }
        }
    }
    let have = stream.contiguous();
    let len = 4 + usize::from(have[1]) * 65536 + usize::from(have[2]) * 256 + usize::from(have[3]);
    have[..len].to_vec()
}

#[test]
#[ignore = "writes the seed corpus into fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let mut flights: Vec<(String, Vec<Vec<u8>>)> = common::CORPUS
        .iter()
        .map(|&(file, _, _)| {
            let name = file.trim_end_matches(".json").to_owned();
            let datagrams = common::capture(file).into_iter().map(|d| d.bytes).collect();
            (name, datagrams)
        })
        .collect();
    for file in [
        "rfc9001-a2-client-initial.hex",
        "rfc9369-a2-client-initial.hex",
    ] {
        let name = file.trim_end_matches(".hex").to_owned();
        flights.push((name, vec![common::hex_file(file)]));
    }

    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(format!("seed-{name}")), data).expect("seed file");
    };
    for (name, datagrams) in &flights {
        let joined = join_datagrams(datagrams.iter().map(Vec::as_slice));
        write("initial", name, &joined);
        write("relay", name, &joined);
        for (i, d) in datagrams.iter().enumerate().take(2) {
            write("datagram", &format!("{name}-{i}"), d);
        }
        let hello = reassembled_hello(datagrams);
        let mut raw = vec![RAW];
        raw.extend_from_slice(&hello);
        write("client_hello", &format!("{name}-raw"), &raw);
        let mut wrapped = vec![1];
        wrapped.extend_from_slice(&hello[4..]);
        write("client_hello", &format!("{name}-wrapped"), &wrapped);
    }
}
