//! `plugbus fleet push|remove|status`, and the `--fleet` membership of
//! `plugbus serve` (see `plugbus::fleet`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use plugbus::fleet::{Fleet, Member};
use plugbus::oci::{self, LockEntry, PluginRef};

use super::oci::{RegistryArgs, signature_policy};

/// `serve`'s fleet flags.
#[derive(clap::Args)]
pub struct FleetArgs {
    /// Converge the plugin directory on the fleet's plugin set in NATS (`plugbus fleet push`), at start
    /// and on every change: verified pulls, hot reload; a version this host cannot install unloads the
    /// plugin here rather than running other code on its stream. Needs --nats.
    #[arg(long, requires = "nats")]
    fleet: bool,
    /// The fleet's key-value bucket.
    #[arg(long, value_name = "NAME", default_value = plugbus::fleet::DEFAULT_BUCKET, requires = "fleet")]
    fleet_bucket: String,
    /// This host's id in the fleet's reports (default: hostname and process id).
    #[arg(long, value_name = "ID", requires = "fleet")]
    fleet_host: Option<String>,
}

/// The fleet's commands.
#[derive(Subcommand)]
pub enum FleetCommand {
    /// Make an OCI artifact the fleet's version of its plugin: pulled and verified here first
    /// (digests, signature with --trusted-keys), then published; every `serve --fleet` host installs it.
    Push {
        /// oci://REGISTRY/REPOSITORY:TAG (published pinned to the digest it names now).
        #[arg(value_name = "REF")]
        reference: String,
        /// The plugin's name (default: the artifact's file name, else the repository's last segment).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Verify against the minisign public keys in PATH before publishing.
        #[arg(long, value_name = "PATH")]
        trusted_keys: Option<PathBuf>,
        /// Refuse to publish an artifact without a valid signature by a trusted key.
        #[arg(long, requires = "trusted_keys")]
        require_signed: bool,
    },
    /// Remove a plugin from the fleet: every `serve --fleet` host deletes and unloads it.
    Remove {
        /// The plugin's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// The fleet's set and what each host runs of it.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON: {"set": [...], "hosts": [...], "converged": bool}.
        #[arg(long)]
        json: bool,
    },
}

/// Which fleet.
#[derive(clap::Args)]
pub struct Target {
    /// The NATS server the fleet's hosts use.
    #[arg(long, value_name = "URL")]
    nats: String,
    /// The fleet's key-value bucket.
    #[arg(long, value_name = "NAME", default_value = plugbus::fleet::DEFAULT_BUCKET)]
    bucket: String,
}

pub async fn fleet(command: FleetCommand) -> anyhow::Result<ExitCode> {
    match command {
        FleetCommand::Push {
            reference,
            name,
            target,
            registry,
            trusted_keys,
            require_signed,
        } => {
            let reference: PluginRef = reference.parse()?;
            let policy = signature_policy(trusted_keys.as_deref(), require_signed)?;
            // Pulled into a scratch directory: what is published is what
            // verified here, pinned to the digest it had.
            let scratch = tempfile::tempdir()?;
            let pulled = oci::pull(
                &reference,
                scratch.path(),
                &registry.registry()?,
                &policy,
                name.as_deref(),
            )
            .await?;
            // What every host will do with it: load it as a bus does (world,
            // manifest, exports). One that does not load would be refused,
            // and unloaded, on every host.
            let bus = plugbus::Bus::builder().build().await?;
            let checked = bus.check_plugin(&pulled.wasm).await;
            bus.shutdown().await;
            if let Err(e) = checked {
                anyhow::bail!(
                    "{reference}: not published: {} does not load as a plugin, so every host would refuse it: {}",
                    pulled.name,
                    e.kind
                );
            }
            let fleet = Fleet::connect(&target.nats, &target.bucket).await?;
            let entry = LockEntry {
                name: pulled.name.clone(),
                reference: reference.to_string(),
                digest: pulled.digest.clone(),
                wasm: pulled.wasm_digest.clone(),
            };
            let revision = fleet.publish(&entry).await?;
            outln!(
                "fleet {}: {} is now {} ({}), revision {revision}",
                target.bucket,
                entry.name,
                entry.reference,
                entry.digest
            )?;
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Remove { name, target } => {
            let fleet = Fleet::connect(&target.nats, &target.bucket).await?;
            fleet.remove(&name).await?;
            outln!("fleet {}: {name} removed", target.bucket)?;
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Status { target, json } => {
            let fleet = Fleet::connect(&target.nats, &target.bucket).await?;
            let (set, unreadable) = fleet.set().await?;
            let unreadable: Vec<String> = unreadable.iter().map(ToString::to_string).collect();
            let hosts = fleet.hosts().await?;
            // No host reporting is not a fleet that runs the set.
            let converged = !hosts.is_empty()
                && unreadable.is_empty()
                && hosts
                    .iter()
                    .all(|h| h.refused.is_empty() && set.iter().all(|e| h.plugins.get(&e.name) == Some(&e.wasm)));
            if json {
                outln!(
                    "{}",
                    serde_json::json!({"set": set, "unreadable": unreadable, "hosts": hosts, "converged": converged})
                )?;
            } else {
                let shown = plugbus::nats::shown_url(&target.nats);
                outln!("fleet {} on {shown}: {} plugins", target.bucket, set.len())?;
                for e in &set {
                    outln!("  {}  {}  {}", e.name, e.wasm, e.reference)?;
                }
                for e in &unreadable {
                    outln!("  unreadable entry: {e}")?;
                }
                if hosts.is_empty() {
                    outln!("  no host has reported")?;
                }
                for h in &hosts {
                    let behind: Vec<&str> = set
                        .iter()
                        .filter(|e| h.plugins.get(&e.name) != Some(&e.wasm))
                        .map(|e| e.name.as_str())
                        .collect();
                    outln!(
                        "  host {}: {}",
                        h.host,
                        if behind.is_empty() {
                            "up to date".to_owned()
                        } else {
                            format!("not running {}", behind.join(", "))
                        }
                    )?;
                    for (name, reason) in &h.refused {
                        outln!("    refused {name}: {reason}")?;
                    }
                }
                outln!("{}", if converged { "converged" } else { "not converged" })?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Joins the fleet for `serve`: installs the set before the bus starts and
/// returns the member that follows it afterwards (`None` without --fleet).
pub async fn join(
    args: &FleetArgs,
    nats: Option<&str>,
    plugins: &Path,
    registry: &RegistryArgs,
    trust: &super::TrustArgs,
) -> anyhow::Result<Option<Member>> {
    if !args.fleet {
        return Ok(None);
    }
    // clap requires --nats with --fleet.
    let url = nats.ok_or_else(|| anyhow::anyhow!("--fleet needs --nats URL"))?;
    let fleet = Fleet::connect(url, &args.fleet_bucket).await?;
    let host = args
        .fleet_host
        .as_deref()
        .map_or_else(plugbus::fleet::default_host_id, plugbus::fleet::host_id);
    let mut member = Member::new(fleet, plugins, registry.registry()?, trust.signature_policy()?, host);
    member.converge().await?;
    let report = member.report();
    eprintln!(
        "plugbus: fleet {}: host {} runs {} of the set's plugins, refused {}",
        args.fleet_bucket,
        report.host,
        report.plugins.len(),
        report.refused.len()
    );
    Ok(Some(member))
}
