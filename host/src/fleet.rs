//! One plugin set for a NATS fleet: the set (a name → artifact reference
//! and digests, as in `plugins.lock`) lives in a JetStream key-value bucket;
//! every `serve --nats --fleet` host watches it and converges its plugin
//! directory on it through verified OCI pulls ([`crate::oci`]), which the
//! bus's directory watcher hot-reloads.
//!
//! Keys (docs/oci.md, "A fleet"):
//! - `plugin.NAME`: a [`LockEntry`] as JSON: the fleet's version of NAME;
//!   deleting the key removes NAME from every host;
//! - `host.ID`: a [`HostReport`] each host writes after every change: what
//!   it runs, and what it refused.
//!
//! A host that cannot install the fleet's version of a plugin (the copy it
//! got is corrupt, the signature does not verify under its trusted keys, the
//! registry is unreachable, or, with a load check, its bus would not load
//! it) does not keep running its old version: it moves
//! `NAME.wasm` aside (to the hidden `.NAME.wasm.refused`), so the bus unloads
//! it and stops pulling from NAME's consumer, and the other hosts handle
//! NAME's stream with the fleet's code alone. It reports the refusal and
//! tries again on the next change to the set.
//!
//! This module sits beside `oci`, below the CLI; it never touches the bus.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use crate::oci::{LoadCheck, LockEntry, OciError, PluginRef, Registry};
use crate::signature::{SignaturePolicy, signature_path};

/// The bucket's default name.
pub const DEFAULT_BUCKET: &str = "PLUGBUS_FLEET";

/// Revisions kept per key: enough to see the last few versions of a plugin
/// in `nats kv history`, small enough not to matter.
const HISTORY: i64 = 8;

/// The first wait before watching the set again after a watch could not
/// start (the server away); doubled after each failure.
const REWATCH_BASE: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest wait between two attempts to watch the set.
const REWATCH_MAX: std::time::Duration = std::time::Duration::from_secs(30);

const PLUGIN_PREFIX: &str = "plugin.";
const HOST_PREFIX: &str = "host.";

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The NATS server could not be reached or refused the bucket.
    #[error("fleet bucket {bucket} on {url}: {reason}")]
    Nats {
        /// The server.
        url: String,
        /// The bucket.
        bucket: String,
        /// What went wrong.
        reason: String,
    },
    /// An entry of the bucket is not what plugbus writes.
    #[error("fleet bucket {bucket}, key {key}: {reason}")]
    Entry {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A pull or install failed.
    #[error(transparent)]
    Oci(#[from] OciError),
}

/// What one host runs of the fleet's set, and what it refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostReport {
    /// The host's id (`--fleet-host`, default `HOSTNAME-PID`).
    pub host: String,
    /// Plugin name → the component digest installed from the set.
    pub plugins: BTreeMap<String, String>,
    /// Plugin name → why the set's version could not be installed.
    pub refused: BTreeMap<String, String>,
    /// Unix seconds of the report.
    pub at: u64,
}

/// A handle on the fleet's bucket.
#[derive(Clone)]
pub struct Fleet {
    store: kv::Store,
    url: String,
    bucket: String,
}

impl Fleet {
    /// Connects to `url` and opens (creating if needed) the bucket.
    ///
    /// # Errors
    /// [`FleetError::Nats`] naming the server and bucket.
    pub async fn connect(url: &str, bucket: &str) -> Result<Fleet, FleetError> {
        let err = |reason: String| FleetError::Nats {
            url: crate::nats::shown_url(url),
            bucket: bucket.to_owned(),
            reason,
        };
        let servers = crate::nats::tcp_servers(url).map_err(err)?;
        let client = crate::nats::with_url_credentials(
            async_nats::ConnectOptions::new().connection_timeout(std::time::Duration::from_secs(5)),
            url,
        )
        .connect(servers)
        .await
        .map_err(|e| err(e.to_string()))?;
        let js = jetstream::new(client);
        let store = crate::kv_bucket::open(
            &js,
            bucket,
            crate::kv_bucket::BucketSpec {
                description: "plugbus: the fleet's plugin set, and each host's report",
                history: HISTORY,
                max_age: std::time::Duration::ZERO,
                discard: jetstream::stream::DiscardPolicy::New,
            },
        )
        .await
        .map_err(err)?;
        Ok(Fleet {
            store,
            url: crate::nats::shown_url(url),
            bucket: bucket.to_owned(),
        })
    }

    fn nats_error(&self, e: impl std::fmt::Display) -> FleetError {
        FleetError::Nats {
            url: self.url.clone(),
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        }
    }

    /// Publishes `entry` as the fleet's version of its plugin.
    ///
    /// # Errors
    /// [`FleetError::Nats`].
    pub async fn publish(&self, entry: &LockEntry) -> Result<u64, FleetError> {
        // Plain strings: serialising cannot fail.
        let body = serde_json::to_vec(entry).expect("entry serialises");
        self.store
            .put(format!("{PLUGIN_PREFIX}{}", entry.name), body.into())
            .await
            .map_err(|e| self.nats_error(e))
    }

    /// Removes `name` from the set (every host removes it).
    ///
    /// # Errors
    /// [`FleetError::Nats`].
    pub async fn remove(&self, name: &str) -> Result<(), FleetError> {
        let key = format!("{PLUGIN_PREFIX}{name}");
        let not_in_set = |reason: &str| FleetError::Entry {
            bucket: self.bucket.clone(),
            key: key.clone(),
            reason: reason.to_owned(),
        };
        if !crate::manifest::valid_plugin_name(name) {
            return Err(not_in_set("not a plugin name"));
        }
        // A removal is kept and applied by every host at every start: one
        // of a name the set never had would only delete hosts' own files.
        if self
            .store
            .get(key.clone())
            .await
            .map_err(|e| self.nats_error(e))?
            .is_none()
        {
            return Err(not_in_set("no such plugin in the set (see `plugbus fleet status`)"));
        }
        self.store.delete(key.clone()).await.map_err(|e| self.nats_error(e))
    }

    /// The set: every `plugin.*` entry that reads as one, and a
    /// [`FleetError::Entry`] for each that does not (not what plugbus
    /// writes: garbage, or a newer version's entry). One bad entry stops
    /// neither a host nor `fleet status`: it is reported, the rest applied.
    ///
    /// # Errors
    /// [`FleetError::Nats`] when the bucket cannot be read.
    pub async fn set(&self) -> Result<(Vec<LockEntry>, Vec<FleetError>), FleetError> {
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        for (key, value) in self.entries(PLUGIN_PREFIX).await? {
            match self.parse_entry(&key, &value) {
                Ok(entry) => out.push(entry),
                Err(e) => bad.push(e),
            }
        }
        Ok((out, bad))
    }

    /// Every host's last report.
    ///
    /// # Errors
    /// [`FleetError::Nats`], or [`FleetError::Entry`] for a malformed report.
    pub async fn hosts(&self) -> Result<Vec<HostReport>, FleetError> {
        let mut out = Vec::new();
        for (key, value) in self.entries(HOST_PREFIX).await? {
            out.push(serde_json::from_slice(&value).map_err(|e| FleetError::Entry {
                bucket: self.bucket.clone(),
                key,
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    async fn entries(&self, prefix: &str) -> Result<Vec<(String, bytes::Bytes)>, FleetError> {
        let mut keys = match self.store.keys().await {
            Ok(keys) => keys,
            Err(e) => return Err(self.nats_error(e)),
        };
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| self.nats_error(e))?;
            if key.starts_with(prefix) {
                names.push(key);
            }
        }
        names.sort();
        let mut out = Vec::new();
        for key in names {
            if let Some(value) = self.store.get(key.clone()).await.map_err(|e| self.nats_error(e))? {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    fn parse_entry(&self, key: &str, value: &[u8]) -> Result<LockEntry, FleetError> {
        let bad = |reason: String| FleetError::Entry {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason,
        };
        let entry: LockEntry = serde_json::from_slice(value).map_err(|e| bad(e.to_string()))?;
        if key.strip_prefix(PLUGIN_PREFIX) != Some(entry.name.as_str())
            || !crate::manifest::valid_plugin_name(&entry.name)
        {
            return Err(bad(format!("names plugin {:?}", entry.name)));
        }
        entry.reference.parse::<PluginRef>().map_err(|e| bad(e.to_string()))?;
        Ok(entry)
    }

    async fn report(&self, report: &HostReport) {
        let key = format!("{HOST_PREFIX}{}", report.host);
        // Plain strings and maps of strings: serialising cannot fail.
        let body = serde_json::to_vec(report).expect("report serialises");
        if let Err(e) = self.store.put(key, body.into()).await {
            tracing::warn!(bucket = %self.bucket, error = %e, "fleet: cannot write this host's report");
        }
    }
}

/// A host's id as a key token: letters, digits, `-` and `_` only.
pub fn host_id(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The default host id: the hostname and the process id.
pub fn default_host_id() -> String {
    let hostname = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    host_id(&format!("{hostname}-{}", std::process::id()))
}

/// One host's membership: converges `dir` on the fleet's set.
pub struct Member {
    fleet: Fleet,
    dir: PathBuf,
    registry: Registry,
    policy: SignaturePolicy,
    report: HostReport,
    check: Option<Arc<LoadCheck>>,
}

impl Member {
    /// A member for the plugin directory `dir`, pulling with `registry` and
    /// checking with `policy`.
    pub fn new(fleet: Fleet, dir: &Path, registry: Registry, policy: SignaturePolicy, host: String) -> Member {
        Member {
            fleet,
            dir: dir.to_owned(),
            registry,
            policy,
            report: HostReport {
                host,
                ..HostReport::default()
            },
            check: None,
        }
    }

    /// From now on, each new version must also pass `check` (loaded as the
    /// running bus would load it) before it replaces anything; one that
    /// does not is refused like a corrupt copy.
    pub fn set_load_check(&mut self, check: Arc<LoadCheck>) {
        self.check = Some(check);
    }

    /// What this host runs of the set, as last reported.
    pub fn report(&self) -> &HostReport {
        &self.report
    }

    /// Installs the set as it is now (before the bus starts, so the first
    /// load is already the fleet's version), and reports.
    ///
    /// # Errors
    /// [`FleetError`] when the bucket cannot be read; a plugin that cannot be
    /// installed is refused and reported, not an error.
    pub async fn converge(&mut self) -> Result<(), FleetError> {
        let (set, unreadable) = self.fleet.set().await?;
        for e in unreadable {
            tracing::error!(error = %e, "fleet: entry refused");
        }
        for entry in set {
            self.apply(&entry).await;
        }
        self.send_report().await;
        Ok(())
    }

    /// After the bus's start-up: a set version installed by
    /// [`converge`](Self::converge) that the bus then could not load (the
    /// start-up load is the check for those) is reported as refused, with
    /// the loader's reason, and its file moved aside like any refused
    /// version, so `fleet status` shows why this host is off that plugin's
    /// stream. `failures`: `(file, reason)` of the bus's load failures.
    pub async fn started(&mut self, failures: &[(PathBuf, String)]) {
        let mut changed = false;
        for (path, reason) in failures {
            // The bus loads only from this directory; a manifest's failure
            // (`NAME.toml`) is its plugin's.
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !self.report.plugins.contains_key(name) {
                continue;
            }
            let source = path.display().to_string();
            self.refuse(name, &source, format!("does not load: {reason}"));
            changed = true;
        }
        if changed {
            self.send_report().await;
        }
    }

    /// Follows the set until `shutdown` turns true: each change is applied as
    /// it comes (a new version installed or refused, a removed plugin's
    /// files deleted) and reported.
    ///
    /// A watch that ends (the server went away) is logged and restarted,
    /// and one that cannot start is logged and tried again with a backoff
    /// ([`REWATCH_BASE`], doubling up to [`REWATCH_MAX`]), until `shutdown`.
    ///
    /// # Errors
    /// None so far: every failure is retried.
    pub async fn follow(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Result<(), FleetError> {
        let mut wait = REWATCH_BASE;
        loop {
            let started = self.fleet.store.watch_with_history(format!("{PLUGIN_PREFIX}>")).await;
            let mut watch = match started {
                Ok(watch) => {
                    wait = REWATCH_BASE;
                    watch
                }
                Err(e) => {
                    let e = self.fleet.nats_error(e);
                    tracing::warn!(error = %e, retry_in = ?wait, "fleet: cannot watch the plugin set; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(REWATCH_MAX);
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                    next = watch.next() => next,
                };
                match next {
                    Some(Ok(entry)) => {
                        self.on_change(entry).await;
                        self.send_report().await;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(bucket = %self.fleet.bucket, error = %e, "fleet: watch error");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    async fn on_change(&mut self, entry: kv::Entry) {
        let Some(name) = entry.key.strip_prefix(PLUGIN_PREFIX).map(str::to_owned) else {
            return;
        };
        match entry.operation {
            kv::Operation::Put => match self.fleet.parse_entry(&entry.key, &entry.value) {
                Ok(lock) => self.apply(&lock).await,
                Err(e) => tracing::error!(plugin = %name, error = %e, "fleet: entry refused"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                if !crate::manifest::valid_plugin_name(&name) {
                    return;
                }
                let wasm = self.dir.join(format!("{name}.wasm"));
                self.report.plugins.remove(&name);
                self.report.refused.remove(&name);
                // Only what a registry installed (the set, a pull) goes: a
                // removal is kept in the bucket and seen again at every
                // start, and a host's own plugin of that name is not the
                // set's to remove.
                let marker = crate::oci::install::digest_marker(&self.dir, &name);
                if !marker.exists() {
                    if wasm.exists() {
                        tracing::info!(plugin = %name, file = %wasm.display(), "fleet: plugin removed from the set; this host's own file of that name stays (no registry installed it)");
                    }
                    return;
                }
                for path in [signature_path(&wasm), wasm.with_extension("toml"), wasm, marker] {
                    let _ = std::fs::remove_file(path);
                }
                tracing::info!(plugin = %name, "fleet: plugin removed from the set");
            }
        }
    }

    /// Installs the set's version of one plugin, or refuses it.
    async fn apply(&mut self, entry: &LockEntry) {
        match entry
            .install(&self.dir, &self.registry, &self.policy, self.check.as_deref())
            .await
        {
            Ok(pulled) => {
                if pulled.is_some() {
                    tracing::info!(plugin = %entry.name, digest = %entry.wasm, "fleet: version installed");
                }
                self.accept(entry);
            }
            Err(e) => self.refuse(&entry.name, &entry.reference, e.to_string()),
        }
    }

    fn accept(&mut self, entry: &LockEntry) {
        self.report.plugins.insert(entry.name.clone(), entry.wasm.clone());
        self.report.refused.remove(&entry.name);
    }

    /// The fleet's version cannot run here: the old one must not either.
    /// `reference`: where the refused version came from (the set entry's
    /// reference, or the installed file), for the log.
    fn refuse(&mut self, name: &str, reference: &str, reason: String) {
        let wasm = self.dir.join(format!("{name}.wasm"));
        let aside = self.dir.join(format!(".{name}.wasm.refused"));
        match std::fs::rename(&wasm, &aside) {
            Ok(()) => tracing::error!(
                plugin = %name, %reference, %reason,
                "fleet: cannot install the fleet's version; the old one is unloaded (moved to {})", aside.display()
            ),
            Err(_) => tracing::error!(
                plugin = %name, %reference, %reason,
                "fleet: cannot install the fleet's version"
            ),
        }
        self.report.plugins.remove(name);
        self.report.refused.insert(name.to_owned(), reason);
    }

    async fn send_report(&mut self) {
        self.report.at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.fleet.report(&self.report).await;
    }
}
