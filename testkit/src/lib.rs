//! # feedline-testkit
//!
//! What integration tests share: starting the `feedline` binary as a real process (so tests can
//! SIGKILL it), free ports on 127.0.0.1, and waiting with deadlines; [`otlp`] is a real OTLP trace
//! receiver (gRPC and HTTP/protobuf) that records every span. Every helper is bounded in
//! time; servers and processes are killed when their handle drops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cosmos;
pub mod couchdb;
pub mod otlp;
pub mod pipeline;
pub mod process;
pub mod tansu;

pub use process::{free_port, wait_until, Feedline};
