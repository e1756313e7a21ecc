//! Installing a pulled plugin: write to a hidden staging directory inside
//! the plugin directory (same filesystem, ignored by the watcher), verify
//! there, then rename into place with the component last, so a watching
//! bus sees the manifest and signature before the code they belong to and
//! never a half-written file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::OciError;
use super::reference::PluginRef;
use crate::signature::{SignatureError, SignaturePolicy, Signer, signature_path};

/// A last check before a pulled plugin replaces anything: given the staged
/// component (its manifest and signature beside it, under the same file
/// names), `Err(reason)` refuses it. `plugbus serve --fleet` passes one that
/// loads it as its bus would ([`crate::Bus::check_plugin`]).
pub type LoadCheck = dyn Fn(PathBuf) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync;

/// What a pull installed.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The reference pulled.
    pub reference: String,
    /// The plugin's name.
    pub name: String,
    /// The installed component, `DIR/NAME.wasm`.
    pub wasm: PathBuf,
    /// The manifest digest (`sha256:…`).
    pub digest: String,
    /// The component's digest.
    pub wasm_digest: String,
    /// Whether the artifact carried a manifest (`NAME.toml`).
    pub has_manifest: bool,
    /// Who signed it, when trusted keys were given and it is signed.
    pub signer: Option<Signer>,
    /// False when the same component, manifest and signature were installed
    /// already (nothing was written).
    pub changed: bool,
}

/// A fetched artifact, not yet on disk.
pub(crate) struct Staged<'a> {
    pub reference: &'a PluginRef,
    pub digest: &'a str,
    /// The component's digest, as its descriptor gave it (the bytes were
    /// checked against it while downloading).
    pub wasm_digest: &'a str,
    pub name: &'a str,
    pub wasm: Vec<u8>,
    pub manifest: Option<Vec<u8>>,
    pub signature: Option<Vec<u8>>,
}

/// Verifies `staged` and installs it into `dir` (see the module docs).
/// A signature the artifact does not carry is removed from `dir` (it is
/// another version's: it would refuse the new bytes); a manifest it does
/// not carry is left (it is the operator's).
pub(crate) async fn install(
    staged: Staged<'_>,
    dir: &Path,
    policy: &SignaturePolicy,
    check: Option<&LoadCheck>,
) -> Result<Pulled, OciError> {
    let reference = staged.reference;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| OciError::Io { path, source }
    };
    check_dir(dir)?;
    if let Some(bytes) = &staged.manifest {
        check_manifest_layer(bytes, || reference.to_string())?;
    }
    let wasm_name = format!("{}.wasm", staged.name);
    let target = dir.join(&wasm_name);
    let manifest_target = target.with_extension("toml");
    let signature_target = signature_path(&target);
    let same = |path: &Path, want: Option<&Vec<u8>>| match (std::fs::read(path), want) {
        (Ok(have), Some(want)) => &have == want,
        (Err(e), None) => e.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    };
    let unchanged = same(&target, Some(&staged.wasm))
        && same(&signature_target, staged.signature.as_ref())
        && (staged.manifest.is_none() || same(&manifest_target, staged.manifest.as_ref()));

    // The same check a load makes, before anything is in place: a refused
    // artifact never reaches the directory.
    let signature_file = format!("{wasm_name}.minisig");
    let signature_name = PathBuf::from(&signature_file);
    let signature_text = match &staged.signature {
        Some(bytes) => Some(std::str::from_utf8(bytes).map_err(|_| OciError::Signature {
            reference: reference.to_string(),
            source: SignatureError::Malformed {
                path: signature_name.clone(),
                reason: "not UTF-8 text".to_owned(),
            },
        })?),
        None => None,
    };
    let signer = policy
        .check_signature(&staged.wasm, &signature_name, signature_text)
        .map_err(|source| match source {
            SignatureError::Unsigned(_) => OciError::Unsigned {
                reference: reference.to_string(),
            },
            source => OciError::Signature {
                reference: reference.to_string(),
                source,
            },
        })?;
    let marker = digest_marker(dir, staged.name);
    let pulled = Pulled {
        reference: reference.to_string(),
        name: staged.name.to_owned(),
        wasm: target.clone(),
        digest: staged.digest.to_owned(),
        wasm_digest: staged.wasm_digest.to_owned(),
        has_manifest: staged.manifest.is_some(),
        signer,
        changed: !unchanged,
    };
    if unchanged {
        record_digest(&marker, staged.digest).map_err(io(&marker))?;
        return Ok(pulled);
    }
    let stage = StageDir::create(dir).map_err(io(dir))?;
    let write = |file: &str, bytes: &[u8]| -> Result<PathBuf, OciError> {
        let path = stage.path.join(file);
        write_synced(&path, bytes).map_err(io(&path))?;
        Ok(path)
    };
    let staged_wasm = write(&wasm_name, &staged.wasm)?;
    let staged_manifest = match &staged.manifest {
        Some(bytes) => Some(write(&format!("{}.toml", staged.name), bytes)?),
        None => None,
    };
    let staged_signature = match &staged.signature {
        Some(bytes) => Some(write(&signature_file, bytes)?),
        None => None,
    };
    // Fault injection: the process dies with everything staged and nothing
    // renamed (`return(crash)`), or the install fails there.
    crate::failpoint::hit("oci.install.staged").map_err(io(&stage.path))?;
    // The caller's last word (a bus loading it as it would), on the staged
    // files: a refused plugin never replaces anything.
    if let Some(check) = check {
        check(staged_wasm.clone())
            .await
            .map_err(|reason| OciError::LoadRefused {
                reference: reference.to_string(),
                reason,
            })?;
    }
    if let Some(from) = staged_manifest {
        std::fs::rename(&from, &manifest_target).map_err(io(&manifest_target))?;
    }
    match staged_signature {
        Some(from) => std::fs::rename(&from, &signature_target).map_err(io(&signature_target))?,
        None => match std::fs::remove_file(&signature_target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&signature_target)(e)),
            _ => {}
        },
    }
    std::fs::rename(&staged_wasm, &target).map_err(io(&target))?;
    record_digest(&marker, staged.digest).map_err(io(&marker))?;
    // The renames survive power loss once the directory is synced.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    tracing::info!(reference = %reference, plugin = staged.name, digest = staged.digest, "plugin installed");
    Ok(pulled)
}

/// Checks a manifest layer as every pull does, and a push before it
/// uploads one: UTF-8 text that parses as a plugbus manifest.
///
/// # Errors
/// [`OciError::BadManifest`] naming `reference()` (the reference, or the
/// file being pushed) and the fault.
pub(crate) fn check_manifest_layer(bytes: &[u8], reference: impl Fn() -> String) -> Result<(), OciError> {
    let bad = |reason: String| OciError::BadManifest {
        reference: reference(),
        reason,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
    toml::from_str::<crate::manifest::RawManifest>(text).map_err(|e| bad(e.to_string().trim_end().to_owned()))?;
    Ok(())
}

/// The hidden file beside `NAME.wasm` naming the artifact (its manifest
/// digest) its files were last installed from: a lock or fleet entry whose
/// digest it is needs no pull (the component alone does not say: a new
/// version may change only the manifest or the signature), and a fleet
/// removes only what a registry installed. The watcher ignores it.
pub(crate) fn digest_marker(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.oci-digest"))
}

/// The manifest digest `marker` records, if any.
pub(crate) fn recorded_digest(marker: &Path) -> Option<String> {
    crate::files::read_regular(marker, 256)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|text| text.trim().to_owned())
}

/// Records `digest` in `marker`, replacing it in one rename.
fn record_digest(marker: &Path, digest: &str) -> std::io::Result<()> {
    if recorded_digest(marker).as_deref() == Some(digest) {
        return Ok(());
    }
    let mut tmp = marker.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_synced(&tmp, format!("{digest}\n").as_bytes())?;
    std::fs::rename(&tmp, marker)
}

/// Fails unless `dir` is a directory (checked before anything is fetched).
pub(crate) fn check_dir(dir: &Path) -> Result<(), OciError> {
    let (kind, why) = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => (
            std::io::ErrorKind::NotADirectory,
            "not a directory: give the plugin directory",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (std::io::ErrorKind::NotFound, "the plugin directory does not exist")
        }
        Err(e) => {
            return Err(OciError::Io {
                path: dir.to_owned(),
                source: e,
            });
        }
    };
    Err(OciError::Io {
        path: dir.to_owned(),
        source: std::io::Error::new(kind, why),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A hidden directory inside the plugin directory, removed with whatever is
/// left in it when dropped (a refused or failed pull leaves nothing).
struct StageDir {
    path: PathBuf,
}

/// Staging directories are named `.plugbus-pull-PID-N`.
const STAGE_PREFIX: &str = ".plugbus-pull-";

impl StageDir {
    fn create(dir: &Path) -> std::io::Result<StageDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        remove_orphans(dir);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{STAGE_PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(StageDir { path })
    }
}

/// Removes the staging directories of pulls whose process is gone (killed
/// between staging and renaming: nothing of theirs was installed). Where
/// there is no `/proc` to ask, they are left.
fn remove_orphans(dir: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STAGE_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(dir = %entry.path().display(), "removing the staging directory of an interrupted pull");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for StageDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> PluginRef {
        "oci://127.0.0.1:5000/plugbus/tc:1".parse().unwrap()
    }

    /// Plugin `tc`'s artifact, fetched, with this manifest and signature.
    fn staged<'a>(reference: &'a PluginRef, manifest: Option<&[u8]>, signature: Option<&[u8]>) -> Staged<'a> {
        const ZERO: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        Staged {
            reference,
            digest: ZERO,
            wasm_digest: ZERO,
            name: "tc",
            wasm: b"\0asm".to_vec(),
            manifest: manifest.map(<[u8]>::to_vec),
            signature: signature.map(<[u8]>::to_vec),
        }
    }

    /// A pull refuses a manifest layer that is not a plugbus manifest (an
    /// artifact `plugbus push` would not make: it checks the file first),
    /// before anything is written.
    #[tokio::test]
    async fn a_manifest_layer_that_is_no_manifest_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let reference = reference();
        let staged = staged(&reference, Some(b"subscriptions = 3\n"), None);
        let policy = SignaturePolicy::default();
        let err = install(staged, dir.path(), &policy, None).await.unwrap_err();
        assert!(matches!(err, OciError::BadManifest { .. }), "{err}");
        assert!(err.to_string().contains("not a plugbus manifest"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Likewise a signature layer of garbage, when signatures are checked.
    #[tokio::test]
    async fn a_signature_layer_of_garbage_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let reference = reference();
        let staged = staged(&reference, None, Some(b"garbage\n"));
        let policy = SignaturePolicy::new(Some(crate::signature::TrustedKeys::default()), false).unwrap();
        let err = install(staged, dir.path(), &policy, None).await.unwrap_err();
        assert!(
            err.to_string().contains("tc.wasm.minisig is not a minisign signature"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
