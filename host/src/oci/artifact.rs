//! The plugin artifact: the CNCF Wasm OCI layout, plus plugbus's two
//! optional layers (the plugin's manifest and its signature).
//!
//! An image manifest (`application/vnd.oci.image.manifest.v1+json`) whose
//! config is `application/vnd.wasm.config.v0+json` and whose first layer is
//! the component (`application/wasm`), as `wkg oci` and wasmCloud's `wash`
//! write it. plugbus adds, after it, the plugin's manifest
//! ([`MANIFEST_MEDIA_TYPE`]) and its detached minisign signature
//! ([`SIGNATURE_MEDIA_TYPE`]) when the plugin has them. Each layer carries an
//! `org.opencontainers.image.title` annotation with its file name, so `oras
//! pull` writes a ready plugin directory.
//!
//! Why extra layers rather than OCI referrers: one manifest digest then pins
//! the code, its grants and its signature together (a lock entry cannot
//! pair a component with another version's manifest), a pull is one
//! round of requests, and it works on every registry (the referrers API is
//! missing from distribution 2.x, Debian's `docker-registry` among them).
//! The cost: signing after pushing means pushing again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::OciError;
use super::reference::PluginRef;

/// The image manifest media type.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// An image index: a multi-platform image, never a plugin.
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The CNCF Wasm config media type.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The CNCF Wasm layer media type: the component's bytes.
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// plugbus's layer for the plugin's manifest (`NAME.toml`).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.plugbus.manifest.v1+toml";
/// plugbus's layer for the plugin's signature (`NAME.wasm.minisig`).
pub const SIGNATURE_MEDIA_TYPE: &str = "application/vnd.plugbus.signature.v1+minisign";
/// The annotation naming a layer's file.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

/// Most bytes a config blob may have: the CNCF config lists the
/// component's imports and exports, a few KiB for any plugin.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// Most bytes a plugin manifest layer may have: manifests are a page of TOML.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Most bytes a signature layer may have (as for a signature file).
pub const MAX_SIGNATURE_BYTES: u64 = 8 << 10;

/// What a layer of a plugin artifact holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerRole {
    /// The component.
    Wasm,
    /// The plugin's manifest.
    Manifest,
    /// The detached signature over the component.
    Signature,
}

impl LayerRole {
    fn of(media_type: &str) -> Option<LayerRole> {
        match media_type {
            WASM_LAYER_MEDIA_TYPE => Some(LayerRole::Wasm),
            MANIFEST_MEDIA_TYPE => Some(LayerRole::Manifest),
            SIGNATURE_MEDIA_TYPE => Some(LayerRole::Signature),
            _ => None,
        }
    }

    /// The media type of this role's layers.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerRole::Wasm => WASM_LAYER_MEDIA_TYPE,
            LayerRole::Manifest => MANIFEST_MEDIA_TYPE,
            LayerRole::Signature => SIGNATURE_MEDIA_TYPE,
        }
    }

    /// The most bytes a layer of this role may have, given the cap for
    /// components.
    pub fn cap(self, wasm_cap: u64) -> u64 {
        match self {
            LayerRole::Wasm => wasm_cap,
            LayerRole::Manifest => MAX_MANIFEST_BYTES,
            LayerRole::Signature => MAX_SIGNATURE_BYTES,
        }
    }
}

/// The `application/vnd.wasm.config.v0+json` config.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// RFC 3339 creation time (`SOURCE_DATE_EPOCH` when set, for
    /// reproducible digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component.
    pub os: String,
    /// The digests of the manifest's layers, in order.
    #[serde(default)]
    pub layer_digests: Vec<String>,
    /// The component's top-level imports and exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentInfo>,
}

/// The `component` object of the CNCF config.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ComponentInfo {
    /// Top-level export names (`plugbus:observer/handler@0.1.2`, …).
    #[serde(default)]
    pub exports: Vec<String>,
    /// Top-level import names.
    #[serde(default)]
    pub imports: Vec<String>,
    /// The world the component targets, when known.
    #[serde(default)]
    pub target: Option<String>,
}

/// One layer as plugbus pushes it.
pub struct Layer {
    /// What it holds.
    pub role: LayerRole,
    /// Its file name (the title annotation).
    pub title: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::text::hex(&Sha256::digest(bytes)))
}

/// The top-level import and export names of a component.
///
/// # Errors
/// [`OciError::NotAComponent`] when the bytes do not parse as one.
pub fn component_info(reference: &PluginRef, bytes: &[u8]) -> Result<ComponentInfo, OciError> {
    use wasmparser::Payload;
    let not = |reason: String| OciError::NotAComponent {
        reference: reference.to_string(),
        reason,
    };
    crate::plugin::check_header(bytes).map_err(|e| not(e.to_string()))?;
    let mut info = ComponentInfo::default();
    // Nested modules and components come flattened; only depth 0 is the
    // component's own interface.
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.map_err(|e| not(e.to_string()))? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    info.imports
                        .push(import.map_err(|e| not(e.to_string()))?.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    info.exports
                        .push(export.map_err(|e| not(e.to_string()))?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Checks a pulled config blob is a CNCF Wasm config (`architecture:
/// "wasm"`).
///
/// # Errors
/// [`OciError::MediaType`] for anything else.
pub fn check_config(reference: &PluginRef, bytes: &[u8]) -> Result<WasmConfig, OciError> {
    let media = |what: String| OciError::MediaType {
        reference: reference.to_string(),
        what,
    };
    let config: WasmConfig =
        serde_json::from_slice(bytes).map_err(|e| media(format!("the config is not a Wasm config: {e}")))?;
    if config.architecture != "wasm" {
        return Err(media(format!(
            "config architecture {:?}, not \"wasm\"",
            config.architecture
        )));
    }
    Ok(config)
}

/// A built artifact: the config and manifest bytes to push, and the layers.
pub struct Built {
    /// The config blob.
    pub config: Vec<u8>,
    /// The image manifest, as pushed (its digest is the artifact's).
    pub manifest: Vec<u8>,
}

/// The config and image manifest for `layers` (the component first).
///
/// # Errors
/// [`OciError::NotAComponent`] when the first layer is not a component.
pub fn build(reference: &PluginRef, layers: &[Layer], created: Option<String>) -> Result<Built, OciError> {
    let component = match layers.first() {
        Some(layer) if layer.role == LayerRole::Wasm => component_info(reference, &layer.bytes)?,
        _ => {
            return Err(OciError::NotAComponent {
                reference: reference.to_string(),
                reason: "an artifact's first layer is the component".to_owned(),
            });
        }
    };
    let config = WasmConfig {
        created,
        architecture: "wasm".to_owned(),
        os: "wasip2".to_owned(),
        layer_digests: layers.iter().map(|l| sha256_digest(&l.bytes)).collect(),
        component: Some(component),
    };
    // Serialising these plain structs cannot fail (string keys, no maps
    // with non-string keys).
    let config = serde_json::to_vec(&config).expect("config serialises");
    let descriptor = |media_type: &str, bytes: &[u8], title: Option<&str>| Descriptor {
        media_type: media_type.to_owned(),
        digest: sha256_digest(bytes),
        size: bytes.len() as u64,
        annotations: title.map(|t| BTreeMap::from([(TITLE_ANNOTATION.to_owned(), t.to_owned())])),
    };
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST_MEDIA_TYPE.to_owned()),
        artifact_type: None,
        config: descriptor(WASM_CONFIG_MEDIA_TYPE, &config, None),
        layers: layers
            .iter()
            .map(|l| descriptor(l.role.media_type(), &l.bytes, Some(&l.title)))
            .collect(),
        annotations: None,
    };
    let manifest = serde_json::to_vec(&manifest).expect("manifest serialises");
    Ok(Built { config, manifest })
}

/// An OCI image manifest, the fields plugbus reads and writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The manifest's own media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// An artifact type, when the pusher set one (read, never required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// The layers.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An OCI content descriptor.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// What the blob is.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
    /// Annotations (the title among them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    /// The layer's file name, if it carries a title.
    pub fn title(&self) -> Option<&str> {
        self.annotations.as_ref()?.get(TITLE_ANNOTATION).map(String::as_str)
    }

    pub(crate) fn to_oci(&self) -> oci_client::manifest::OciDescriptor {
        oci_client::manifest::OciDescriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            // Sizes are checked against the cap (far below i64::MAX) before
            // anything is fetched.
            size: i64::try_from(self.size).unwrap_or(i64::MAX),
            urls: None,
            annotations: None,
            artifact_type: None,
        }
    }
}

/// A pulled manifest, checked: which layer is which.
#[derive(Debug)]
pub struct Plan {
    /// The component's layer.
    pub wasm: Descriptor,
    /// The plugin manifest's layer, if any.
    pub manifest: Option<Descriptor>,
    /// The signature's layer, if any.
    pub signature: Option<Descriptor>,
    /// The config blob's descriptor.
    pub config: Descriptor,
}

/// Reads a pulled image manifest and checks it is a plugin artifact: an image
/// manifest with the CNCF Wasm config, exactly one component layer, at most
/// one manifest and one signature layer, nothing else, every size within
/// its cap.
///
/// # Errors
/// [`OciError::MediaType`] for anything else, [`OciError::TooLarge`] for a
/// layer above its cap.
pub fn plan(reference: &PluginRef, bytes: &[u8], wasm_cap: u64) -> Result<Plan, OciError> {
    let media = |what: String| OciError::MediaType {
        reference: reference.to_string(),
        what,
    };
    let not_manifest = |e: serde_json::Error| media(format!("the manifest is not an OCI image manifest: {e}"));
    // The media type first: an index has no config to complain about.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        media_type: Option<String>,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(not_manifest)?;
    match head.media_type.as_deref() {
        Some(OCI_MANIFEST_MEDIA_TYPE) | None => {}
        Some(OCI_INDEX_MEDIA_TYPE) => {
            return Err(media(
                "it is an image index (several platforms), not a plugin".to_owned(),
            ));
        }
        Some(other) => {
            return Err(media(format!(
                "manifest media type {other}, not {OCI_MANIFEST_MEDIA_TYPE}"
            )));
        }
    }
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(not_manifest)?;
    if manifest.config.media_type != WASM_CONFIG_MEDIA_TYPE {
        return Err(media(format!(
            "config media type {}, not {WASM_CONFIG_MEDIA_TYPE}: not a Wasm artifact",
            manifest.config.media_type
        )));
    }
    if manifest.config.size > MAX_CONFIG_BYTES {
        return Err(OciError::TooLarge {
            reference: reference.to_string(),
            what: "the config".to_owned(),
            size: manifest.config.size,
            cap: MAX_CONFIG_BYTES,
        });
    }
    let mut found: BTreeMap<&'static str, Descriptor> = BTreeMap::new();
    for layer in manifest.layers {
        let role = LayerRole::of(&layer.media_type).ok_or_else(|| {
            media(format!(
                "layer {} has media type {}: a plugin artifact holds {WASM_LAYER_MEDIA_TYPE}, and optionally {MANIFEST_MEDIA_TYPE} and {SIGNATURE_MEDIA_TYPE}",
                layer.digest, layer.media_type
            ))
        })?;
        let cap = role.cap(wasm_cap);
        if layer.size > cap {
            return Err(OciError::TooLarge {
                reference: reference.to_string(),
                what: format!("layer {} ({})", layer.digest, layer.media_type),
                size: layer.size,
                cap,
            });
        }
        if found.insert(role.media_type(), layer).is_some() {
            return Err(media(format!("more than one {} layer", role.media_type())));
        }
    }
    let wasm = found
        .remove(WASM_LAYER_MEDIA_TYPE)
        .ok_or_else(|| media(format!("no {WASM_LAYER_MEDIA_TYPE} layer")))?;
    Ok(Plan {
        wasm,
        manifest: found.remove(MANIFEST_MEDIA_TYPE),
        signature: found.remove(SIGNATURE_MEDIA_TYPE),
        config: manifest.config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> PluginRef {
        "oci://127.0.0.1:5000/p/x:1".parse().unwrap()
    }

    fn manifest(config: &str, layers: &[(&str, u64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(m, size)| serde_json::json!({"mediaType": m, "digest": "sha256:00", "size": size}))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": config, "digest": "sha256:00", "size": 10},
            "layers": layers,
        }))
        .unwrap()
    }

    #[test]
    fn plans_accept_the_cncf_layout_and_plugbus_layers() {
        let plan = plan(
            &reference(),
            &manifest(WASM_CONFIG_MEDIA_TYPE, &[(WASM_LAYER_MEDIA_TYPE, 5)]),
            100,
        )
        .unwrap();
        assert!(plan.manifest.is_none() && plan.signature.is_none());
        let plan = super::plan(
            &reference(),
            &manifest(
                WASM_CONFIG_MEDIA_TYPE,
                &[
                    (WASM_LAYER_MEDIA_TYPE, 5),
                    (MANIFEST_MEDIA_TYPE, 5),
                    (SIGNATURE_MEDIA_TYPE, 5),
                ],
            ),
            100,
        )
        .unwrap();
        assert!(plan.manifest.is_some() && plan.signature.is_some());
    }

    #[test]
    fn plans_refuse_what_is_not_a_plugin() {
        let cases = [
            (
                manifest(
                    "application/vnd.oci.image.config.v1+json",
                    &[(WASM_LAYER_MEDIA_TYPE, 5)],
                ),
                "config media type",
            ),
            (
                manifest(WASM_CONFIG_MEDIA_TYPE, &[("application/octet-stream", 5)]),
                "application/octet-stream",
            ),
            (manifest(WASM_CONFIG_MEDIA_TYPE, &[]), "no application/wasm layer"),
            (
                manifest(
                    WASM_CONFIG_MEDIA_TYPE,
                    &[(WASM_LAYER_MEDIA_TYPE, 5), (WASM_LAYER_MEDIA_TYPE, 5)],
                ),
                "more than one",
            ),
            // A 10 GB layer is refused from its descriptor, before a byte is fetched.
            (
                manifest(WASM_CONFIG_MEDIA_TYPE, &[(WASM_LAYER_MEDIA_TYPE, 10_000_000_000)]),
                "10000000000 bytes",
            ),
            (
                manifest(
                    WASM_CONFIG_MEDIA_TYPE,
                    &[(WASM_LAYER_MEDIA_TYPE, 5), (SIGNATURE_MEDIA_TYPE, 1 << 20)],
                ),
                "cap",
            ),
            (
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec(),
                "image index",
            ),
            (b"garbage".to_vec(), "not an OCI image manifest"),
        ];
        for (bytes, expect) in cases {
            let e = plan(&reference(), &bytes, 1 << 30).unwrap_err().to_string();
            assert!(
                e.contains(expect) && e.contains("oci://127.0.0.1:5000/p/x:1"),
                "{expect}: {e}"
            );
        }
    }

    #[test]
    fn digests_are_sha256_hex() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
