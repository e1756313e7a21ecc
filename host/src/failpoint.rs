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

/// The argument of the failpoint `name` when it is configured to
/// `return(ARG)`: a value a test sets in place of a constant (a lease, say).
/// `None` when it is not configured, or without the `failpoints` feature.
pub fn value(name: &str) -> Option<String> {
    #[cfg(feature = "failpoints")]
    return fail::eval(name, |arg| arg).flatten();
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Configures the failpoints named in `FAILPOINTS` (`name=action;…`).
/// Call once at process start; the configuration lives as long as the
/// process. Without the `failpoints` feature a set `FAILPOINTS` is ignored
/// with a warning on stderr.
///
/// # Errors
/// The entry of `FAILPOINTS` that is not `name=action`, or whose action the
/// `fail` crate refuses, with the reason.
pub fn setup() -> Result<(), String> {
    let Some(spec) = std::env::var_os("FAILPOINTS") else {
        return Ok(());
    };
    if !enabled() {
        eprintln!(
            "plugbus: FAILPOINTS is set but this build has no failpoints (build with `--features failpoints`, \
             as the workspace's tests do); ignored"
        );
        return Ok(());
    }
    let spec = spec.into_string().map_err(|_| "FAILPOINTS is not UTF-8".to_owned())?;
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, actions)) = entry.split_once('=') else {
            return Err(format!("FAILPOINTS: `{entry}` is not name=action"));
        };
        configure(name.trim(), actions.trim()).map_err(|e| format!("FAILPOINTS: failpoint `{name}`: {e}"))?;
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
fn configure(name: &str, actions: &str) -> Result<(), String> {
    fail::cfg(name, actions)
}

#[cfg(not(feature = "failpoints"))]
fn configure(_name: &str, _actions: &str) -> Result<(), String> {
    Ok(())
}

/// Whether failpoints are compiled in.
pub fn enabled() -> bool {
    cfg!(feature = "failpoints")
}
