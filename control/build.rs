//! Generates the Agones allocator gRPC client and server from `proto/allocation.proto`.
//!
//! The proto is compiled to a `FileDescriptorSet` by `protox` (pure Rust), so building
//! Porter needs no system `protoc`.

use std::error::Error;

const PROTO: &str = "proto/allocation.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
