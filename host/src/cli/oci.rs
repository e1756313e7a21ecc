//! `plugbus push` and `plugbus pull`: plugins to and from OCI registries,
//! and the `plugins.lock` sync `run` and `serve` do before the bus starts.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use plugbus::oci::{self, Auth, Lock, LockEntry, PluginRef, Registry};
use plugbus::{SignaturePolicy, TrustedKeys};

/// How to reach a registry (push, pull, and the lock sync of run/serve).
#[derive(clap::Args, Clone)]
pub struct RegistryArgs {
    /// Registry user name (basic authentication, or the token exchange the registry asks for). Without
    /// it, Docker's client configuration is used for the registry ($DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json: credential helpers and `docker login` entries), else none.
    #[arg(long, value_name = "USER")]
    registry_user: Option<String>,
    /// The environment variable holding the registry password or token.
    #[arg(
        long,
        value_name = "VAR",
        default_value = "PLUGBUS_REGISTRY_PASSWORD",
        requires = "registry_user"
    )]
    registry_password_env: String,
    /// Speak plain HTTP to a registry that is not on this machine (loopback registries always are).
    #[arg(long)]
    plain_http: bool,
    /// Most bytes a pulled component may have (a larger layer is refused before download).
    #[arg(long, value_name = "BYTES", default_value_t = plugbus::plugin::MAX_WASM_BYTES)]
    max_wasm_bytes: u64,
}

impl RegistryArgs {
    pub fn registry(&self) -> anyhow::Result<Registry> {
        let auth = match &self.registry_user {
            // Docker's client configuration, if it holds anything for the
            // registry (`docker login`, credential helpers), else anonymous.
            None => Auth::DockerConfig,
            Some(user) => Auth::Basic {
                username: user.clone(),
                password: std::env::var(&self.registry_password_env).with_context(|| {
                    format!(
                        "--registry-user {user}: the password is read from ${}, which is not set",
                        self.registry_password_env
                    )
                })?,
            },
        };
        Ok(Registry {
            auth,
            plain_http: self.plain_http,
            max_wasm_bytes: self.max_wasm_bytes,
            ..Registry::default()
        })
    }
}

/// The signature policy of a pull: trusted keys and whether unsigned
/// artifacts are refused.
pub fn signature_policy(trusted_keys: Option<&Path>, require_signed: bool) -> anyhow::Result<SignaturePolicy> {
    let keys = trusted_keys.map(TrustedKeys::read).transpose()?;
    Ok(SignaturePolicy::new(keys, require_signed)?)
}

/// `plugbus push FILE REF`.
pub async fn push(file: &Path, reference: &str, registry: &RegistryArgs, json: bool) -> anyhow::Result<ExitCode> {
    let reference: PluginRef = reference.parse()?;
    let pushed = oci::push(file, &reference, &registry.registry()?).await?;
    if json {
        let layers: Vec<_> = pushed
            .layers
            .iter()
            .map(|(role, title)| serde_json::json!({"media_type": role.media_type(), "title": title}))
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "reference": pushed.reference,
                "digest": pushed.digest,
                "wasm_digest": pushed.wasm_digest,
                "layers": layers,
            })
        )?;
    } else {
        outln!("pushed {} ({} layers)", pushed.reference, pushed.layers.len())?;
        outln!("digest {}", pushed.digest)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `plugbus pull` was asked.
pub struct PullOptions<'a> {
    pub reference: Option<&'a str>,
    pub plugins: &'a Path,
    pub name: Option<&'a str>,
    pub lock: bool,
    pub registry: &'a RegistryArgs,
    pub trusted_keys: Option<&'a PathBuf>,
    pub require_signed: bool,
    pub json: bool,
}

/// `plugbus pull [REF] --plugins DIR`: one reference, or (without one)
/// everything `DIR/plugins.lock` lists.
pub async fn pull(options: PullOptions<'_>) -> anyhow::Result<ExitCode> {
    let registry = options.registry.registry()?;
    let policy = signature_policy(options.trusted_keys.map(PathBuf::as_path), options.require_signed)?;
    let pulled = match options.reference {
        Some(reference) => {
            let reference: PluginRef = reference.parse()?;
            let pulled = oci::pull(&reference, options.plugins, &registry, &policy, options.name).await?;
            if options.lock {
                Lock::update(options.plugins, |lock| {
                    lock.upsert(LockEntry {
                        name: pulled.name.clone(),
                        reference: reference.to_string(),
                        digest: pulled.digest.clone(),
                        wasm: pulled.wasm_digest.clone(),
                    });
                })?;
            }
            vec![pulled]
        }
        None => {
            let Some(lock) = Lock::read(options.plugins)? else {
                anyhow::bail!(
                    "give a reference (oci://REGISTRY/REPOSITORY:TAG), or list plugins in {}",
                    Lock::path(options.plugins).display()
                );
            };
            let report = oci::sync_lock(options.plugins, &lock, &registry, &policy).await?;
            for name in &report.present {
                if !options.json {
                    outln!("{name}: installed, as locked")?;
                }
            }
            report.installed
        }
    };
    for p in &pulled {
        if options.json {
            outln!(
                "{}",
                serde_json::json!({
                    "reference": p.reference,
                    "name": p.name,
                    "file": p.wasm,
                    "digest": p.digest,
                    "wasm_digest": p.wasm_digest,
                    "changed": p.changed,
                    "signer": p.signer.as_ref().map(|s| &s.key_id),
                })
            )?;
        } else {
            let what = if p.changed { "installed" } else { "unchanged" };
            let signed = p
                .signer
                .as_ref()
                .map_or_else(String::new, |s| format!(", signed by {}", s.key_id));
            outln!(
                "{what} {} from {} ({}{signed})",
                p.wasm.display(),
                p.reference,
                p.digest
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Before `run` or `serve` opens the bus: installs what `DIR/plugins.lock`
/// lists and is missing or different (a lock that cannot be satisfied
/// stops the start, naming the reference).
pub async fn sync_before_start(
    plugins: &Path,
    registry: &RegistryArgs,
    trust: &super::TrustArgs,
) -> anyhow::Result<()> {
    // A missing, wrong or unreadable plugin directory is the bus's to
    // report, naming the directory (not a lock file the user never made).
    if !plugins.is_dir() || std::fs::read_dir(plugins).is_err() {
        return Ok(());
    }
    let Some(lock) = Lock::read(plugins)? else {
        return Ok(());
    };
    let report = oci::sync_lock(plugins, &lock, &registry.registry()?, &trust.signature_policy()?)
        .await
        .with_context(|| format!("installing the plugins {} lists", Lock::path(plugins).display()))?;
    for p in report.installed {
        tracing::info!(plugin = %p.name, reference = %p.reference, digest = %p.digest, "locked plugin installed");
    }
    Ok(())
}
