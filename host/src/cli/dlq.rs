//! `plugbus dlq`: the dead letters recorded in a log directory or a NATS
//! stream's bucket (list), and a redrive over a log.

use std::path::PathBuf;

use super::{CacheArgs, HistoryArgs};
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters: the events that made a plugin fail hard, oldest first.
    /// With `--nats URL`, the stream's dead letters: every host's, from its
    /// bucket (`<STREAM>_DEAD_LETTERS`).
    List {
        #[command(flatten)]
        history: HistoryArgs,
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
            // A name, not a path: `../elsewhere/x` would load a plugin from
            // outside the directory given.
            if !plugbus::manifest::valid_plugin_name(&plugin) {
                anyhow::bail!(
                    "`{}` is not a plugin name (the file name in {}, without `.wasm`)",
                    plugbus::text::printable(&plugin),
                    plugbus::text::printable_path(&plugins)
                );
            }
            super::log::check_dir(&dir)?;
            let bus = cache.apply(plugbus::Bus::builder()).log_dir(&dir).build().await?;
            bus.load_plugin(plugins.join(format!("{plugin}.wasm"))).await?;
            let report = bus.redrive(&plugin).await;
            bus.flush().await;
            bus.shutdown().await;
            let report = report.unwrap_or_default();
            outln!("{}", serde_json::to_string(&report)?)?;
            eprintln!(
                "plugbus: {plugin}: {} redriven, {} ok, {} errors, {} failed again, {} not delivered",
                report.redriven, report.ok, report.errors, report.failed, report.dropped
            );
            // Letters that are letters still: not a success a script could
            // take for "done".
            Ok(if report.failed > 0 || report.dropped > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        DlqCommand::List { history, plugin, json } => {
            let letters = history.dead_letters(plugin.as_deref()).await?;
            for l in &letters {
                if json {
                    outln!("{}", serde_json::to_string(l)?)?;
                } else {
                    outln!(
                        "{}  {:<16} {:<14} seq {:<8} {:<24} {}",
                        super::log::rfc3339(l.failed_at_unix_nanos),
                        l.plugin,
                        l.failure,
                        l.event.seq,
                        l.event.name,
                        // One line per letter: a panic message may hold several.
                        l.reason.replace('\n', " ")
                    )?;
                }
            }
            if !json {
                eprintln!("{}", super::units::counted(letters.len() as u64, "dead letter"));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
