//! Which log lines the command line prints: the level of `-q`, `-v` or
//! neither (or `RUST_LOG`), and caps on a few crates that say too much at
//! their most verbose levels. A cap only ever removes lines: it never lets
//! through a line the level would not.

use std::io::IsTerminal as _;

use tracing::Metadata;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, FilterFn, LevelFilter};
use tracing_subscriber::layer::Filter;
use tracing_subscriber::prelude::*;

use super::progress;

/// Crates held at or below a level unless `RUST_LOG` names them:
/// - at `trace`, wasmtime's WASI bindings log every host call's arguments:
///   a plugin's request URL, headers and body, which can hold its secrets;
/// - at `debug` or `trace`, the code generator's passes describe every
///   instruction of every function compiled: millions of lines that make one
///   plugin's first compile take half a minute instead of half a second;
/// - at `debug`, the NATS client logs its connect options, the password of
///   a `nats://user:password@…` URL included.
const CAPS: [(&str, LevelFilter); 7] = [
    ("async_nats", LevelFilter::INFO),
    ("wasmtime_wasi_http", LevelFilter::DEBUG),
    ("wasmtime_wasi", LevelFilter::DEBUG),
    ("cranelift_codegen", LevelFilter::INFO),
    ("cranelift_frontend", LevelFilter::INFO),
    ("regalloc2", LevelFilter::INFO),
    ("wasmtime_cranelift", LevelFilter::INFO),
];

/// Installs the process's log output: compact lines on stderr, and the
/// compile spinner when stderr is a terminal.
pub fn init(quiet: bool, verbose: bool) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours on a terminal only: a log file or journal (and anything
        // that greps it for `plugin=…`) gets plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
        .with_target(false)
        .compact()
        .with_filter(filter(quiet, verbose, rust_log.as_deref()));
    // The spinner sees `compile` spans whatever the log level; only on a terminal.
    let spinner = std::io::stderr().is_terminal().then(progress::CompileSpinner::default);
    tracing_subscriber::registry().with(fmt).with(spinner).init();
}

/// The filter for the flags, or for `rust_log` (the value of `RUST_LOG`)
/// when it is set and valid, with [`CAPS`] on top.
fn filter<S: tracing::Subscriber>(quiet: bool, verbose: bool, rust_log: Option<&str>) -> impl Filter<S> + use<S> {
    let default = if quiet {
        "warn"
    } else if verbose {
        "debug,wasmtime=info"
    } else {
        "info"
    };
    let levels = rust_log
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let caps: Vec<(&'static str, LevelFilter)> = CAPS
        .into_iter()
        .filter(|(krate, _)| !rust_log.is_some_and(|spec| names(spec, krate)))
        .collect();
    let capped = FilterFn::new(move |meta: &Metadata<'_>| {
        caps.iter()
            .all(|(krate, cap)| !in_crate(meta.target(), krate) || meta.level() <= cap)
    })
    // A cap never raises the level: the most verbose the pair lets through
    // is what the levels say (the hint keeps `log` records of disabled
    // levels from reaching the filter at all).
    .with_max_level_hint(LevelFilter::TRACE);
    levels.and(capped)
}

/// Whether `target` is in crate `krate` (the crate itself or one of its
/// modules; `wasmtime_wasi_http` is not in `wasmtime_wasi`).
fn in_crate(target: &str, krate: &str) -> bool {
    target
        .strip_prefix(krate)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// Whether a `RUST_LOG` value has a directive for crate `krate` (or one of
/// its modules).
fn names(spec: &str, krate: &str) -> bool {
    spec.split(',').any(|directive| {
        let target = directive.split(['=', '[']).next().unwrap_or("").trim();
        in_crate(target, krate)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::{Level, Subscriber};
    use tracing_subscriber::layer::{Context, Layer};

    use super::*;

    /// Records the target and level of each event it is given.
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let meta = event.metadata();
            let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
            seen.push(format!("{} {}", meta.target(), meta.level()));
        }
    }

    /// The lines, out of a fixed set, that the flags or `rust_log` print.
    fn printed(quiet: bool, verbose: bool, rust_log: Option<&str>) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let layer = Seen(seen.clone()).with_filter(filter(quiet, verbose, rust_log));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::event!(target: "plugbus::bus", Level::WARN, "w");
            tracing::event!(target: "plugbus::bus", Level::INFO, "i");
            tracing::event!(target: "plugbus::bus", Level::DEBUG, "d");
            tracing::event!(target: "wasmtime_wasi_http::p2", Level::DEBUG, "d");
            tracing::event!(target: "wasmtime_wasi_http::p2", Level::TRACE, "t");
            tracing::event!(target: "wasmtime_wasi::p2", Level::TRACE, "t");
            tracing::event!(target: "cranelift_codegen::isa", Level::INFO, "i");
            tracing::event!(target: "cranelift_codegen::isa", Level::DEBUG, "d");
            tracing::event!(target: "async_nats::connector", Level::DEBUG, "d");
        });
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.clone()
    }

    #[test]
    fn a_cap_never_lets_through_what_the_level_would_not() {
        // `-q` prints warnings only: before the caps became a filter of their
        // own, `wasmtime_wasi_http=debug` was added as a directive and turned
        // that crate's debug lines on under `-q` and by default.
        assert_eq!(printed(true, false, None), ["plugbus::bus WARN"]);
        assert_eq!(
            printed(false, false, None),
            ["plugbus::bus WARN", "plugbus::bus INFO", "cranelift_codegen::isa INFO"]
        );
    }

    #[test]
    fn the_caps_hold_at_the_most_verbose_levels_unless_rust_log_names_the_crate() {
        let all = printed(false, false, Some("trace"));
        assert!(all.contains(&"plugbus::bus DEBUG".to_owned()), "{all:?}");
        assert!(all.contains(&"wasmtime_wasi_http::p2 DEBUG".to_owned()), "{all:?}");
        assert!(all.contains(&"cranelift_codegen::isa INFO".to_owned()), "{all:?}");
        for capped in [
            "wasmtime_wasi_http::p2 TRACE",
            "wasmtime_wasi::p2 TRACE",
            "cranelift_codegen::isa DEBUG",
        ] {
            assert!(!all.contains(&capped.to_owned()), "{capped} printed: {all:?}");
        }
        // Named, a crate gets what RUST_LOG asks; naming `wasmtime_wasi_http`
        // does not name `wasmtime_wasi`.
        let named = printed(false, false, Some("trace,wasmtime_wasi_http=trace"));
        assert!(named.contains(&"wasmtime_wasi_http::p2 TRACE".to_owned()), "{named:?}");
        assert!(!named.contains(&"wasmtime_wasi::p2 TRACE".to_owned()), "{named:?}");
        // `-v`: debug, with wasmtime (and its WASI crates) at info.
        let verbose = printed(false, true, None);
        assert!(verbose.contains(&"plugbus::bus DEBUG".to_owned()), "{verbose:?}");
        assert!(!verbose.iter().any(|l| l.starts_with("wasmtime")), "{verbose:?}");
        assert!(
            !verbose.contains(&"cranelift_codegen::isa DEBUG".to_owned()),
            "{verbose:?}"
        );
        // The NATS client's connect options hold a URL's password.
        assert!(!verbose.iter().any(|l| l.starts_with("async_nats")), "{verbose:?}");
        assert!(!all.iter().any(|l| l.starts_with("async_nats")), "{all:?}");
    }

    #[test]
    fn a_crate_is_matched_by_its_name_not_a_prefix() {
        assert!(in_crate("wasmtime_wasi", "wasmtime_wasi"));
        assert!(in_crate("wasmtime_wasi::p2::host", "wasmtime_wasi"));
        assert!(!in_crate("wasmtime_wasi_http::p2", "wasmtime_wasi"));
        assert!(names("info,wasmtime_wasi_http[span]=trace", "wasmtime_wasi_http"));
        assert!(!names("info,wasmtime_wasi_http=trace", "wasmtime_wasi"));
    }
}
