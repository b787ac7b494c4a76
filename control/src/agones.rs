//! Agones allocator client (gRPC over mutual TLS).
