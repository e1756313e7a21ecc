//! Failpoints for the fault-injection suite: named places on the durable
//! path (writes, fsyncs, renames, segment rolls, snapshot persists,
//! dead-letter appends and removals, NATS publish/ack/Nak/Term) where a test
//! can make the process crash, fail the operation, pause or sleep.
//!
//! Built on the [`fail`](https://docs.rs/fail) crate and compiled in only
//! with the `failpoints` cargo feature (the workspace's test builds enable
//! it; release builds carry nothing: [`hit`] is an empty inline function).
//! A process configures them from the `FAILPOINTS` environment variable
//! (`name=action;name=action`, the `fail` crate's syntax), read once at
//! start by [`setup`]; a test in the same process uses `fail::cfg`.
//!
//! Actions, beyond the `fail` crate's own (`off`, `panic`, `sleep(ms)`,
//! `pause`, `N*off->…` to fire on the N+1th hit):
//! - `return(crash)`: the process aborts right there: no destructor, no
//!   flush, no final snapshot, as a `kill -9` would leave it;
//! - `return` or `return(error)`: the operation fails with an I/O error
//!   naming the failpoint, for the caller to handle as a real one.
//!
//! The names in use are listed in docs/reliability.md.

/// Evaluates the failpoint `name`.
///
/// # Errors
/// An I/O error naming the failpoint when it is configured to `return`.
#[inline]
pub fn hit(name: &str) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    if let Some(arg) = fail::eval(name, |arg| arg) {
        if arg.as_deref() == Some("crash") {
            eprintln!("plugbus: failpoint {name}: crashing the process");
            std::process::abort();
        }
        return Err(std::io::Error::other(format!("failpoint {name}")));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
    Ok(())
}

/// Configures the failpoints named in `FAILPOINTS` (a no-op without the
/// `failpoints` feature). Call once at process start; the configuration
/// lives as long as the process.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// Whether failpoints are compiled in.
pub fn enabled() -> bool {
    cfg!(feature = "failpoints")
}
