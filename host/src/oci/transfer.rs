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
        // Every pull refuses a manifest that is not one: so does the push,
        // naming the file, before anything is uploaded.
        super::install::check_manifest_layer(&bytes, || {
            format!("{reference} ({})", crate::text::printable_path(&manifest))
        })?;
        layers.push(Layer {
            role: LayerRole::Manifest,
            title: title(&manifest),
            bytes,
        });
    }
    let signature = signature_path(wasm);
    if let Some(bytes) = optional(&signature)? {
        let malformed = |reason: String| OciError::Signature {
            reference: reference.to_string(),
            source: crate::signature::SignatureError::Malformed {
                path: signature.clone(),
                reason,
            },
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| malformed("not UTF-8 text".to_owned()))?;
        minisign_verify::Signature::decode(text).map_err(|e| malformed(e.to_string()))?;
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
    pull_inner(reference, dir, registry, policy, name, None, None).await
}

/// [`pull`], with the component's digest pinned (`wasm`: a lock entry's, checked against the
/// component layer's descriptor before any of it is fetched), and a last `check` on the staged
/// files before anything is renamed into place (see [`LoadCheck`]): what a lock entry's install
/// uses.
pub(crate) async fn pull_inner(
    reference: &PluginRef,
    dir: &Path,
    registry: &Registry,
    policy: &SignaturePolicy,
    name: Option<&str>,
    wasm: Option<&str>,
    check: Option<&LoadCheck>,
) -> Result<Pulled, OciError> {
    install::check_dir(dir)?;
    let client = client(reference, registry)?;
    let err = |e| registry_error(reference, e);
    // The registry's `Docker-Content-Digest` (which `oci-client` checked
    // the bytes against) is not what is recorded: see `manifest_digest`.
    let (manifest, _) = client
        .pull_manifest_raw(
            reference.oci(),
            &auth(registry, reference).await?,
            &[artifact::OCI_MANIFEST_MEDIA_TYPE, artifact::OCI_INDEX_MEDIA_TYPE],
        )
        .await
        .map_err(err)?;
    let digest = manifest_digest(reference, &manifest)?;
    let plan = artifact::plan(reference, &manifest, registry.max_wasm_bytes)?;
    // A pinned component that is not this artifact's is refused before a
    // byte of it is fetched (the bytes are then checked against the
    // descriptor's digest): nothing reaches the plugin directory.
    if let Some(expected) = wasm
        && plan.wasm.digest != expected
    {
        return Err(OciError::Digest {
            reference: reference.to_string(),
            what: format!("{COMPONENT} (the locked wasm digest)"),
            expected: expected.to_owned(),
            actual: plan.wasm.digest,
        });
    }
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
            .filter(|t| crate::manifest::valid_plugin_name(t))
            .unwrap_or(reference.last_segment())
            .to_owned(),
    };
    if !crate::manifest::valid_plugin_name(&name) {
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

/// The digest a pull records for the manifest `bytes` (in [`Pulled::digest`],
/// hence `plugins.lock` and a fleet's set): their sha256, computed here,
/// whatever algorithm the registry's `Docker-Content-Digest` header used
/// (`plugins.lock` pins sha256 only, so a `sha512:` from the registry would
/// write a lock plugbus then refuses). When `reference` pins a digest, the
/// bytes must have it, in its own algorithm.
///
/// # Errors
/// [`OciError::Digest`] when the bytes are not the pinned manifest,
/// [`OciError::Reference`] for a pin in an algorithm plugbus cannot check.
pub(crate) fn manifest_digest(reference: &PluginRef, bytes: &[u8]) -> Result<String, OciError> {
    let sha256 = artifact::sha256_digest(bytes);
    let Some(expected) = reference.digest() else {
        return Ok(sha256);
    };
    let actual = match expected.split_once(':').map_or("", |(algorithm, _)| algorithm) {
        "sha256" => sha256.clone(),
        "sha384" => format!("sha384:{}", crate::text::hex(&sha2::Sha384::digest(bytes))),
        "sha512" => format!("sha512:{}", crate::text::hex(&sha2::Sha512::digest(bytes))),
        other => {
            return Err(OciError::Reference {
                reference: reference.to_string(),
                reason: format!("digest algorithm {other:?}: plugbus checks sha256, sha384 and sha512"),
            });
        }
    };
    if actual != expected {
        return Err(OciError::Digest {
            reference: reference.to_string(),
            what: "the manifest".to_owned(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(sha256)
}

/// How the component's layer is named in errors (and the corruption failpoint).
const COMPONENT: &str = "the component layer";

/// Downloads the blob `d`, refusing more bytes than it declares (the cap was
/// checked against the declared size) and bytes that do not hash to its
/// digest.
async fn fetch(client: &Client, reference: &PluginRef, d: &Descriptor, what: &str) -> Result<Vec<u8>, OciError> {
    // The cap was checked against the declared size; a registry sending
    // more than it declared is not to be believed.
    let too_large = |size: u64| OciError::Registry {
        reference: reference.to_string(),
        reason: format!(
            "{what} ({}): the registry sent {size} bytes, more than the {} its descriptor declares",
            d.digest, d.size
        ),
    };
    if !super::is_sha256(&d.digest) {
        return Err(OciError::MediaType {
            reference: reference.to_string(),
            what: format!(
                "{what}'s digest `{}` is not sha256:<64 hex digits>",
                crate::text::printable(&d.digest)
            ),
        });
    }
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
        reason: explain(reference, reason),
    }
}

/// A registry error's text, with the likely cause when rustls's own is
/// cryptic: a plain-HTTP registry answers the TLS handshake with an HTTP
/// response, which rustls reports as "received corrupt message of type
/// InvalidContentType".
fn explain(reference: &PluginRef, reason: String) -> String {
    if reason.contains("InvalidContentType") {
        return format!(
            "{} did not answer HTTPS with TLS: it may speak plain HTTP, which plugbus uses only for registries on this machine, or with --plain-http (Registry::plain_http) ({reason})",
            reference.registry()
        );
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &[u8] = br#"{"schemaVersion":2}"#;

    fn pinned(digest: &str) -> PluginRef {
        format!("oci://registry.example.com/p/x@{digest}").parse().unwrap()
    }

    /// The recorded digest is the sha256 computed here, whatever the
    /// registry's header said, and a pin in any algorithm is checked.
    #[test]
    fn the_recorded_manifest_digest_is_the_local_sha256_and_pins_are_checked() {
        let sha256 = artifact::sha256_digest(MANIFEST);
        let sha512 = format!("sha512:{}", crate::text::hex(&sha2::Sha512::digest(MANIFEST)));
        let tagged: PluginRef = "oci://registry.example.com/p/x:1".parse().unwrap();
        assert_eq!(manifest_digest(&tagged, MANIFEST).unwrap(), sha256);
        assert_eq!(manifest_digest(&pinned(&sha256), MANIFEST).unwrap(), sha256);
        // Pinned by sha512: checked in sha512, recorded in sha256 (what
        // `plugins.lock` accepts).
        assert_eq!(manifest_digest(&pinned(&sha512), MANIFEST).unwrap(), sha256);
        for wrong in [
            format!("sha256:{}", "0".repeat(64)),
            format!("sha512:{}", "0".repeat(128)),
        ] {
            let e = manifest_digest(&pinned(&wrong), MANIFEST).unwrap_err();
            assert!(
                matches!(&e, OciError::Digest { expected, .. } if *expected == wrong),
                "{e}"
            );
        }
    }

    #[test]
    fn a_tls_handshake_answered_in_plain_http_is_explained() {
        let r: PluginRef = "oci://registry.example.com:5000/p/x:1".parse().unwrap();
        let said = explain(
            &r,
            "error sending request: client error (Connect): received corrupt message of type InvalidContentType"
                .to_owned(),
        );
        assert!(
            said.contains("registry.example.com:5000")
                && said.contains("plain HTTP")
                && said.contains("--plain-http")
                && said.contains("InvalidContentType"),
            "{said}"
        );
        assert_eq!(explain(&r, "manifest unknown".to_owned()), "manifest unknown");
    }
}
