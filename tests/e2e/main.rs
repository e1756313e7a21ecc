//! End-to-end tests: real components built from `plugins/`, real files in
//! temp directories, a real tokio runtime and the real `plugbus` binary.
//!
//! One test binary with a module per area rather than one binary per file:
//! each binary links all of wasmtime, and seven of them cost minutes of link
//! time and gigabytes of disk on a 2-core CI machine.
//!
//! Run one area with `cargo test -p plugbus-tests -- isolation::`.

mod support;

mod batching;
mod cache;
mod cli;
mod cloudevents;
mod dashboard;
mod durable;
mod exactly_once;
mod fleet;
mod http;
mod isolation;
mod languages;
mod loading;
mod log_faults;
mod native;
mod nats;
mod oci;
mod otel_plugins;
mod otlp;
mod projections;
mod reliability;
mod schemas;
mod startup;
mod trust;
mod watch;
