//! Registry credentials from Docker's client configuration, as `docker
//! login`, `oras login` and `crane auth login` leave them: the file
//! `config.json` in `$DOCKER_CONFIG`, else `~/.docker`. For one registry, in
//! Docker's order: its credential helper (`credHelpers`), then a stored
//! `auths` entry (`auth`: base64 of `user:password`, or `username` and
//! `password`), then the default helper (`credsStore`). A helper is the
//! program `docker-credential-<name>` on `PATH`, asked with `get` and the
//! registry on stdin, answering `{"Username": ..., "Secret": ...}`.
//!
//! No file, or nothing for the registry: anonymous. A file that does not
//! parse, an entry that does not decode, or a helper that fails for any
//! reason other than "no credentials" is an error naming the file or the
//! helper (a pull silently made anonymous would fail later with a less
//! helpful 401). Identity tokens (`identitytoken`, OAuth2 refresh tokens)
//! are not used.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

/// The parts of `config.json` read here.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// A helper's answer to `get`.
#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// `(user, password)` for `registry` (`host[:port]`) from Docker's client
/// configuration, or `None` (anonymous).
///
/// # Errors
/// The reason, naming the file or helper at fault.
pub(crate) fn lookup(registry: &str) -> Result<Option<(String, String)>, String> {
    let Some(path) = config_path() else {
        return Ok(None);
    };
    lookup_in(&path, registry)
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn config_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    Some(dir.join("config.json"))
}

fn lookup_in(path: &Path, registry: &str) -> Result<Option<(String, String)>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let config: DockerConfig = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a Docker client configuration: {e}", path.display()))?;
    if let Some(helper) = config.cred_helpers.get(registry) {
        return ask_helper(helper, registry);
    }
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| registry_of_key(key) == registry)
        .map(|(_, entry)| entry);
    if let Some(entry) = entry {
        let bad = |why: &str| format!("{}: auths entry for {registry}: {why}", path.display());
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("`auth` is not base64"))?;
            let text = String::from_utf8(bytes).map_err(|_| bad("`auth` is not UTF-8"))?;
            let (user, password) = text.split_once(':').ok_or_else(|| bad("`auth` is not user:password"))?;
            return Ok(Some((user.to_owned(), password.to_owned())));
        }
        if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
            return Ok(Some((user.clone(), password.clone())));
        }
    }
    match &config.creds_store {
        Some(helper) if !helper.is_empty() => ask_helper(helper, registry),
        _ => Ok(None),
    }
}

/// The registry an `auths` key names: keys may carry a scheme and a path
/// (`https://registry.example.com/v1/`).
fn registry_of_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// Runs `docker-credential-<helper> get` for `registry`.
fn ask_helper(helper: &str, registry: &str) -> Result<Option<(String, String)>, String> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("credential helper {program}: cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its answer below.
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("credential helper {program}: {e}"))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        // The protocol's answer for a registry it holds nothing for.
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!(
            "credential helper {program} failed for {registry} ({}): {said}",
            out.status
        ));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!("credential helper {program}: its answer for {registry} is not the helper protocol's JSON: {e}")
    })?;
    Ok(Some((answer.username, answer.secret)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        dir
    }

    #[test]
    fn auths_entries_are_found_by_registry_and_decoded() {
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:s3cret:with:colons");
        let dir = config(&format!(
            r#"{{"auths": {{"https://registry.example.com/v1/": {{"auth": "{auth}"}},
                "127.0.0.1:5000": {{"username": "u", "password": "p"}}}}}}"#
        ));
        let path = dir.path().join("config.json");
        assert_eq!(
            lookup_in(&path, "registry.example.com").unwrap(),
            Some(("ci".into(), "s3cret:with:colons".into()))
        );
        assert_eq!(
            lookup_in(&path, "127.0.0.1:5000").unwrap(),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(lookup_in(&path, "other.example.com").unwrap(), None);
        assert_eq!(lookup_in(&dir.path().join("missing.json"), "x").unwrap(), None);
    }

    #[test]
    fn bad_files_and_entries_are_errors_naming_them() {
        let dir = config("{ not json");
        let e = lookup_in(&dir.path().join("config.json"), "r").unwrap_err();
        assert!(
            e.contains("config.json") && e.contains("not a Docker client configuration"),
            "{e}"
        );
        let dir = config(r#"{"auths": {"r": {"auth": "%%%"}}}"#);
        let e = lookup_in(&dir.path().join("config.json"), "r").unwrap_err();
        assert!(e.contains("auths entry for r") && e.contains("base64"), "{e}");
        let dir = config(r#"{"credHelpers": {"r": "plugbus-no-such-helper"}}"#);
        let e = lookup_in(&dir.path().join("config.json"), "r").unwrap_err();
        assert!(e.contains("docker-credential-plugbus-no-such-helper"), "{e}");
    }
}
