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
    if let Err(e) = plugbus::failpoint::setup() {
        eprintln!("plugbus: {e}");
        return ExitCode::from(2);
    }
    let args = cli::Args::parse();
    cli::logging::init(args.quiet, args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("plugbus: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(cli::dispatch(args.command)) {
        Ok(code) => code,
        Err(e) => {
            // An error may quote a name, a path or a plugin's own text:
            // no escape sequence of theirs reaches the terminal.
            eprintln!("plugbus: {}", plugbus::text::printable_lines(&cli::error_text(&e)));
            ExitCode::FAILURE
        }
    };
    // What is left on blocking threads once the command is done is
    // abandoned work: a plugin still compiling when `serve` was stopped
    // during start-up (seconds for an interpreted one). A short wait lets a
    // cache file being written finish; dropping the runtime would wait for
    // the compile itself.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}
