//! `plugbus query`: rebuild a plugin's read model from an event log (or a
//! NATS stream) and ask it one question (event sourcing's "fix the
//! projection, rebuild it").

use std::process::ExitCode;

use super::CacheArgs;

pub async fn query(
    replay: plugbus::Replay,
    name: &str,
    request: &str,
    pretty: bool,
    cache: &CacheArgs,
) -> anyhow::Result<ExitCode> {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(request) {
        anyhow::bail!("the query is not JSON: {e}");
    }
    let (report, answer) = replay
        .only(name)
        .bus(cache.apply(plugbus::Bus::builder()))
        .query(request)
        .await?;
    super::replay::warn_missing(&report);
    let failures: u64 = report.plugins.iter().map(|p| p.stats.failures.total()).sum();
    tracing::info!(
        plugin = name,
        events = report.events,
        failures,
        "read model rebuilt from history"
    );
    match answer {
        Ok(answer) => {
            let text = if pretty {
                // The raw answer is printed as the plugin wrote it: parse it
                // to indent it, keeping `as_of_seq` first as in the compact form.
                #[derive(serde::Serialize)]
                struct Pretty {
                    as_of_seq: Option<u64>,
                    answer: serde_json::Value,
                }
                serde_json::to_string_pretty(&Pretty {
                    as_of_seq: answer.as_of_seq,
                    answer: answer.parse()?,
                })?
            } else {
                serde_json::to_string(&answer)?
            };
            outln!("{text}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("plugbus: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
