//! `plugbus dlq list`: the dead letters recorded in a log directory.

use std::path::PathBuf;

use super::CacheArgs;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters: the events that made a plugin fail hard, oldest first.
    List {
        /// The log directory (as given to `--log`).
        #[arg(long = "log", value_name = "DIR")]
        dir: PathBuf,
        /// Only this plugin's.
        #[arg(long, value_name = "NAME")]
        plugin: Option<String>,
        /// One JSON object per line: plugin, failure, reason, failed_at_unix_nanos, event.
        #[arg(long)]
        json: bool,
    },
    /// Send a plugin's dead letters to it again (its fixed version, from DIR), on a bus
    /// over the log; those that fail again stay. For a running `plugbus serve`, use
    /// POST /plugins/NAME/dead-letters/redrive instead (the log is locked by it).
    Redrive {
        /// The log directory.
        #[arg(long = "log", value_name = "DIR")]
        dir: PathBuf,
        /// Directory holding the plugin's (fixed) `NAME.wasm`.
        #[arg(long, value_name = "DIR")]
        plugins: PathBuf,
        /// The plugin.
        #[arg(long, value_name = "NAME")]
        plugin: String,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

pub async fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::Redrive {
            dir,
            plugins,
            plugin,
            cache,
        } => {
            super::log::check_dir(&dir)?;
            let bus = cache.apply(plugbus::Bus::builder()).log_dir(&dir).build().await?;
            bus.load_plugin(plugins.join(format!("{plugin}.wasm"))).await?;
            let report = bus.redrive(&plugin).await;
            bus.flush().await;
            bus.shutdown().await;
            let report = report.unwrap_or_default();
            println!("{}", serde_json::to_string(&report)?);
            eprintln!(
                "plugbus: {plugin}: {} redriven, {} ok, {} errors, {} failed again",
                report.redriven, report.ok, report.errors, report.failed
            );
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::List { dir, plugin, json } => {
            super::log::check_dir(&dir)?;
            let letters = plugbus::read_dead_letters(&dir, plugin.as_deref()).map_err(anyhow::Error::msg)?;
            for l in &letters {
                if json {
                    println!("{}", serde_json::to_string(l)?);
                } else {
                    println!(
                        "{}  {:<16} {:<14} seq {:<8} {:<24} {}",
                        super::log::rfc3339(l.failed_at_unix_nanos),
                        l.plugin,
                        l.failure,
                        l.event.seq,
                        l.event.name,
                        // One line per letter: a panic message may hold several.
                        l.reason.replace('\n', " ")
                    );
                }
            }
            if !json {
                eprintln!("{} dead letters", letters.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
