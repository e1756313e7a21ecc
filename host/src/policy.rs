//! The capability policy: a host-side TOML file bounding what plugin
//! manifests may grant, per plugin name or per signing key.
//!
//! A manifest is written by whoever ships the plugin; the policy by whoever
//! runs the host. Without a policy every manifest is taken as written
//! (plugbus's behaviour before policies). With one, each plugin is checked
//! against exactly one rule, the most specific that applies:
//! `[plugin.NAME]`, else `[key.KEYID]` for the key that signed it (see
//! [`crate::signature`]), else `[default]` (which, absent, allows nothing
//! beyond the bus defaults). Rules are not combined: a `[plugin.NAME]` rule
//! replaces the signer's `[key.KEYID]` rule. It applies to any file of that
//! name, signed or not, so grants meant for a signer belong in `[key.KEYID]`
//! with `--require-signed` (docs/trust.md). A manifest asking for more than
//! its rule allows is refused, naming the rule and the grant:
//!
//! ```toml
//! [default]                      # no directories, no catch-up, no raised limits
//!
//! [plugin.audit-log]
//! dirs = [{ path = "/var/lib/plugbus/audit", writable = true }]
//!
//! [key.1AE249EE88D3B81B]         # anything our CI signed
//! replay = true                  # may ask for replay = "all" / "since:…"
//! limits = { memory_mib = 256, fuel = 200_000_000 }
//! http = ["https://*.example.com", "http://127.0.0.1:4318"]
//! http_addresses = ["10.0.0.0/8"]
//! secret_env = ["PLUGBUS_WEBHOOK_URL", "ALERTS_*"]
//! secret_dirs = ["/etc/plugbus/secrets"]
//! ```
//!
//! - `dirs`: host directories a manifest's `[[dirs]]` may grant, each with
//!   everything below it; `writable = true` allows read-write grants there
//!   too. Paths are resolved (symlinks, `..`) before they are compared; a
//!   relative path is relative to the policy file.
//! - `replay`: whether the manifest may ask for a catch-up from the log.
//! - `http`: origins a manifest's `[http] allow` may list: each must be one
//!   of these, or within a `*.name` one (same scheme and port). None: no
//!   outbound requests at all.
//! - `http_addresses`: ranges a manifest's `[http] allow_addresses` may
//!   grant names to resolve into (each must lie within one of these). A
//!   literal-IP origin the rule allows brings its own address.
//! - `secret_env`: host environment variables a manifest's `[secrets]` may
//!   read (`{ env = "NAME" }`); a trailing `*` matches names starting with
//!   what precedes it. None: no secret from the environment.
//! - `secret_dirs`: directories a `{ file = "…" }` secret may be read from,
//!   each with everything below it (resolved as for `dirs`). None: no
//!   secret from a file. A plugin could send a secret's value out through
//!   a granted origin, so which secrets it may read is the operator's call.
//! - `limits` also caps the `[http]` limits, as `"http.per_second"` and so
//!   on (quoted keys): one above its default needs a cap at or above it.
//! - `limits`: the highest value of each `[limits]` field (same names and
//!   units as the manifest) a manifest may raise it to; a limit not listed
//!   may not be raised above the bus default. Lowering a limit is always
//!   allowed. `quarantine_after` (failures in a row before quarantine) is
//!   one: `0` (never quarantined) is above any number, in a manifest and
//!   in a cap alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::http::{HostRule, IpRange, Origin, is_subdomain};
use crate::limits::Limits;
use crate::manifest::{CatchUp, Manifest, SecretSource};
use crate::signature::Signer;

/// Most bytes a policy file may have: a policy is a few rules; a bigger
/// file is a wrong path.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("policy {}: {reason}", path.display())]
pub struct PolicyFileError {
    /// The policy file.
    pub path: PathBuf,
    /// What is wrong (for TOML errors, with the line).
    pub reason: String,
}

/// A manifest asking for more than its rule allows.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused by the capability policy ({rule} in {}): {reason}", file.display())]
pub struct PolicyViolation {
    /// The rule that applied: `[plugin.NAME]`, `[key.ID]` or `[default]`.
    pub rule: String,
    /// The policy file.
    pub file: PathBuf,
    /// Which grant exceeded it.
    pub reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    default: Option<RawRule>,
    #[serde(default)]
    plugin: BTreeMap<String, RawRule>,
    #[serde(default)]
    key: BTreeMap<String, RawRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    dirs: Vec<RawDir>,
    #[serde(default)]
    replay: bool,
    #[serde(default)]
    limits: BTreeMap<String, u64>,
    #[serde(default)]
    http: Vec<String>,
    #[serde(default)]
    http_addresses: Vec<String>,
    #[serde(default)]
    secret_env: Vec<String>,
    #[serde(default)]
    secret_dirs: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    path: PathBuf,
    #[serde(default)]
    writable: bool,
}

/// One rule, resolved.
#[derive(Debug, Default)]
struct Rule {
    dirs: Vec<(PathBuf, bool)>,
    replay: bool,
    limits: BTreeMap<String, u64>,
    http: Vec<Origin>,
    http_addresses: Vec<IpRange>,
    secret_env: Vec<String>,
    secret_dirs: Vec<PathBuf>,
}

/// A capability policy read from a file (see the module docs).
#[derive(Debug)]
pub struct Policy {
    file: PathBuf,
    default: Rule,
    plugins: BTreeMap<String, Rule>,
    /// By key id (the number: ids are written with or without leading zeros).
    keys: BTreeMap<u64, Rule>,
}

impl Policy {
    /// Reads and checks the policy at `path`.
    ///
    /// # Errors
    /// [`PolicyFileError`] naming the file: unreadable, not TOML, an unknown
    /// field or limit name.
    pub fn read(path: impl AsRef<Path>) -> Result<Policy, PolicyFileError> {
        let path = path.as_ref();
        let err = |reason: String| PolicyFileError {
            path: path.to_owned(),
            reason,
        };
        // A regular file only, and bounded: a FIFO would wait forever and
        // `/dev/zero` would fill memory.
        let bytes = crate::files::read_regular(path, MAX_POLICY_BYTES).map_err(|e| err(format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8 text: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Policy::parse(path, base, &text)
    }

    /// Parses policy `text` (read from `file`; relative directories are
    /// relative to `base`).
    ///
    /// # Errors
    /// As [`Policy::read`].
    pub fn parse(file: &Path, base: &Path, text: &str) -> Result<Policy, PolicyFileError> {
        let err = |reason: String| PolicyFileError {
            path: file.to_owned(),
            reason,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let resolve = |name: &str, rule: RawRule| -> Result<Rule, PolicyFileError> {
            for limit in rule.limits.keys() {
                if !RAISABLE.contains(&limit.as_str()) && !HTTP_RAISABLE.contains(&limit.as_str()) {
                    return Err(err(format!(
                        "{name}: unknown limit `{limit}` (one of: {}, {})",
                        RAISABLE.join(", "),
                        HTTP_RAISABLE.join(", ")
                    )));
                }
            }
            let absolute = |path: PathBuf| resolved(&if path.is_absolute() { path } else { base.join(path) });
            let dirs = rule.dirs.into_iter().map(|d| (absolute(d.path), d.writable)).collect();
            let secret_dirs = rule.secret_dirs.into_iter().map(absolute).collect();
            let http = rule
                .http
                .iter()
                .map(|o| Origin::parse(o).map_err(|e| err(format!("{name}: http: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let http_addresses = rule
                .http_addresses
                .iter()
                .map(|a| IpRange::parse(a).map_err(|e| err(format!("{name}: http_addresses: {e}"))))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Rule {
                dirs,
                replay: rule.replay,
                limits: rule.limits,
                http,
                http_addresses,
                secret_env: rule.secret_env,
                secret_dirs,
            })
        };
        let default = match raw.default {
            Some(rule) => resolve("[default]", rule)?,
            None => Rule::default(),
        };
        let mut plugins = BTreeMap::new();
        for (name, rule) in raw.plugin {
            let label = format!("[plugin.{}]", crate::text::printable(&name));
            // A rule no plugin could ever match is a typo or a path
            // (`[plugin."../evil"]`): refused, not silently unused.
            if !crate::manifest::valid_plugin_name(&name) || name == crate::event::HOST_SOURCE {
                return Err(err(format!(
                    "{label}: `{}` cannot name a plugin (a plugin's name is its file's: 1 to 64 letters, digits, `-`, `_` and `.`, not starting with `.`, and not `{}`)",
                    crate::text::printable(&name),
                    crate::event::HOST_SOURCE
                )));
            }
            let rule = resolve(&label, rule)?;
            plugins.insert(name, rule);
        }
        let mut keys = BTreeMap::new();
        let mut spelt = BTreeMap::new();
        for (id, rule) in raw.key {
            let label = format!("[key.{id}]");
            let number = crate::signature::parse_key_id(&id)
                .ok_or_else(|| err(format!("{label}: `{id}` is not a key id (hex, as minisign prints it)")))?;
            if let Some(other) = spelt.insert(number, id.clone()) {
                // One key written two ways (case, leading zeros): which rule
                // won would depend on the spellings' order, not the file's.
                return Err(err(format!(
                    "{label}: the same key as [key.{other}]; write each key's rule once"
                )));
            }
            keys.insert(number, resolve(&label, rule)?);
        }
        Ok(Policy {
            file: file.to_owned(),
            default,
            plugins,
            keys,
        })
    }

    /// Checks plugin `name` (signed by `signer`, if it is) whose manifest is
    /// `manifest`, on a bus whose defaults are `base`.
    ///
    /// # Errors
    /// [`PolicyViolation`] naming the rule and the first grant it refuses.
    pub fn check(
        &self,
        name: &str,
        signer: Option<&Signer>,
        manifest: &Manifest,
        base: &Limits,
    ) -> Result<(), PolicyViolation> {
        let (label, rule) = if let Some(rule) = self.plugins.get(name) {
            (format!("[plugin.{name}]"), rule)
        } else if let Some((id, rule)) = signer.and_then(|s| {
            let number = crate::signature::parse_key_id(&s.key_id)?;
            self.keys.get(&number).map(|r| (&s.key_id, r))
        }) {
            (format!("[key.{id}]"), rule)
        } else {
            ("[default]".to_owned(), &self.default)
        };
        let refuse = |reason: String| PolicyViolation {
            rule: label.clone(),
            file: self.file.clone(),
            reason,
        };
        for grant in &manifest.dirs {
            let host = resolved(&grant.host);
            let allowed = rule
                .dirs
                .iter()
                .any(|(dir, writable)| host.starts_with(dir) && (*writable || !grant.writable));
            if !allowed {
                let mode = if grant.writable { "read-write" } else { "read-only" };
                return Err(refuse(format!(
                    "[[dirs]] grants {} {mode}, which the rule does not allow{}",
                    host.display(),
                    if rule.dirs.is_empty() {
                        " (it allows no directory)".to_owned()
                    } else {
                        format!(
                            " (it allows: {})",
                            rule.dirs
                                .iter()
                                .map(|(d, w)| format!("{}{}", d.display(), if *w { " rw" } else { " ro" }))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                )));
            }
        }
        if manifest.replay != CatchUp::None && !rule.replay {
            return Err(refuse(
                "`replay` asks for a catch-up from the event log, which the rule does not allow (replay = true)".into(),
            ));
        }
        if let Some(grant) = &manifest.http {
            for origin in &grant.allow {
                if !rule.http.iter().any(|p| origin_within(origin, p)) {
                    return Err(refuse(format!(
                        "[http] allow lists {}, which the rule does not allow ({})",
                        origin.text,
                        if rule.http.is_empty() {
                            "it allows no outbound requests".to_owned()
                        } else {
                            format!(
                                "it allows: {}",
                                rule.http.iter().map(|o| o.text.as_str()).collect::<Vec<_>>().join(", ")
                            )
                        }
                    )));
                }
            }
            let d = crate::http::HttpGrant::default();
            let ms = |t: std::time::Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
            for (limit, asked, default) in [
                (
                    "http.max_concurrent",
                    u64::from(grant.max_concurrent),
                    u64::from(d.max_concurrent),
                ),
                ("http.per_second", u64::from(grant.per_second), u64::from(d.per_second)),
                (
                    "http.request_body_kib",
                    (grant.request_body_bytes >> 10) as u64,
                    (d.request_body_bytes >> 10) as u64,
                ),
                (
                    "http.response_body_kib",
                    (grant.response_body_bytes >> 10) as u64,
                    (d.response_body_bytes >> 10) as u64,
                ),
                (
                    "http.connect_timeout_ms",
                    ms(grant.connect_timeout),
                    ms(d.connect_timeout),
                ),
                ("http.timeout_ms", ms(grant.timeout), ms(d.timeout)),
                ("http.io_budget_ms", ms(grant.io_budget), ms(d.io_budget)),
            ] {
                if asked <= default {
                    continue;
                }
                match rule.limits.get(limit) {
                    Some(cap) if asked <= *cap => {}
                    Some(cap) => {
                        return Err(refuse(format!(
                            "[http] {} = {asked} is above the rule's cap of {cap}",
                            &limit[5..]
                        )));
                    }
                    None => {
                        return Err(refuse(format!(
                            "[http] {} = {asked} raises the default of {default}, which the rule does not allow (limits.\"{limit}\")",
                            &limit[5..]
                        )));
                    }
                }
            }
            for range in &grant.allow_addresses {
                if !rule.http_addresses.iter().any(|p| p.covers(range)) {
                    return Err(refuse(format!(
                        "[http] allow_addresses grants {range}, which the rule's http_addresses does not cover"
                    )));
                }
            }
        }
        for (key, secret) in &manifest.secrets {
            let allowed = match secret.source() {
                SecretSource::Env(name) => rule.secret_env.iter().any(|allowed| match allowed.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == allowed,
                }),
                SecretSource::File(path) => {
                    let path = resolved(path);
                    rule.secret_dirs.iter().any(|dir| path.starts_with(dir))
                }
            };
            if !allowed {
                let (what, rule_field, listed) = match secret.source() {
                    SecretSource::Env(name) => (
                        format!("environment variable {name}"),
                        "secret_env",
                        rule.secret_env.join(", "),
                    ),
                    SecretSource::File(path) => (
                        format!("file {}", resolved(path).display()),
                        "secret_dirs",
                        rule.secret_dirs
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                };
                return Err(refuse(format!(
                    "[secrets] {key} reads the {what}, which the rule does not allow ({})",
                    if listed.is_empty() {
                        format!("its {rule_field} is empty")
                    } else {
                        format!("{rule_field}: {listed}")
                    }
                )));
            }
        }
        for (limit, asked, default) in manifest.raised_limits(base) {
            // `quarantine_after = 0` is "never", in a cap as in a manifest.
            let never = |v: u64| limit == "quarantine_after" && (v == 0 || v == u64::MAX);
            let shown = |v: u64| {
                if never(v) {
                    "0 (never)".to_owned()
                } else {
                    v.to_string()
                }
            };
            match rule
                .limits
                .get(limit)
                .map(|cap| if never(*cap) { u64::MAX } else { *cap })
            {
                Some(cap) if asked <= cap => {}
                Some(cap) => {
                    return Err(refuse(format!(
                        "[limits] {limit} = {} is above the rule's cap of {}",
                        shown(asked),
                        shown(cap)
                    )));
                }
                None => {
                    return Err(refuse(format!(
                        "[limits] {limit} = {} raises the bus default of {}, which the rule does not allow",
                        shown(asked),
                        shown(default)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The `[limits]` fields a policy caps: those where a higher value gives a
/// plugin more (time, memory, output, buffered history).
pub(crate) const RAISABLE: &[&str] = &[
    "quarantine_after",
    "fuel",
    "deadline_ms",
    "memory_mib",
    "queue_capacity",
    "emits_per_event",
    "log_lines_per_event",
    "replay_max_events",
    "replay_max_mib",
    "query_fuel",
    "query_deadline_ms",
    "state_fuel",
    "state_deadline_ms",
    "max_batch",
    "batch_kib",
];

/// Whether manifest origin `asked` is within policy origin `allowed`.
fn origin_within(asked: &Origin, allowed: &Origin) -> bool {
    if asked.scheme != allowed.scheme || asked.port != allowed.port {
        return false;
    }
    match (&asked.host, &allowed.host) {
        (HostRule::Name(a), HostRule::Name(b)) => a == b,
        (HostRule::Ip(a), HostRule::Ip(b)) => a == b,
        (HostRule::Name(a), HostRule::Subdomains(p)) => is_subdomain(a, p),
        (HostRule::Subdomains(a), HostRule::Subdomains(p)) => a == p || is_subdomain(a, p),
        _ => false,
    }
}

/// The `[http]` limits a policy caps, as `limits` keys (`"http.per_second"`).
pub(crate) const HTTP_RAISABLE: &[&str] = &[
    "http.max_concurrent",
    "http.per_second",
    "http.request_body_kib",
    "http.response_body_kib",
    "http.connect_timeout_ms",
    "http.timeout_ms",
    "http.io_budget_ms",
];

/// `path` with symlinks and `..` resolved when it exists (as written otherwise).
fn resolved(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_policies_name_the_file_and_the_field() {
        let err = Policy::parse(
            Path::new("p.toml"),
            Path::new("."),
            "[plugin.x]\nlimits = { fuell = 1 }\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("p.toml") && err.to_string().contains("fuell"),
            "{err}"
        );
        let err = Policy::parse(Path::new("p.toml"), Path::new("."), "[plugin.x]\ndir = []\n").unwrap_err();
        assert!(err.to_string().contains("dir"), "{err}");
        // A rule no plugin file could ever be named for.
        for name in ["\"../evil\"", "\".hidden\"", "host", "\"a b\""] {
            let err = Policy::parse(Path::new("p.toml"), Path::new("."), &format!("[plugin.{name}]\n")).unwrap_err();
            assert!(err.to_string().contains("cannot name a plugin"), "{name}: {err}");
        }
        let err = Policy::parse(Path::new("p.toml"), Path::new("."), "not toml [").unwrap_err();
        assert!(err.to_string().contains("p.toml"), "{err}");
        // A FIFO or a device where the policy should be: refused, never
        // waited on or read without end.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("policy.toml");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for path in [fifo, PathBuf::from("/dev/zero")] {
            let read = path.clone();
            let err = crate::files::finishes("reading the policy", move || {
                Policy::read(&read).map(|_| ()).map_err(|e| e.to_string())
            })
            .unwrap_err();
            assert!(err.contains("not a regular file"), "{}: {err}", path.display());
        }
        // One key spelt two ways is one rule written twice.
        let err = Policy::parse(
            Path::new("p.toml"),
            Path::new("."),
            "[key.fc6b4a8f353961ba]\nreplay = true\n[key.FC6B4A8F353961BA]\nreplay = false\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("the same key as"), "{err}");
    }

    /// A plugin could send a secret's value out through a granted origin:
    /// which host variables and files it may read is bounded by the rule.
    #[test]
    fn secrets_must_come_from_the_rules_variables_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("secrets");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("token"), "t0ken\n").unwrap();
        std::fs::write(dir.path().join("elsewhere"), "x").unwrap();
        // SAFETY: set before any thread of this test reads the environment;
        // the names are this test's own.
        unsafe {
            std::env::set_var("PLUGBUS_POLICY_TEST_URL", "https://hooks.example.com/T0");
            std::env::set_var("PLUGBUS_POLICY_TEST_OTHER", "x");
            std::env::set_var("ALERTS_POLICY_TEST_KEY", "x");
        }
        let policy = Policy::parse(
            Path::new("p.toml"),
            dir.path(),
            "[default]\n[plugin.alerts]\nsecret_env = [\"PLUGBUS_POLICY_TEST_URL\", \"ALERTS_*\"]\nsecret_dirs = [\"secrets\"]\n",
        )
        .unwrap();
        let manifest =
            |secrets: &str| Manifest::parse(&dir.path().join("m.toml"), &format!("[secrets]\n{secrets}\n")).unwrap();
        let base = Limits::default();
        let check = |name: &str, secrets: &str| policy.check(name, None, &manifest(secrets), &base);
        assert!(check("alerts", "url = { env = \"PLUGBUS_POLICY_TEST_URL\" }").is_ok());
        assert!(check("alerts", "k = { env = \"ALERTS_POLICY_TEST_KEY\" }").is_ok());
        assert!(check("alerts", "t = { file = \"secrets/token\" }").is_ok());
        for (secrets, names) in [
            (
                "o = { env = \"PLUGBUS_POLICY_TEST_OTHER\" }",
                "environment variable PLUGBUS_POLICY_TEST_OTHER",
            ),
            ("e = { file = \"elsewhere\" }", "elsewhere"),
            ("e = { file = \"secrets/../elsewhere\" }", "elsewhere"),
        ] {
            let e = check("alerts", secrets).unwrap_err();
            assert!(e.to_string().contains(names) && e.rule == "[plugin.alerts]", "{e}");
        }
        let e = check("other", "url = { env = \"PLUGBUS_POLICY_TEST_URL\" }").unwrap_err();
        assert!(
            e.rule == "[default]" && e.reason.contains("its secret_env is empty"),
            "{e}"
        );
    }

    #[test]
    fn http_grants_must_lie_within_the_rules_origins_and_ranges() {
        let policy = Policy::parse(
            Path::new("p.toml"),
            Path::new("."),
            "[default]\n[plugin.alerts]\nhttp = [\"https://*.example.com\", \"http://127.0.0.1:4318\"]\nhttp_addresses = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let manifest = |http: &str| Manifest::parse(Path::new("m.toml"), &format!("[http]\n{http}\n")).unwrap();
        let base = Limits::default();
        let ok = |name: &str, http: &str| policy.check(name, None, &manifest(http), &base);
        assert!(
            ok(
                "alerts",
                "allow = [\"https://hooks.example.com\", \"https://*.eu.example.com\"]"
            )
            .is_ok()
        );
        assert!(ok("alerts", "allow = [\"http://127.0.0.1:4318\"]").is_ok());
        assert!(
            ok(
                "alerts",
                "allow = [\"https://a.example.com\"]\nallow_addresses = [\"10.1.0.0/16\"]"
            )
            .is_ok()
        );
        for (name, http, says) in [
            ("alerts", "allow = [\"https://example.com\"]", "https://example.com"),
            (
                "alerts",
                "allow = [\"http://hooks.example.com\"]",
                "http://hooks.example.com",
            ),
            ("alerts", "allow = [\"http://127.0.0.1:4319\"]", "127.0.0.1:4319"),
            (
                "alerts",
                "allow = [\"https://a.example.com\"]\nallow_addresses = [\"127.0.0.1\"]",
                "127.0.0.1/32",
            ),
            (
                "other",
                "allow = [\"https://hooks.example.com\"]",
                "allows no outbound requests",
            ),
        ] {
            let e = ok(name, http).unwrap_err().to_string();
            assert!(e.contains(says), "{http}: {e}");
        }
    }

    /// Switching quarantine off (or tolerating more failures) spends more
    /// of the host on a failing plugin: a raise like any other.
    #[test]
    fn quarantine_after_is_capped_and_zero_is_never() {
        let policy = Policy::parse(
            Path::new("p.toml"),
            Path::new("."),
            "[default]\n[plugin.lenient]\nlimits = { quarantine_after = 20 }\n[plugin.never]\nlimits = { quarantine_after = 0 }\n",
        )
        .unwrap();
        let base = Limits::default();
        let check = |name: &str, n: u32| {
            let manifest =
                Manifest::parse(Path::new("m.toml"), &format!("[limits]\nquarantine_after = {n}\n")).unwrap();
            policy.check(name, None, &manifest, &base).map_err(|e| e.to_string())
        };
        assert!(check("strict", 3).is_ok(), "lowering is allowed");
        let e = check("strict", 0).unwrap_err();
        assert!(
            e.contains("quarantine_after = 0 (never) raises the bus default of 5"),
            "{e}"
        );
        assert!(check("strict", 6).unwrap_err().contains("raises the bus default"));
        assert!(check("lenient", 20).is_ok());
        let e = check("lenient", 0).unwrap_err();
        assert!(e.contains("above the rule's cap of 20"), "{e}");
        assert!(check("never", 0).is_ok());
    }
}
