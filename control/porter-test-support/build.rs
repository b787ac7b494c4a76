//! Generates the Agones allocator's gRPC server side from porter-agones'
//! `proto/allocation.proto`, for the test allocator. The message types are porter-agones' own
//! (`extern_path`), so requests and answers are the very types Porter's client sends.
//! Compiled by `protox` (pure Rust): no system `protoc`.

use std::error::Error;

const PROTO_DIR: &str = "../porter-agones/proto";
const PROTO: &str = "../porter-agones/proto/allocation.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], [PROTO_DIR])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        .extern_path(".allocation", "::porter_agones::proto")
        .compile_fds(descriptors)?;
    Ok(())
}
