//! `plugins.lock`: remote plugins a plugin directory pins by digest, which
//! `plugbus serve` (and `plugbus pull --plugins DIR` without a reference) installs before the bus
//! starts.
//!
//! ```toml
//! # written by `plugbus pull --lock`; read by `plugbus serve`
//! [[plugin]]
//! name = "cost-tracker"
//! reference = "oci://registry.example.com/plugbus/cost-tracker:1.2"
//! digest = "sha256:…"   # the manifest: what is pulled (the tag is informational)
//! wasm = "sha256:…"     # the component: an installed copy with this digest is kept
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::install::{LoadCheck, Pulled};
use super::reference::PluginRef;
use super::{OciError, Registry, transfer};
use crate::signature::SignaturePolicy;

/// The lock file's name inside a plugin directory.
pub const LOCK_FILE: &str = "plugins.lock";

/// Most bytes a lock file may have: a few hundred bytes per plugin.
const MAX_LOCK_BYTES: u64 = 1 << 20;

/// The remote plugins of a directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// One entry per plugin, by name.
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<LockEntry>,
}

/// One remote plugin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    /// The plugin's name (`NAME.wasm` in the directory).
    pub name: String,
    /// Where it came from, as given to `plugbus pull`.
    pub reference: String,
    /// The artifact's manifest digest: what is pulled.
    pub digest: String,
    /// The component's digest: an installed copy with it is kept as is.
    pub wasm: String,
}

impl LockEntry {
    /// Installs this plugin into `dir` unless it is installed already
    /// (`Ok(None)`: its component has the `wasm` digest and its files were
    /// installed from this manifest `digest`, as the hidden `.NAME.oci-digest`
    /// records): pulled by its manifest
    /// digest, never its tag, under `policy` and, when given, `check`. A
    /// `plugins.lock` entry and a fleet's set entry install the same way.
    ///
    /// # Errors
    /// The pull's [`OciError`], naming the pinned reference, or
    /// [`OciError::Digest`] when the artifact's component is not the entry's
    /// `wasm` digest (refused before any of it is fetched: nothing is
    /// written to `dir`).
    pub async fn install(
        &self,
        dir: &Path,
        registry: &Registry,
        policy: &SignaturePolicy,
        check: Option<&LoadCheck>,
    ) -> Result<Option<Pulled>, OciError> {
        let installed = dir.join(format!("{}.wasm", self.name));
        // Installed from this very artifact, and the component unchanged
        // since: nothing to fetch. The component alone does not say (a
        // version may change only its manifest or signature): without the
        // record, the artifact is pulled and only what differs is written.
        let marker = super::install::digest_marker(dir, &self.name);
        if super::install::recorded_digest(&marker).as_deref() == Some(self.digest.as_str())
            && std::fs::read(&installed).is_ok_and(|bytes| super::sha256_digest(&bytes) == self.wasm)
        {
            return Ok(None);
        }
        let pinned = self.reference.parse::<PluginRef>()?.pinned(&self.digest);
        // The entry's `wasm` is checked against the artifact's component
        // before anything is fetched or installed.
        let pulled = transfer::pull_inner(
            &pinned,
            dir,
            registry,
            policy,
            Some(&self.name),
            Some(&self.wasm),
            check,
        )
        .await?;
        Ok(Some(pulled))
    }
}

/// What [`sync_lock`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Plugins pulled and installed.
    pub installed: Vec<Pulled>,
    /// Plugins whose installed component already had the locked digest.
    pub present: Vec<String>,
}

impl Lock {
    /// The lock file of `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(LOCK_FILE)
    }

    /// Reads `dir`'s lock file; `None` when there is none.
    ///
    /// # Errors
    /// [`OciError::Lock`] naming the file and the fault (an unreadable file,
    /// bad TOML, an entry with a bad name, reference or digest, a name
    /// twice).
    pub fn read(dir: &Path) -> Result<Option<Lock>, OciError> {
        let path = Lock::path(dir);
        let bad = |reason: String| OciError::Lock {
            path: path.clone(),
            reason,
        };
        // A regular file only, and bounded: anyone who can write the plugin
        // directory could put a FIFO (a wait forever) or a link to
        // `/dev/zero` (memory filled) here.
        let bytes = match crate::files::read_regular(&path, MAX_LOCK_BYTES) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
            Ok(bytes) => bytes,
        };
        let text = String::from_utf8(bytes).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
        let lock: Lock = toml::from_str(&text).map_err(|e| bad(e.to_string().trim_end().to_owned()))?;
        let mut names = std::collections::BTreeSet::new();
        for entry in &lock.plugins {
            let at = |what: String| bad(format!("plugin {:?}: {what}", entry.name));
            if !crate::manifest::valid_plugin_name(&entry.name) {
                return Err(at("not a valid plugin name".to_owned()));
            }
            if !names.insert(entry.name.as_str()) {
                return Err(at("listed twice".to_owned()));
            }
            entry.reference.parse::<PluginRef>().map_err(|e| at(e.to_string()))?;
            for (field, digest) in [("digest", &entry.digest), ("wasm", &entry.wasm)] {
                if !super::is_sha256(digest) {
                    return Err(at(format!("{field} {digest:?} is not sha256:<64 hex digits>")));
                }
            }
        }
        Ok(Some(lock))
    }

    /// Adds `entry`, replacing one of the same name.
    pub fn upsert(&mut self, entry: LockEntry) {
        match self.plugins.iter_mut().find(|e| e.name == entry.name) {
            Some(slot) => *slot = entry,
            None => self.plugins.push(entry),
        }
    }

    /// Writes the lock file of `dir` (to a hidden file, then renamed).
    ///
    /// # Errors
    /// [`OciError::Io`] naming the file.
    pub fn write(&self, dir: &Path) -> Result<(), OciError> {
        let path = Lock::path(dir);
        let tmp = dir.join(format!(".{LOCK_FILE}.{}.tmp", std::process::id()));
        let io = |source| OciError::Io {
            path: path.clone(),
            source,
        };
        // Plain strings and a list of tables: serialising cannot fail.
        let body = toml::to_string(self).expect("lock serialises");
        let text = format!(
            "# Remote plugins, pinned by digest: `plugbus serve` installs them at start.\n# Written by `plugbus pull --lock`.\n\n{body}"
        );
        // Synced before the rename: after a power loss the lock is the old
        // one or the new one, never an empty file.
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(io)
    }

    /// Reads `dir`'s lock (an empty one when there is none), lets `change`
    /// edit it and writes it back, holding an exclusive lock on the hidden
    /// `.plugins.lock.guard` meanwhile: two `pull --lock` into one directory
    /// at once each keep their entry (read, change, write unguarded, one
    /// entry in three was lost).
    ///
    /// # Errors
    /// As [`read`](Self::read) and [`write`](Self::write); [`OciError::Io`]
    /// naming the guard file when it cannot be opened or locked.
    pub fn update(dir: &Path, change: impl FnOnce(&mut Lock)) -> Result<(), OciError> {
        let guard_path = dir.join(format!(".{LOCK_FILE}.guard"));
        let guard = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&guard_path)
            .and_then(|file| file.lock().map(|()| file))
            .map_err(|source| OciError::Io {
                path: guard_path.clone(),
                source,
            })?;
        let mut lock = Lock::read(dir)?.unwrap_or_default();
        change(&mut lock);
        let written = lock.write(dir);
        drop(guard); // closing the file releases its lock
        written
    }
}

/// Installs every plugin of `lock` (read from `dir` with [`Lock::read`])
/// that is not installed with its locked digest, pulling each by its
/// manifest digest (never by tag), under the same checks as
/// [`pull`](super::pull).
///
/// # Errors
/// The first plugin that cannot be installed: its [`OciError`] names the
/// reference; the plugins before it are installed, the ones after it are
/// not tried.
pub async fn sync_lock(
    dir: &Path,
    lock: &Lock,
    registry: &Registry,
    policy: &SignaturePolicy,
) -> Result<SyncReport, OciError> {
    let mut report = SyncReport::default();
    for entry in &lock.plugins {
        match entry.install(dir, registry, policy, None).await? {
            Some(pulled) => report.installed.push(pulled),
            None => report.present.push(entry.name.clone()),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Sixteen updates at once, each adding its own entry: all kept.
    #[test]
    fn updates_at_once_each_keep_their_entry() {
        let dir = tempfile::tempdir().unwrap();
        std::thread::scope(|scope| {
            for i in 0..16 {
                let dir = dir.path();
                scope.spawn(move || {
                    Lock::update(dir, |lock| {
                        lock.upsert(LockEntry {
                            name: format!("p{i}"),
                            reference: "oci://127.0.0.1:5000/p/x:1".to_owned(),
                            digest: D.to_owned(),
                            wasm: D.to_owned(),
                        });
                    })
                    .unwrap();
                });
            }
        });
        assert_eq!(Lock::read(dir.path()).unwrap().unwrap().plugins.len(), 16);
    }

    #[test]
    fn locks_round_trip_and_refuse_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Lock::read(dir.path()).unwrap().is_none());
        let mut lock = Lock::default();
        let entry = |name: &str| LockEntry {
            name: name.to_owned(),
            reference: "oci://127.0.0.1:5000/p/x:1".to_owned(),
            digest: D.to_owned(),
            wasm: D.to_owned(),
        };
        lock.upsert(entry("a"));
        lock.upsert(entry("b"));
        lock.upsert(entry("a"));
        lock.write(dir.path()).unwrap();
        assert_eq!(Lock::read(dir.path()).unwrap().unwrap(), lock);
        assert_eq!(lock.plugins.len(), 2);

        for (text, expect) in [
            (
                "[[plugin]]\nname = \"../x\"\nreference = \"oci://r.io/x:1\"\ndigest = \"D\"\nwasm = \"D\"\n",
                "valid plugin name",
            ),
            (
                "[[plugin]]\nname = \"x\"\nreference = \"x:1\"\ndigest = \"D\"\nwasm = \"D\"\n",
                "oci://",
            ),
            (
                "[[plugin]]\nname = \"x\"\nreference = \"oci://r.io/x:1\"\ndigest = \"sha256:00\"\nwasm = \"D\"\n",
                "digest",
            ),
            (
                "[[plugin]]\nname = \"x\"\nreference = \"oci://r.io/x:1\"\ndigest = \"D\"\nwasm = \"D\"\nextra = 1\n",
                "unknown field",
            ),
            (
                "[[plugin]]\nname = \"x\"\nreference = \"oci://r.io/x:1\"\ndigest = \"D\"\nwasm = \"D\"\n[[plugin]]\nname = \"x\"\nreference = \"oci://r.io/x:1\"\ndigest = \"D\"\nwasm = \"D\"\n",
                "twice",
            ),
            ("not toml [", "plugins.lock"),
        ] {
            std::fs::write(Lock::path(dir.path()), text.replace("\"D\"", &format!("\"{D}\""))).unwrap();
            let e = Lock::read(dir.path()).unwrap_err().to_string();
            assert!(e.contains(expect) && e.contains("plugins.lock"), "{expect}: {e}");
        }
        // Whoever can write the plugin directory could put a FIFO or a link
        // to /dev/zero there: refused, never waited on or read without end.
        std::fs::remove_file(Lock::path(dir.path())).unwrap();
        assert!(
            std::process::Command::new("mkfifo")
                .arg(Lock::path(dir.path()))
                .status()
                .unwrap()
                .success()
        );
        let fifo_dir = dir.path().to_owned();
        let e = crate::files::finishes("reading a FIFO lock file", move || {
            Lock::read(&fifo_dir).map(|_| ()).map_err(|e| e.to_string())
        })
        .unwrap_err();
        assert!(e.contains("plugins.lock") && e.contains("FIFO"), "{e}");
        std::fs::remove_file(Lock::path(dir.path())).unwrap();
        std::os::unix::fs::symlink("/dev/zero", Lock::path(dir.path())).unwrap();
        let e = Lock::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a device"), "{e}");
    }
}
