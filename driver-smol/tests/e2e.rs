//! The shared end-to-end suite (`porter-e2e`) against the `porter-smol` binary.

porter_e2e::suite!(env!("CARGO_BIN_EXE_porter-smol"), "porter-smol");
