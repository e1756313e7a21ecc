//! Plugins in OCI registries: push a plugin as a CNCF Wasm artifact, pull
//! one into a plugin directory (bounded, digest- and signature-checked,
//! renamed into place only once verified), and `plugins.lock`, the remote
//! plugins a directory pins by digest.
//!
//! - `reference`: `oci://REGISTRY/REPOSITORY[:TAG][@DIGEST]` ([`PluginRef`]);
//! - `artifact`: the layout (CNCF Wasm config and layer, plus plugbus's
//!   manifest and signature layers) and the checks on a pulled manifest;
//! - `transfer`: talking to the registry ([`push`], [`pull`]), through the
//!   ORAS project's `oci-client`;
//! - `install`: staging, verifying and renaming into the plugin directory;
//! - `lock`: `plugins.lock` ([`Lock`], [`sync_lock`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), plugbus::oci::OciError> {
//! use plugbus::oci::{self, Registry};
//! let reference = "oci://127.0.0.1:5000/plugbus/cost-tracker:1.0".parse()?;
//! let pushed = oci::push("plugins/dist/cost-tracker.wasm".as_ref(), &reference, &Registry::default()).await?;
//! println!("pushed {}", pushed.digest);
//! let pulled = oci::pull(&reference, "/var/lib/plugbus/plugins".as_ref(), &Registry::default(), &Default::default(), None).await?;
//! println!("installed {}", pulled.wasm.display());
//! # Ok(()) }
//! ```
//!
//! docs/oci.md has the layout, the checks and the lock file's format.

mod artifact;
mod credentials;
pub(crate) mod install;
mod lock;
mod reference;
mod transfer;

use std::path::PathBuf;
use std::time::Duration;

pub use artifact::{
    LayerRole, MANIFEST_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, SIGNATURE_MEDIA_TYPE, TITLE_ANNOTATION,
    WASM_CONFIG_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE, sha256_digest,
};
pub use install::{LoadCheck, Pulled};
pub use lock::{LOCK_FILE, Lock, LockEntry, SyncReport, sync_lock};
pub use reference::PluginRef;
pub use transfer::{Pushed, pull, push};

use crate::signature::SignatureError;

/// How to reach a registry.
#[derive(Clone, Debug)]
pub struct Registry {
    /// Credentials; anonymous by default.
    pub auth: Auth,
    /// Speak plain HTTP to a registry that is not on this machine.
    /// Loopback registries are always spoken to over plain HTTP; any other
    /// over HTTPS unless this is set (the credentials and the code would
    /// otherwise cross the network in the clear).
    pub plain_http: bool,
    /// Most bytes a component layer may have; a larger layer is refused
    /// from its descriptor, and a download that runs past it is cut.
    /// Default [`crate::plugin::MAX_WASM_BYTES`], the most a plugin may be.
    pub max_wasm_bytes: u64,
    /// Connect timeout. Default 10 s: a registry that does not answer a
    /// SYN by then is down, and `serve` waits on it at start.
    pub connect_timeout: Duration,
    /// Longest wait for bytes on an open connection. Default 60 s.
    pub read_timeout: Duration,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            auth: Auth::Anonymous,
            plain_http: false,
            max_wasm_bytes: crate::plugin::MAX_WASM_BYTES,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// Registry credentials.
#[derive(Clone, Default)]
pub enum Auth {
    /// No credentials (a public or local registry).
    #[default]
    Anonymous,
    /// Whatever Docker's client configuration holds for the reference's
    /// registry (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`:
    /// its credential helper, stored `auths` entry or default helper, in
    /// Docker's order), else anonymous. What `plugbus push`/`pull` use
    /// without `--registry-user`, so a registry logged into with `docker
    /// login`, `oras login` or `crane auth login` needs no flag.
    DockerConfig,
    /// HTTP basic authentication (or the token exchange a registry asks
    /// for, which `oci-client` does with these).
    Basic {
        /// The user name.
        username: String,
        /// The password or token (never printed: `Debug` redacts it).
        password: String,
    },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Anonymous => f.write_str("Anonymous"),
            Auth::DockerConfig => f.write_str("DockerConfig"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

/// Why a push, pull or lock sync failed. Each names the reference (or the
/// file) at fault; no failure leaves a partial file in a plugin directory.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The reference does not parse.
    #[error("{reference}: {reason}")]
    Reference {
        /// The text given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry could not be reached, refused the request or answered
    /// with an error.
    #[error("{reference}: registry error: {reason}")]
    Registry {
        /// The reference.
        reference: String,
        /// What the registry or the connection said.
        reason: String,
    },
    /// The registry's credentials could not be read (Docker's client
    /// configuration, a credential helper).
    #[error("{reference}: registry credentials: {reason}")]
    Credentials {
        /// The reference.
        reference: String,
        /// What is wrong, naming the file or helper.
        reason: String,
    },
    /// The artifact is not a plugin (wrong or unknown media types).
    #[error("{reference}: not a plugin artifact: {what}")]
    MediaType {
        /// The reference.
        reference: String,
        /// What is wrong.
        what: String,
    },
    /// A blob is larger than its cap.
    #[error("{reference}: {what} is {size} bytes, above the cap of {cap} bytes")]
    TooLarge {
        /// The reference.
        reference: String,
        /// Which blob.
        what: String,
        /// Its size (as declared, or as counted when the registry sent more).
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// Bytes received do not hash to the digest that names them.
    #[error("{reference}: digest mismatch for {what}: expected {expected}, got {actual}")]
    Digest {
        /// The reference.
        reference: String,
        /// Which blob (or the manifest).
        what: String,
        /// The digest asked for.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The component layer is not a component.
    #[error("{reference}: not a WebAssembly component: {reason}")]
    NotAComponent {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// The plugin's manifest layer is not a valid manifest.
    #[error("{reference}: the plugin manifest layer is not a plugbus manifest: {reason}")]
    BadManifest {
        /// The reference.
        reference: String,
        /// The parse error.
        reason: String,
    },
    /// The signature policy refused the artifact.
    #[error("{reference}: {source}")]
    Signature {
        /// The reference.
        reference: String,
        /// Why.
        source: SignatureError,
    },
    /// The caller's load check refused the staged plugin.
    #[error("{reference}: the plugin does not load: {reason}")]
    LoadRefused {
        /// The reference.
        reference: String,
        /// Why it does not load.
        reason: String,
    },
    /// Signatures are required and the artifact carries none.
    #[error(
        "{reference}: unsigned: signatures are required (--require-signed) and the artifact has no signature layer ({SIGNATURE_MEDIA_TYPE})"
    )]
    Unsigned {
        /// The reference.
        reference: String,
    },
    /// No usable plugin name: the artifact's title and the repository's
    /// last segment are not valid plugin names.
    #[error("{reference}: no valid plugin name ({name:?}): give one with --name")]
    Name {
        /// The reference.
        reference: String,
        /// The name found.
        name: String,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `plugins.lock` is malformed.
    #[error("{}: {reason}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What is wrong (and where).
        reason: String,
    },
}

/// Whether `digest` is a SHA-256 digest as plugbus writes and takes them
/// (`sha256:` and 64 lower-case hex digits): a lock entry's, and every
/// descriptor's before it goes into a registry URL (`sha256:../../x` would
/// ask the registry for another path).
pub(crate) fn is_sha256(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}
