//! `oci://REGISTRY/REPOSITORY[:TAG][@DIGEST]`: where a plugin lives in a registry.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use super::OciError;

/// The scheme every plugin reference starts with.
pub const SCHEME: &str = "oci://";

/// A plugin's place in an OCI registry: `oci://` and an OCI reference with an
/// explicit registry (no implied Docker Hub: a plugin host should never guess
/// where code comes from).
///
/// ```
/// let r: plugbus::oci::PluginRef = "oci://127.0.0.1:5000/plugbus/cost-tracker:1.0".parse()?;
/// assert_eq!(r.registry(), "127.0.0.1:5000");
/// assert_eq!(r.repository(), "plugbus/cost-tracker");
/// assert!(r.is_loopback());
/// # Ok::<(), plugbus::oci::OciError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginRef {
    inner: oci_client::Reference,
    text: String,
}

impl PluginRef {
    /// The registry, `host[:port]`.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path inside the registry.
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, if the reference names one.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The manifest digest, if the reference pins one (`@sha256:…`).
    pub fn digest(&self) -> Option<&str> {
        self.inner.digest()
    }

    /// The same repository pinned to the manifest `digest` (no tag): what a
    /// lock entry pulls, so a moved tag cannot change what is installed.
    pub fn pinned(&self, digest: &str) -> PluginRef {
        let inner = oci_client::Reference::with_digest(
            self.registry().to_owned(),
            self.repository().to_owned(),
            digest.to_owned(),
        );
        PluginRef {
            text: format!("{SCHEME}{}", inner.whole()),
            inner,
        }
    }

    /// The last path segment of the repository: the plugin name a pull uses
    /// when the artifact does not name its file.
    pub fn last_segment(&self) -> &str {
        self.repository().rsplit('/').next().unwrap_or_default()
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`):
    /// the only registries spoken to over plain HTTP without an
    /// explicit flag.
    pub fn is_loopback(&self) -> bool {
        let host = host_of(self.registry());
        host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    pub(crate) fn oci(&self) -> &oci_client::Reference {
        &self.inner
    }
}

/// The host part of `host[:port]` (the reference grammar has no IPv6
/// literals).
fn host_of(registry: &str) -> &str {
    registry.rsplit_once(':').map_or(registry, |(host, _)| host)
}

impl FromStr for PluginRef {
    type Err = OciError;

    fn from_str(text: &str) -> Result<PluginRef, OciError> {
        let bad = |reason: &str| OciError::Reference {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = text
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("a plugin reference starts with oci:// (oci://REGISTRY/REPOSITORY:TAG)"))?;
        let first = rest.split('/').next().unwrap_or_default();
        // An OCI reference without a registry means Docker Hub; plugbus asks
        // for the registry to be written out (a first segment with a dot, a
        // port or `localhost`, as the distribution reference grammar has it).
        if !rest.contains('/') || !(first.contains('.') || first.contains(':') || first == "localhost") {
            return Err(bad("name the registry: oci://REGISTRY[:PORT]/REPOSITORY[:TAG]"));
        }
        let inner = oci_client::Reference::from_str(rest).map_err(|e| bad(&e.to_string()))?;
        Ok(PluginRef {
            inner,
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_an_explicit_registry() {
        let r: PluginRef = "oci://localhost:5000/a/b:v1".parse().unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "a/b", Some("v1"))
        );
        assert!(r.is_loopback());
        assert_eq!(r.last_segment(), "b");
        let r: PluginRef = "oci://registry.example.com/team/cost-tracker@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            .parse()
            .unwrap();
        assert!(!r.is_loopback());
        assert!(r.digest().is_some());
        let pinned = r.pinned("sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
        assert!(
            pinned
                .to_string()
                .starts_with("oci://registry.example.com/team/cost-tracker@sha256:aaaa")
        );
        let r: PluginRef = "oci://127.0.0.2:5000/p:1".parse().unwrap();
        assert!(r.is_loopback());
    }

    #[test]
    fn bad_references_say_why() {
        for bad in [
            "cost-tracker:1",
            "oci://cost-tracker:1",
            "oci://library/cost-tracker",
            "oci://",
            "oci://reg.io/UPPER",
        ] {
            let e = bad.parse::<PluginRef>().unwrap_err();
            assert!(matches!(e, OciError::Reference { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
