//! The `plugbus` command: a thin argument layer over the library.
//!
//! Exit codes: 0 success; 1 a runtime error (missing plugin directory,
//! unreadable input, an invalid plugin given to `check`); 2 bad arguments.

mod cli;

/// Events are allocated by the emitting thread and freed by another (the log
/// writer, a plugin worker); mimalloc frees across threads without the arena
/// lock contention glibc's malloc showed in profiles of the log writer.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    plugbus::failpoint::setup();
    let args = cli::Args::parse();
    cli::init_tracing(args.quiet, args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugbus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::dispatch(args.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plugbus: {}", cli::error_text(&e));
            ExitCode::FAILURE
        }
    }
}
