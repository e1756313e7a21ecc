//! Talking to the registry: [`push`] a plugin's files as one artifact,
//! [`pull`] one (manifest, then each layer bounded and digest-checked) and
//! hand it to `install`.

use std::path::Path;

use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};
use sha2::{Digest as _, Sha256};

use super::artifact::{self, Descriptor, Layer, LayerRole};
use super::install::{self, LoadCheck, Pulled, Staged};
use super::reference::PluginRef;
use super::{Auth, OciError, Registry};
use crate::signature::{SignaturePolicy, signature_path};

/// What a push stored.
#[derive(Clone, Debug)]
pub struct Pushed {
    /// The reference pushed to.
    pub reference: String,
    /// The manifest digest (`sha256:…`): pin it with `REPO@DIGEST` or in
    /// `plugins.lock`.
    pub digest: String,
    /// The component's digest (the bytes `GET /plugins` hashes).
    pub wasm_digest: String,
    /// The layers pushed, by role, with their file names.
    pub layers: Vec<(LayerRole, String)>,
}

/// Pushes the plugin at `wasm` to `reference`: the component, and beside
/// it, when present, its manifest (`NAME.toml`) and signature
/// (`NAME.wasm.minisig`), as one artifact (see `artifact` for the layout).
/// The config's `created` time is `SOURCE_DATE_EPOCH` when set, else
/// absent, so the same files always push to the same digest.
///
/// # Errors
/// [`OciError::Io`] for a file that cannot be read,
/// [`OciError::NotAComponent`] for a `.wasm` that is not a component,
/// [`OciError::Registry`] when the registry refuses or cannot be reached.
pub async fn push(wasm: &Path, reference: &PluginRef, registry: &Registry) -> Result<Pushed, OciError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| OciError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let optional = |path: &Path| match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(OciError::Io {
            path: path.to_owned(),
            source,
        }),
    };
    let title = |path: &Path| {
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    };
    let mut layers = vec![Layer {
        role: LayerRole::Wasm,
        title: title(wasm),
        bytes: read(wasm)?,
    }];
    let manifest = wasm.with_extension("toml");
    if let Some(bytes) = optional(&manifest)? {
        layers.push(Layer {
            role: LayerRole::Manifest,
            title: title(&manifest),
            bytes,
        });
    }
    let signature = signature_path(wasm);
    if let Some(bytes) = optional(&signature)? {
        layers.push(Layer {
            role: LayerRole::Signature,
            title: title(&signature),
            bytes,
        });
    }
    let created = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
    let built = artifact::build(reference, &layers, created)?;
    let client = client(reference, registry)?;
    let err = |e| registry_error(reference, e);
    client
        .auth(
            reference.oci(),
            &auth(registry, reference).await?,
            RegistryOperation::Push,
        )
        .await
        .map_err(err)?;
    let config_digest = artifact::sha256_digest(&built.config);
    client
        .push_blob(reference.oci(), built.config, &config_digest)
        .await
        .map_err(err)?;
    for layer in &layers {
        let digest = artifact::sha256_digest(&layer.bytes);
        if !client.blob_exists(reference.oci(), &digest).await.map_err(err)? {
            client
                .push_blob(reference.oci(), layer.bytes.clone(), &digest)
                .await
                .map_err(err)?;
        }
    }
    let digest = artifact::sha256_digest(&built.manifest);
    client
        .push_manifest_raw(
            reference.oci(),
            built.manifest,
            http::HeaderValue::from_static(artifact::OCI_MANIFEST_MEDIA_TYPE),
        )
        .await
        .map_err(err)?;
    tracing::info!(reference = %reference, %digest, layers = layers.len(), "plugin pushed");
    Ok(Pushed {
        reference: reference.to_string(),
        digest,
        wasm_digest: artifact::sha256_digest(&layers[0].bytes),
        layers: layers.into_iter().map(|l| (l.role, l.title)).collect(),
    })
}

/// Pulls the plugin at `reference` into the plugin directory `dir`: the
/// manifest first (its layers must be a plugin artifact, each within its
/// cap), then each layer, counted against its declared size and checked
/// against its digest, written to a hidden staging directory inside `dir`,
/// checked (a component; a manifest that parses; the signature under
/// `policy`), and only then renamed into place, the component last. The
/// plugin is named `name`, else by the component layer's title, else by
/// the repository's last segment.
///
/// A pull that finds the same component already installed changes nothing
/// ([`Pulled::changed`] is false).
///
/// # Errors
/// Any [`OciError`], naming `reference`; nothing is left in `dir` but what
/// was there before.
pub async fn pull(
    reference: &PluginRef,
    dir: &Path,
    registry: &Registry,
    policy: &SignaturePolicy,
    name: Option<&str>,
) -> Result<Pulled, OciError> {
    pull_inner(reference, dir, registry, policy, name, None).await
}

/// [`pull`], with a last `check` on the staged files before anything is
/// renamed into place (see [`LoadCheck`]): what a lock entry's install uses.
pub(crate) async fn pull_inner(
    reference: &PluginRef,
    dir: &Path,
    registry: &Registry,
    policy: &SignaturePolicy,
    name: Option<&str>,
    check: Option<&LoadCheck>,
) -> Result<Pulled, OciError> {
    install::check_dir(dir)?;
    let client = client(reference, registry)?;
    let err = |e| registry_error(reference, e);
    let (manifest, digest) = client
        .pull_manifest_raw(
            reference.oci(),
            &auth(registry, reference).await?,
            &[artifact::OCI_MANIFEST_MEDIA_TYPE, artifact::OCI_INDEX_MEDIA_TYPE],
        )
        .await
        .map_err(err)?;
    let actual = artifact::sha256_digest(&manifest);
    if let Some(expected) = reference.digest()
        && expected != actual
    {
        return Err(OciError::Digest {
            reference: reference.to_string(),
            what: "the manifest".to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    let plan = artifact::plan(reference, &manifest, registry.max_wasm_bytes)?;
    let config = fetch(&client, reference, &plan.config, "the config").await?;
    artifact::check_config(reference, &config)?;
    let wasm = fetch(&client, reference, &plan.wasm, COMPONENT).await?;
    let info = artifact::component_info(reference, &wasm)?;
    let name = match name {
        Some(n) => n.to_owned(),
        None => plan
            .wasm
            .title()
            .and_then(|t| t.strip_suffix(".wasm"))
            .filter(|t| crate::plugin::valid_plugin_name(t))
            .unwrap_or(reference.last_segment())
            .to_owned(),
    };
    if !crate::plugin::valid_plugin_name(&name) {
        return Err(OciError::Name {
            reference: reference.to_string(),
            name,
        });
    }
    let manifest_text = match &plan.manifest {
        Some(d) => Some(fetch(&client, reference, d, "the plugin manifest layer").await?),
        None => None,
    };
    let signature = match &plan.signature {
        Some(d) => Some(fetch(&client, reference, d, "the signature layer").await?),
        None => None,
    };
    tracing::debug!(reference = %reference, exports = ?info.exports, "plugin artifact fetched");
    install::install(
        Staged {
            reference,
            digest: &digest,
            wasm_digest: &plan.wasm.digest,
            name: &name,
            wasm,
            manifest: manifest_text,
            signature,
        },
        dir,
        policy,
        check,
    )
    .await
}

/// How the component's layer is named in errors (and the corruption failpoint).
const COMPONENT: &str = "the component layer";

/// Downloads the blob `d`, refusing more bytes than it declares (the cap was
/// checked against the declared size) and bytes that do not hash to its
/// digest.
async fn fetch(client: &Client, reference: &PluginRef, d: &Descriptor, what: &str) -> Result<Vec<u8>, OciError> {
    let too_large = |size: u64| OciError::TooLarge {
        reference: reference.to_string(),
        what: format!("{what} ({})", d.digest),
        size,
        cap: d.size,
    };
    let mut stream = client
        .pull_blob_stream(reference.oci(), &d.to_oci())
        .await
        .map_err(|e| registry_error(reference, e))?;
    if let Some(len) = stream.content_length
        && len > d.size
    {
        return Err(too_large(len));
    }
    // The declared size is within the cap (checked by `plan`), so this
    // allocation is bounded.
    let mut bytes = Vec::with_capacity(usize::try_from(d.size).unwrap_or(0));
    let mut hasher = Sha256::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // oci-client's verifying stream fails at the end on a digest
            // mismatch; with every byte counted, say so in our own terms.
            Err(_) if bytes.len() as u64 == d.size && format!("sha256:{:x}", hasher.clone().finalize()) != d.digest => {
                break;
            }
            Err(e) => {
                return Err(OciError::Registry {
                    reference: reference.to_string(),
                    reason: format!("reading {what}: {e}"),
                });
            }
        };
        if (bytes.len() + chunk.len()) as u64 > d.size {
            return Err(too_large((bytes.len() + chunk.len()) as u64));
        }
        hasher.update(&chunk);
        bytes.extend_from_slice(&chunk);
    }
    // Fault injection: the component arrives with one byte changed (a
    // corrupt copy), as a bad mirror or a flipped bit in transit would give.
    if what == COMPONENT && crate::failpoint::hit("oci.component.corrupt").is_err() && !bytes.is_empty() {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        let mut again = Sha256::new();
        again.update(&bytes);
        hasher = again;
    }
    let actual = format!("sha256:{:x}", hasher.finalize());
    if actual != d.digest {
        return Err(OciError::Digest {
            reference: reference.to_string(),
            what: what.to_owned(),
            expected: d.digest.clone(),
            actual,
        });
    }
    Ok(bytes)
}

/// An `oci-client` for `reference`'s registry: plain HTTP only for loopback
/// or when asked for, no platform resolution (an index is not a plugin).
fn client(reference: &PluginRef, registry: &Registry) -> Result<Client, OciError> {
    // reqwest builds its TLS on the process's default rustls provider;
    // plugbus builds ring only. Installing fails only if another provider
    // is installed already, which then serves as well.
    if tokio_rustls::rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    }
    let protocol = if registry.plain_http || reference.is_loopback() {
        ClientProtocol::HttpsExcept(vec![reference.registry().to_owned()])
    } else {
        ClientProtocol::Https
    };
    let config = ClientConfig {
        protocol,
        platform_resolver: None,
        connect_timeout: Some(registry.connect_timeout),
        read_timeout: Some(registry.read_timeout),
        user_agent: concat!("plugbus/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| registry_error(reference, e))
}

/// The credentials for `reference`'s registry (Docker's configuration is
/// read, and a credential helper run, on a blocking thread).
async fn auth(registry: &Registry, reference: &PluginRef) -> Result<RegistryAuth, OciError> {
    Ok(match &registry.auth {
        Auth::Anonymous => RegistryAuth::Anonymous,
        Auth::Basic { username, password } => RegistryAuth::Basic(username.clone(), password.clone()),
        Auth::DockerConfig => {
            let host = reference.registry().to_owned();
            let found = tokio::task::spawn_blocking(move || super::credentials::lookup(&host))
                .await
                .unwrap_or_else(|e| Err(format!("credential lookup failed: {e}")));
            match found {
                Ok(Some((username, password))) => RegistryAuth::Basic(username, password),
                Ok(None) => RegistryAuth::Anonymous,
                Err(reason) => {
                    return Err(OciError::Credentials {
                        reference: reference.to_string(),
                        reason,
                    });
                }
            }
        }
    })
}

/// A registry error with its causes (reqwest's own text is terse: "error
/// sending request").
fn registry_error(reference: &PluginRef, e: oci_client::errors::OciDistributionError) -> OciError {
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = s.source();
    }
    OciError::Registry {
        reference: reference.to_string(),
        reason,
    }
}
