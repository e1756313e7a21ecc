//! `plugbus dlq list`: the dead letters recorded in a log directory.

use std::path::PathBuf;
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
}

pub fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List { dir, plugin, json } => {
            if !dir.is_dir() {
                anyhow::bail!("event log {}: no such directory", dir.display());
            }
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
                        l.reason
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
