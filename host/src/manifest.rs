//! The optional plugin manifest, `<name>.toml` beside `<name>.wasm`.
//!
//! Parsing happens in two steps: the TOML text becomes a [`RawManifest`]
//! (serde, unknown fields refused), which is then validated into a
//! [`Manifest`] with resolved paths and limits. Nothing is granted to a plugin
//! unless its manifest says so.
//!
//! ```toml
//! subscriptions = ["model_responded"]   # replaces what the plugin asks for
//! replay = "all"                         # with a log: catch up on history first ("none", "all", "since:2h")
//! ordered = true                         # on NATS: each correlation id's events in publish order, across hosts
//!
//! [limits]                               # any subset; the bus defaults fill the rest
//! fuel = 100_000_000
//! deadline_ms = 200
//! memory_mib = 128
//! queue_capacity = 4096
//! quarantine_after = 5                   # consecutive failures; 0 = never
//! quarantine_backoff_ms = 1000           # first quarantine; doubles on each failed probe…
//! quarantine_backoff_max_ms = 300_000    # …up to this
//! snapshot_every = 1000                  # stateful plugins: events between snapshots
//! snapshot_interval_ms = 10_000          # …or time between snapshots
//! replay_max_events = 10_000             # events kept to rebuild state after a trap
//! replay_max_mib = 64                    # …and payload bytes (MiB) kept for it
//! query_fuel = 100_000_000               # plugins with `query`: budget of one query
//! query_deadline_ms = 200
//! state_fuel = 1_000_000_000             # plugins with `state`: budget of one snapshot or restore
//! state_deadline_ms = 1000
//! max_batch = 64                         # plugins with `batch-handler`: most events per call (1: one by one)
//! batch_kib = 1024                       # …and most payload KiB per call
//!
//! [config]                               # served by host.config(key)
//! budget_usd = "5.00"
//!
//! [[dirs]]                               # WASI directory grants
//! host = "audit"                         # relative to this file
//! guest = "/audit"
//! writable = true
//!
//! [http]                                 # outbound requests (docs/http.md); none without it
//! allow = ["https://hooks.example.com"]
//!
//! [secrets]                              # served by host.config(key) too; never shown or logged
//! webhook_url = { env = "ALERT_WEBHOOK_URL" }
//! api_token = { file = "token.txt" }     # relative to this file; trailing newline dropped
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::http::{HttpGrant, RawHttp};
use crate::limits::Limits;
use crate::pattern::Pattern;

/// Whether `name` may name a plugin (`name.wasm`): 1 to 64 ASCII letters,
/// digits, `-`, `_` or `.`, not starting with a dot (hidden files are not
/// plugins). The rule for every plugin name the host is given: files,
/// `plugins.lock`, the fleet's bucket, a policy's `[plugin.NAME]`.
///
/// ```
/// assert!(plugbus::manifest::valid_plugin_name("cost-tracker"));
/// assert!(!plugbus::manifest::valid_plugin_name("../etc"));
/// ```
pub fn valid_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A manifest that could not be used. Names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("manifest {}: {reason}", path.display())]
pub struct ManifestError {
    /// The manifest file.
    pub path: PathBuf,
    /// What is wrong, naming the field (and line, for syntax errors).
    pub reason: String,
}

/// The manifest as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    /// Replaces the plugin's own `subscriptions()` answer.
    pub subscriptions: Option<Vec<String>>,
    /// Per-plugin limit overrides.
    #[serde(default)]
    pub limits: RawLimits,
    /// String values served by `host.config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Directory grants.
    #[serde(default)]
    pub dirs: Vec<RawDir>,
    /// Catch-up from the event log when loaded: `none` (default), `all`,
    /// or `since:<duration>` (`since:30m`, `since:2h`, `since:7d`).
    pub replay: Option<String>,
    /// On NATS: handle the events of each correlation id in publish order,
    /// across hosts (one consumer per partition, one message in flight).
    #[serde(default)]
    pub ordered: bool,
    /// Outbound HTTP grant (`wasi:http`); without it every request is refused.
    pub http: Option<RawHttp>,
    /// Secrets by key: where each value is read from.
    #[serde(default)]
    pub secrets: BTreeMap<String, RawSecret>,
}

/// Where a secret's value comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// An environment variable of the host process.
    pub env: Option<String>,
    /// A file, relative to the manifest's folder; one trailing newline is dropped.
    pub file: Option<PathBuf>,
}

/// What is wrong with a `[secrets]` entry that is not `{ env = "NAME" }` or
/// `{ file = "path" }` (a value written inline, an unknown field), said
/// without quoting it; `None` when `[secrets]` is well formed (or the text is
/// not TOML at all, which the typed parse reports).
fn inline_secret(text: &str) -> Option<String> {
    let table: toml::Table = toml::from_str(text).ok()?;
    let secrets = table.get("secrets")?;
    let Some(secrets) = secrets.as_table() else {
        return Some("[secrets] must be a table of `key = { env = \"NAME\" }` or `key = { file = \"path\" }`".into());
    };
    secrets.iter().find_map(|(key, source)| {
        let well_formed = source.as_table().is_some_and(|t| {
            t.iter()
                .all(|(field, v)| matches!(field.as_str(), "env" | "file") && v.is_str())
        });
        (!well_formed).then(|| {
            format!(
                "secrets.{key}: must be {{ env = \"NAME\" }} or {{ file = \"path\" }}; a secret's value never goes in the manifest (not quoted here)"
            )
        })
    })
}

/// A secret's value: never printed (its `Debug` shows only where it was
/// read from), never serialised; the plugin reads it with `host.config(key)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: SecretSource,
}

/// Where a secret was read from: what a capability policy bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the host process.
    Env(String),
    /// A file (the manifest's folder joined with the path it gave).
    File(PathBuf),
}

impl Secret {
    /// The value, for handing to the plugin.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the value was read from.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<redacted, from {:?}>", self.source)
    }
}

/// `[limits]` as written; absent fields keep the bus defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Fuel per event.
    pub fuel: Option<u64>,
    /// Wall-clock deadline per event, in milliseconds.
    pub deadline_ms: Option<u64>,
    /// Memory cap in MiB.
    pub memory_mib: Option<u64>,
    /// Queue capacity in events.
    pub queue_capacity: Option<usize>,
    /// Follow-up events per event.
    pub emits_per_event: Option<u32>,
    /// Log lines per event.
    pub log_lines_per_event: Option<u32>,
    /// Consecutive hard failures before quarantine (0: never).
    pub quarantine_after: Option<u32>,
    /// First quarantine backoff, in milliseconds.
    pub quarantine_backoff_ms: Option<u64>,
    /// Longest quarantine backoff, in milliseconds.
    pub quarantine_backoff_max_ms: Option<u64>,
    /// Events between two snapshots of a stateful plugin (0: none).
    pub snapshot_every: Option<u32>,
    /// Most time between two snapshots, in milliseconds.
    pub snapshot_interval_ms: Option<u64>,
    /// Events kept to rebuild the plugin's state by replay after a trap.
    pub replay_max_events: Option<usize>,
    /// Payload bytes (MiB) kept for that replay.
    pub replay_max_mib: Option<u64>,
    /// Fuel one query may burn.
    pub query_fuel: Option<u64>,
    /// Wall-clock time one query may take, in milliseconds.
    pub query_deadline_ms: Option<u64>,
    /// Fuel one snapshot or restore may burn.
    pub state_fuel: Option<u64>,
    /// Wall-clock time one snapshot or restore may take, in milliseconds.
    pub state_deadline_ms: Option<u64>,
    /// Most events per `on-events` call (1: one call per event).
    pub max_batch: Option<usize>,
    /// Most payload KiB per `on-events` call.
    pub batch_kib: Option<u64>,
}

/// One `[[dirs]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDir {
    /// Host directory, relative to the manifest's folder (or absolute).
    pub host: PathBuf,
    /// Where the plugin sees it; absolute, e.g. `/audit`.
    pub guest: String,
    /// Whether the plugin may create and write files there. Default false.
    #[serde(default)]
    pub writable: bool,
}

/// A validated manifest.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    /// Subscription override, already parsed.
    pub subscriptions: Option<Vec<Pattern>>,
    /// Limit overrides, applied with [`Manifest::apply_limits`].
    limits: LimitOverrides,
    /// `[config]` values.
    pub config: BTreeMap<String, String>,
    /// Directory grants with resolved host paths.
    pub dirs: Vec<DirGrant>,
    /// Catch-up from the event log when the plugin is loaded.
    pub replay: CatchUp,
    /// On NATS: per-correlation-id order across hosts.
    pub ordered: bool,
    /// The `[http]` grant; `None`: no table, every request refused.
    pub http: Option<std::sync::Arc<HttpGrant>>,
    /// `[secrets]`, read when the manifest was loaded.
    pub secrets: BTreeMap<String, Secret>,
}

/// How much of the event log a plugin handles when it is loaded (at start,
/// added while the bus runs, or hot-reloaded), before the live events: the
/// manifest's `replay`. Needs a bus with a log; without one it is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatchUp {
    /// Live events only (the default).
    #[default]
    None,
    /// Every event the log retains.
    All,
    /// The events of the last this-long.
    Since(Duration),
}

impl CatchUp {
    /// Parses `none`, `all` or `since:<n><s|m|h|d>`.
    ///
    /// # Errors
    /// A message saying what is accepted.
    ///
    /// ```
    /// use plugbus::manifest::CatchUp;
    /// use std::time::Duration;
    /// assert_eq!(CatchUp::parse("since:2h"), Ok(CatchUp::Since(Duration::from_secs(7200))));
    /// assert!(CatchUp::parse("since:soon").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<CatchUp, String> {
        let bad = || format!("`{text}`: expected \"none\", \"all\" or \"since:<n>s|m|h|d\" (e.g. \"since:30m\")");
        match text {
            "none" => Ok(CatchUp::None),
            "all" => Ok(CatchUp::All),
            _ => {
                let spec = text.strip_prefix("since:").ok_or_else(bad)?;
                let (n, unit) = spec.split_at(spec.len().saturating_sub(1));
                let n: u64 = n.parse().map_err(|_| bad())?;
                let secs = match unit {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => 86_400,
                    _ => return Err(bad()),
                };
                Ok(CatchUp::Since(Duration::from_secs(n.saturating_mul(secs))))
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct LimitOverrides {
    fuel: Option<u64>,
    deadline: Option<Duration>,
    memory_bytes: Option<usize>,
    queue_capacity: Option<usize>,
    emits_per_event: Option<u32>,
    log_lines_per_event: Option<u32>,
    quarantine_after: Option<u32>,
    quarantine_backoff: Option<Duration>,
    quarantine_backoff_max: Option<Duration>,
    snapshot_every: Option<u32>,
    snapshot_interval: Option<Duration>,
    replay_max_events: Option<usize>,
    replay_max_bytes: Option<usize>,
    query_fuel: Option<u64>,
    query_deadline: Option<Duration>,
    state_fuel: Option<u64>,
    state_deadline: Option<Duration>,
    max_batch: Option<usize>,
    batch_bytes: Option<usize>,
}

/// A directory the plugin may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// Absolute host path.
    pub host: PathBuf,
    /// Path inside the guest.
    pub guest: String,
    /// Read-write (true) or read-only.
    pub writable: bool,
}

/// A directory grant bound to the directory it named once the plugin
/// passed its checks: the canonical path and the directory's identity
/// (device and inode). Each new instance is granted the directory only while
/// both still match ([`PinnedDir::verify`]): a directory moved away and
/// replaced (by a symlink to somewhere else, say) after the policy allowed
/// it is refused, not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedDir {
    /// The grant; its `host` is the canonical path.
    pub grant: DirGrant,
    dev: u64,
    ino: u64,
}

impl PinnedDir {
    /// Checks that the grant's path still resolves to itself and is the
    /// same directory as when it was pinned.
    ///
    /// # Errors
    /// A message naming the directory and what changed.
    pub fn verify(&self) -> Result<(), String> {
        let host = &self.grant.host;
        let (dev, ino) = identity(host).map_err(|e| {
            format!(
                "granted directory {} is not the one checked when the plugin was loaded: {e} \
                 (reload the plugin to grant what is there now)",
                host.display()
            )
        })?;
        if (dev, ino) != (self.dev, self.ino) {
            return Err(format!(
                "granted directory {} is not the one checked when the plugin was loaded: \
                 it was replaced (reload the plugin to grant what is there now)",
                host.display()
            ));
        }
        Ok(())
    }
}

/// The identity of the directory at canonical path `host`: its device and
/// inode, when `host` still resolves to itself (no symlink on the way) and
/// is a directory.
fn identity(host: &Path) -> Result<(u64, u64), String> {
    use std::os::unix::fs::MetadataExt;
    let now = host.canonicalize().map_err(|e| format!("cannot resolve it: {e}"))?;
    if now != host {
        return Err(format!("it now resolves to {}", now.display()));
    }
    let meta = std::fs::metadata(host).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("it is not a directory".into());
    }
    Ok((meta.dev(), meta.ino()))
}

/// Whether nothing (not even a dangling symlink) is at `path`.
fn is_missing(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
}

/// `path`, which does not exist, as it will be once created: its nearest
/// existing ancestor resolved (symlinks, `..`), then the rest with `.` and
/// `..` applied (nothing there exists to hold a symlink).
fn resolve_missing(path: &Path) -> Result<PathBuf, String> {
    let existing = path
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && !is_missing(a))
        .unwrap_or(Path::new("."));
    let mut resolved = existing
        .canonicalize()
        .map_err(|e| format!("{}: {e}", existing.display()))?;
    if !resolved.is_dir() {
        return Err(format!("{} is not a directory", resolved.display()));
    }
    let rest = path.strip_prefix(existing).unwrap_or(path);
    for part in rest.components() {
        match part {
            std::path::Component::Normal(name) => resolved.push(name),
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            _ => {}
        }
    }
    Ok(resolved)
}

/// Creates the directory at `host` (resolved by [`resolve_missing`]) and
/// whatever of its parents is missing, one at a time, each a real directory
/// (not a symlink) where it was expected.
fn create_missing(host: &Path) -> Result<(), String> {
    let missing: Vec<&Path> = host.ancestors().take_while(|a| is_missing(a)).collect();
    for dir in missing.into_iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
        let made = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !made.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
    }
    Ok(())
}

/// Most bytes a manifest may have: a manifest is a few dozen lines; a
/// bigger file is not one.
pub(crate) const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Most bytes a `{ file = "…" }` secret may have: a key, a token or a
/// certificate chain is far smaller.
const MAX_SECRET_BYTES: u64 = 1 << 20;

/// Upper bounds on what a manifest may ask for: beyond them a typo (an extra
/// zero) is more likely than intent, and the memory cap must fit the pooling
/// allocator's slots.
const MAX_DEADLINE_MS: u64 = 60_000;
/// See [`MAX_DEADLINE_MS`]; also the size of the engine's memory slots.
pub const MAX_MEMORY_MIB: u64 = 4096;
const MAX_QUEUE: usize = 1 << 20;
/// Most events per batch a manifest may ask for: past a few hundred the
/// call's fixed cost is long amortised, and a trap re-runs the whole batch.
const MAX_BATCH: usize = 4096;
/// Most payload KiB per batch a manifest may ask for: the largest memory cap.
const MAX_BATCH_KIB: u64 = MAX_MEMORY_MIB << 10;
/// Longest quarantine backoff a manifest may ask for: a day. A plugin that
/// has failed every probe for that long needs a person, not a timer.
const MAX_BACKOFF_MS: u64 = 86_400_000;
/// Events kept for replay, at most: a million events is minutes of replay.
const MAX_REPLAY: usize = 1 << 20;
/// Most payload MiB a manifest may keep for replay: 16 GiB, far past any
/// sensible memory cap, so only a typo is refused.
const MAX_REPLAY_MIB: u64 = 16 << 10;

impl Manifest {
    /// Reads and validates the manifest at `path`. Read-only directory
    /// grants must exist; writable ones that do not are created later, by
    /// [`Manifest::pin_dirs`], once the plugin has passed its checks.
    ///
    /// # Errors
    /// [`ManifestError`] naming the file and the field at fault.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let err = |reason: String| ManifestError {
            path: path.to_owned(),
            reason,
        };
        let bytes =
            crate::files::read_regular(path, MAX_MANIFEST_BYTES).map_err(|e| err(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8: {e}")))?;
        Manifest::parse(path, &text)
    }

    /// Parses and validates the text of the manifest at `path` (relative
    /// directory grants resolve against its folder), for callers that have
    /// read the file already.
    ///
    /// # Errors
    /// [`ManifestError`] naming the file and the field at fault.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        let err = |reason: String| ManifestError {
            path: path.to_owned(),
            reason,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| {
            // A parse error quotes the offending line; under [secrets] that
            // line may hold a secret written inline, so it is described instead.
            err(inline_secret(text).unwrap_or_else(|| e.to_string().trim_end().to_owned()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Manifest::validate(raw, base).map_err(err)
    }

    /// Validates a parsed manifest; relative directory grants resolve
    /// against `base`. The error names the field.
    ///
    /// # Errors
    /// A message naming the field at fault.
    pub fn validate(raw: RawManifest, base: &Path) -> Result<Manifest, String> {
        let subscriptions = raw
            .subscriptions
            .map(|subs| {
                subs.iter()
                    .map(|s| Pattern::parse(s).map_err(|e| format!("subscriptions: {e}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let l = raw.limits;
        let in_range = |field: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(format!("limits.{field}: {v} is outside {lo}..={hi}"))
            }
        };
        let limits = LimitOverrides {
            fuel: l.fuel.map(|v| in_range("fuel", v, 1, u64::MAX)).transpose()?,
            deadline: l
                .deadline_ms
                .map(|v| in_range("deadline_ms", v, 1, MAX_DEADLINE_MS).map(Duration::from_millis))
                .transpose()?,
            memory_bytes: l
                .memory_mib
                .map(|v| in_range("memory_mib", v, 1, MAX_MEMORY_MIB).map(|m| (m as usize) << 20))
                .transpose()?,
            queue_capacity: l
                .queue_capacity
                .map(|v| in_range("queue_capacity", v as u64, 1, MAX_QUEUE as u64).map(|v| v as usize))
                .transpose()?,
            emits_per_event: l.emits_per_event,
            log_lines_per_event: l.log_lines_per_event,
            quarantine_after: l.quarantine_after,
            quarantine_backoff: l
                .quarantine_backoff_ms
                .map(|v| in_range("quarantine_backoff_ms", v, 1, MAX_BACKOFF_MS).map(Duration::from_millis))
                .transpose()?,
            quarantine_backoff_max: l
                .quarantine_backoff_max_ms
                .map(|v| in_range("quarantine_backoff_max_ms", v, 1, MAX_BACKOFF_MS).map(Duration::from_millis))
                .transpose()?,
            snapshot_every: l.snapshot_every,
            snapshot_interval: l
                .snapshot_interval_ms
                .map(|v| in_range("snapshot_interval_ms", v, 1, u64::MAX).map(Duration::from_millis))
                .transpose()?,
            replay_max_events: l
                .replay_max_events
                .map(|v| in_range("replay_max_events", v as u64, 0, MAX_REPLAY as u64).map(|v| v as usize))
                .transpose()?,
            replay_max_bytes: l
                .replay_max_mib
                .map(|v| in_range("replay_max_mib", v, 0, MAX_REPLAY_MIB).map(|v| (v as usize) << 20))
                .transpose()?,
            query_fuel: l
                .query_fuel
                .map(|v| in_range("query_fuel", v, 1, u64::MAX))
                .transpose()?,
            query_deadline: l
                .query_deadline_ms
                .map(|v| in_range("query_deadline_ms", v, 1, MAX_DEADLINE_MS).map(Duration::from_millis))
                .transpose()?,
            state_fuel: l
                .state_fuel
                .map(|v| in_range("state_fuel", v, 1, u64::MAX))
                .transpose()?,
            state_deadline: l
                .state_deadline_ms
                .map(|v| in_range("state_deadline_ms", v, 1, MAX_DEADLINE_MS).map(Duration::from_millis))
                .transpose()?,
            max_batch: l
                .max_batch
                .map(|v| in_range("max_batch", v as u64, 1, MAX_BATCH as u64).map(|v| v as usize))
                .transpose()?,
            batch_bytes: l
                .batch_kib
                .map(|v| in_range("batch_kib", v, 1, MAX_BATCH_KIB).map(|v| (v as usize) << 10))
                .transpose()?,
        };
        let mut dirs = Vec::with_capacity(raw.dirs.len());
        for (i, d) in raw.dirs.into_iter().enumerate() {
            if !d.guest.starts_with('/') {
                return Err(format!(
                    "dirs[{i}].guest: `{}` must be an absolute path like `/data`",
                    d.guest
                ));
            }
            // Two grants at one guest path: the guest would see only one of
            // them (which, the preopen order decides), the other silently
            // unused.
            let same = |guest: &str| guest.trim_end_matches('/') == d.guest.trim_end_matches('/');
            if let Some(j) = dirs.iter().position(|g: &DirGrant| same(&g.guest)) {
                return Err(format!(
                    "dirs[{i}].guest: `{}` is granted twice (also dirs[{j}]); give each grant its own guest path",
                    d.guest
                ));
            }
            let host = base.join(&d.host);
            // Nothing is created here: the manifest may yet be refused (by
            // the signature check or the policy). A writable grant that does
            // not exist yet is resolved as far as it exists, and created by
            // `pin_dirs` once the plugin has passed them.
            let host = if d.writable && is_missing(&host) {
                resolve_missing(&host).map_err(|e| format!("dirs[{i}].host: `{}`: {e}", host.display()))?
            } else {
                let host = host
                    .canonicalize()
                    .map_err(|e| format!("dirs[{i}].host: `{}`: {e}", host.display()))?;
                if !host.is_dir() {
                    return Err(format!("dirs[{i}].host: `{}` is not a directory", host.display()));
                }
                host
            };
            dirs.push(DirGrant {
                host,
                guest: d.guest,
                writable: d.writable,
            });
        }
        let replay = match raw.replay.as_deref() {
            None => CatchUp::None,
            Some(text) => CatchUp::parse(text).map_err(|e| format!("replay: {e}"))?,
        };
        let http = raw
            .http
            .map(|h| HttpGrant::validate(h).map(std::sync::Arc::new))
            .transpose()?;
        let mut secrets = BTreeMap::new();
        for (key, source) in raw.secrets {
            if raw.config.contains_key(&key) {
                return Err(format!("secrets.{key}: also a [config] key; a key is one or the other"));
            }
            let (value, source) = match (source.env, source.file) {
                (Some(var), None) => (
                    std::env::var(&var)
                        .map_err(|_| format!("secrets.{key}: environment variable {var} is not set (or not UTF-8)"))?,
                    SecretSource::Env(var),
                ),
                (None, Some(file)) => {
                    let path = base.join(&file);
                    // A regular file only: a FIFO or a device (`/dev/zero`)
                    // named here must not hang or exhaust the host, even
                    // for a manifest about to be refused.
                    let mut text = crate::files::read_regular(&path, MAX_SECRET_BYTES)
                        .map_err(|e| match e.kind() {
                            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::FileTooLarge => e.to_string(),
                            kind => kind.to_string(),
                        })
                        .and_then(|bytes| String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned()))
                        .map_err(|e| format!("secrets.{key}: cannot read `{}`: {e}", path.display()))?;
                    if text.ends_with('\n') {
                        text.pop();
                        if text.ends_with('\r') {
                            text.pop();
                        }
                    }
                    (text, SecretSource::File(path))
                }
                _ => return Err(format!("secrets.{key}: give exactly one of `env` or `file`")),
            };
            secrets.insert(key, Secret { value, source });
        }
        Ok(Manifest {
            subscriptions,
            limits,
            config: raw.config,
            dirs,
            replay,
            ordered: raw.ordered,
            http,
            secrets,
        })
    }

    /// Creates the writable directory grants that do not exist yet, then
    /// pins every grant to the directory there ([`PinnedDir`]). Call it once
    /// the plugin has passed the signature check and the policy: a refused
    /// manifest must not create anything.
    ///
    /// # Errors
    /// A message naming the grant (`dirs[i].host`) that could not be
    /// created, or no longer resolves to the path checked.
    pub fn pin_dirs(&self) -> Result<Vec<PinnedDir>, String> {
        self.dirs
            .iter()
            .enumerate()
            .map(|(i, grant)| {
                let fail = |e: String| format!("dirs[{i}].host: `{}`: {e}", grant.host.display());
                if grant.writable && is_missing(&grant.host) {
                    create_missing(&grant.host).map_err(fail)?;
                }
                let (dev, ino) = identity(&grant.host).map_err(fail)?;
                Ok(PinnedDir {
                    grant: grant.clone(),
                    dev,
                    ino,
                })
            })
            .collect()
    }

    /// The `[limits]` this manifest raises above `base`: `(field, asked,
    /// default)` in the manifest's own names and units (`deadline_ms`,
    /// `memory_mib`, …), for the fields where more is more permissive (see
    /// [`crate::policy`]).
    pub fn raised_limits(&self, base: &Limits) -> Vec<(&'static str, u64, u64)> {
        let o = &self.limits;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mib = |b: usize| (b as u64) >> 20;
        let count = |n: usize| n as u64;
        let kib = |b: usize| (b as u64) >> 10;
        // More failures before quarantine is more host time spent on a
        // failing plugin; 0 (never quarantined) is more than any number.
        let tolerated = |n: u32| if n == 0 { u64::MAX } else { u64::from(n) };
        let asked: [(&'static str, Option<u64>, u64); 15] = [
            (
                "quarantine_after",
                o.quarantine_after.map(tolerated),
                tolerated(base.quarantine_after),
            ),
            ("fuel", o.fuel, base.fuel),
            ("deadline_ms", o.deadline.map(ms), ms(base.deadline)),
            ("memory_mib", o.memory_bytes.map(mib), mib(base.memory_bytes)),
            (
                "queue_capacity",
                o.queue_capacity.map(count),
                count(base.queue_capacity),
            ),
            (
                "emits_per_event",
                o.emits_per_event.map(u64::from),
                u64::from(base.emits_per_event),
            ),
            (
                "log_lines_per_event",
                o.log_lines_per_event.map(u64::from),
                u64::from(base.log_lines_per_event),
            ),
            (
                "replay_max_events",
                o.replay_max_events.map(count),
                count(base.replay_max_events),
            ),
            (
                "replay_max_mib",
                o.replay_max_bytes.map(mib),
                mib(base.replay_max_bytes),
            ),
            ("query_fuel", o.query_fuel, base.query_fuel),
            ("query_deadline_ms", o.query_deadline.map(ms), ms(base.query_deadline)),
            ("state_fuel", o.state_fuel, base.state_fuel),
            ("state_deadline_ms", o.state_deadline.map(ms), ms(base.state_deadline)),
            ("max_batch", o.max_batch.map(count), count(base.max_batch)),
            ("batch_kib", o.batch_bytes.map(kib), kib(base.batch_bytes)),
        ];
        asked
            .into_iter()
            .filter_map(|(name, asked, default)| asked.filter(|a| *a > default).map(|a| (name, a, default)))
            .collect()
    }

    /// `base` with this manifest's overrides applied.
    pub fn apply_limits(&self, base: &Limits) -> Limits {
        let o = &self.limits;
        Limits {
            fuel: o.fuel.unwrap_or(base.fuel),
            deadline: o.deadline.unwrap_or(base.deadline),
            memory_bytes: o.memory_bytes.unwrap_or(base.memory_bytes),
            queue_capacity: o.queue_capacity.unwrap_or(base.queue_capacity),
            emits_per_event: o.emits_per_event.unwrap_or(base.emits_per_event),
            log_lines_per_event: o.log_lines_per_event.unwrap_or(base.log_lines_per_event),
            log_line_bytes: base.log_line_bytes,
            quarantine_after: o.quarantine_after.unwrap_or(base.quarantine_after),
            quarantine_backoff: o.quarantine_backoff.unwrap_or(base.quarantine_backoff),
            // Never below the first backoff, wherever each came from.
            quarantine_backoff_max: o
                .quarantine_backoff_max
                .unwrap_or(base.quarantine_backoff_max)
                .max(o.quarantine_backoff.unwrap_or(base.quarantine_backoff)),
            snapshot_every: o.snapshot_every.unwrap_or(base.snapshot_every),
            snapshot_interval: o.snapshot_interval.unwrap_or(base.snapshot_interval),
            replay_max_events: o.replay_max_events.unwrap_or(base.replay_max_events),
            replay_max_bytes: o.replay_max_bytes.unwrap_or(base.replay_max_bytes),
            query_fuel: o.query_fuel.unwrap_or(base.query_fuel),
            query_deadline: o.query_deadline.unwrap_or(base.query_deadline),
            state_fuel: o.state_fuel.unwrap_or(base.state_fuel),
            state_deadline: o.state_deadline.unwrap_or(base.state_deadline),
            max_batch: o.max_batch.unwrap_or(base.max_batch),
            batch_bytes: o.batch_bytes.unwrap_or(base.batch_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Manifest, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        Manifest::load(&path)
    }

    #[test]
    fn a_secret_written_inline_is_refused_without_quoting_it() {
        for text in [
            "[secrets]\ntoken = \"sk-live-INLINE123\"\n",
            "[secrets]\ntoken = { env = \"T\", value = \"sk-live-INLINE123\" }\n",
            "[secrets]\ntoken = { env = 7 }\n# sk-live-INLINE123\n",
            "secrets = \"sk-live-INLINE123\"\n",
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(!e.contains("INLINE123"), "{e}");
            assert!(e.contains("secrets"), "{e}");
        }
        // Other errors still quote their line.
        let e = load("[limits]\nfuel = \"lots\"\n").unwrap_err().to_string();
        assert!(e.contains("lots"), "{e}");
    }

    #[test]
    fn full_manifest_parses_and_applies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            r#"
subscriptions = ["model_responded", "tool.*"]
[limits]
fuel = 7
deadline_ms = 20
memory_mib = 8
queue_capacity = 16
query_fuel = 9
query_deadline_ms = 30
state_fuel = 11
state_deadline_ms = 40
[config]
budget_usd = "1.5"
[[dirs]]
host = "out"
guest = "/out"
writable = true
"#,
        )
        .unwrap();
        let m = Manifest::load(&path).unwrap();
        assert_eq!(m.subscriptions.as_ref().unwrap().len(), 2);
        assert_eq!(m.config["budget_usd"], "1.5");
        assert!(!dir.path().join("out").exists(), "nothing is created before the checks");
        m.pin_dirs().unwrap();
        assert!(
            dir.path().join("out").is_dir(),
            "a writable grant is created once pinned"
        );
        assert_eq!(m.dirs[0].guest, "/out");
        let l = m.apply_limits(&Limits::default());
        assert_eq!(
            (l.fuel, l.deadline, l.memory_bytes, l.queue_capacity),
            (7, Duration::from_millis(20), 8 << 20, 16)
        );
        assert_eq!(l.emits_per_event, Limits::default().emits_per_event);
        assert_eq!(
            (l.query_fuel, l.query_deadline, l.state_fuel, l.state_deadline),
            (9, Duration::from_millis(30), 11, Duration::from_millis(40))
        );
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let e = load("[limits]\nfule = 3\n").unwrap_err().to_string();
        assert!(e.contains("p.toml") && e.contains("fule"), "{e}");
        let e = load("[limits]\nmemory_mib = 100000\n").unwrap_err().to_string();
        assert!(e.contains("limits.memory_mib"), "{e}");
        let e = load("[limits]\nquery_deadline_ms = 0\n").unwrap_err().to_string();
        assert!(e.contains("limits.query_deadline_ms"), "{e}");
        let e = load("[config]\nbudget_usd = 5\n").unwrap_err().to_string();
        assert!(e.contains("budget_usd"), "{e}");
        let e = load("subscriptions = [\"a..b\"]\n").unwrap_err().to_string();
        assert!(e.contains("subscriptions") && e.contains("a..b"), "{e}");
        let e = load("[[dirs]]\nhost = \"nope\"\nguest = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dirs[0].host"), "{e}");
        let e = load("[[dirs]]\nhost = \".\"\nguest = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("dirs[0].guest"), "{e}");
        let e = load("[[dirs]]\nhost = \".\"\nguest = \"/x\"\n[[dirs]]\nhost = \".\"\nguest = \"/x/\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dirs[1].guest") && e.contains("granted twice (also dirs[0])"),
            "{e}"
        );
        let e = load("this is not toml").unwrap_err().to_string();
        assert!(e.contains("p.toml"), "{e}");
    }

    /// Parsing a manifest creates nothing, whatever it grants: a manifest
    /// the signature check or the policy refuses must leave no trace. The
    /// path checked is the one created, `..` included.
    #[test]
    fn writable_grants_are_created_only_when_pinned_where_they_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap().join("plugins");
        std::fs::create_dir(&root).unwrap();
        let path = root.join("m.toml");
        let m = Manifest::parse(
            &path,
            "[[dirs]]\nhost = \"a/b/../c/d\"\nguest = \"/d\"\nwritable = true\n\
             [[dirs]]\nhost = \"x/../../escaped\"\nguest = \"/e\"\nwritable = true\n",
        )
        .unwrap();
        assert_eq!(m.dirs[0].host, root.join("a/c/d"));
        assert_eq!(m.dirs[1].host, root.parent().unwrap().join("escaped"));
        assert!(!root.join("a").exists() && !root.join("x").exists());
        assert!(!root.parent().unwrap().join("escaped").exists());

        let m = Manifest::parse(
            &path,
            "[[dirs]]\nhost = \"a/b/../c/d\"\nguest = \"/d\"\nwritable = true\n",
        )
        .unwrap();
        let pinned = m.pin_dirs().unwrap();
        assert!(root.join("a/c/d").is_dir() && !root.join("a/b").exists());
        assert_eq!(pinned[0].grant.host, root.join("a/c/d"));
        pinned[0].verify().unwrap();
    }

    /// A granted directory moved away and replaced after the checks (by a
    /// symlink elsewhere, or another directory) is no longer granted.
    #[test]
    fn a_pinned_directory_replaced_after_the_checks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("allowed/sub")).unwrap();
        std::fs::create_dir(root.join("elsewhere")).unwrap();
        let m = Manifest::parse(
            &root.join("m.toml"),
            "[[dirs]]\nhost = \"allowed/sub\"\nguest = \"/d\"\nwritable = true\n",
        )
        .unwrap();
        let pinned = m.pin_dirs().unwrap();
        pinned[0].verify().unwrap();
        std::fs::rename(root.join("allowed/sub"), root.join("allowed/sub.old")).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("allowed/sub")).unwrap();
        let e = pinned[0].verify().unwrap_err();
        assert!(
            e.contains(&root.join("allowed/sub").display().to_string()) && e.contains("elsewhere"),
            "{e}"
        );
        std::fs::remove_file(root.join("allowed/sub")).unwrap();
        std::fs::create_dir(root.join("allowed/sub")).unwrap();
        let e = pinned[0].verify().unwrap_err();
        assert!(e.contains("replaced"), "{e}");
        std::fs::remove_dir(root.join("allowed/sub")).unwrap();
        std::fs::rename(root.join("allowed/sub.old"), root.join("allowed/sub")).unwrap();
        pinned[0].verify().unwrap();
    }

    #[test]
    fn empty_manifest_grants_nothing() {
        let m = load("").unwrap();
        assert!(m.subscriptions.is_none() && m.config.is_empty() && m.dirs.is_empty());
        assert_eq!(m.apply_limits(&Limits::default()), Limits::default());
    }
}
