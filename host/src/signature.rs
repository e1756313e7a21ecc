//! Signature-checked loading: detached minisign signatures beside plugins.
//!
//! A plugin `name.wasm` is signed by `name.wasm.minisig`, the detached
//! signature Debian's `minisign -S` (or `plugbus sign`) writes: Ed25519 over
//! the BLAKE2b-512 hash of the file, plus a *trusted comment* signed with it
//! (signer, date, anything the signer wrote). Verification uses the small
//! audited `minisign-verify` crate; the keys trusted are minisign public keys
//! (`minisign.pub` files) in a directory or a file, matched by the 8-byte key
//! id every signature names.
//!
//! The policy ([`SignaturePolicy`]), applied to every load, hot reload
//! included, before the file is compiled:
//! - with trusted keys, a plugin that has a signature must be signed by one
//!   of them over exactly its bytes, whether signatures are required or not
//!   (a signature that does not verify means the file or the signature was
//!   changed: never run it);
//! - with `require_signed`, a plugin without a signature is refused too;
//! - without trusted keys, signatures are not read (today's behaviour).
//!
//! What this protects against, and what it does not, is in docs/trust.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Serialize;

/// The extension of a detached signature: `name.wasm.minisig`.
pub const SIGNATURE_EXT: &str = "minisig";

/// Most bytes a signature or public key file may have: a minisign signature
/// is four short lines (~350 bytes plus the comments, which minisign itself
/// caps at 1 KiB each); anything bigger is not one.
const MAX_SIGNATURE_BYTES: u64 = 8 << 10;

/// Most keys a trusted-keys directory may hold: far above any real set,
/// while bounding what a wrong directory costs to read.
const MAX_TRUSTED_KEYS: usize = 1024;

/// Why a plugin's signature was refused, or the trusted keys could not be
/// read.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// Signatures are required and the plugin has none.
    #[error("unsigned: signatures are required (--require-signed) and {0} does not exist")]
    Unsigned(PathBuf),
    /// The signature file is not a minisign signature.
    #[error("{path} is not a minisign signature: {reason}")]
    Malformed {
        /// The signature file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Signed with a key that is not trusted.
    #[error("signed by key {key_id}, which is not among the trusted keys ({trusted})")]
    UnknownKey {
        /// The key id the signature names (hex, as minisign prints it).
        key_id: String,
        /// The trusted key ids.
        trusted: String,
    },
    /// The signature does not verify over the file's bytes.
    #[error(
        "bad signature: {path} (key {key_id}) does not match the plugin's bytes: the file or its signature was changed, or the signature is another file's"
    )]
    Mismatch {
        /// The signature file.
        path: PathBuf,
        /// The key id it names.
        key_id: String,
    },
    /// A legacy minisign signature (of the file itself, not of its BLAKE2b
    /// hash), refused whatever it signs.
    #[error(
        "{path} (key {key_id}) is a legacy minisign signature (`minisign -S -l`, or minisign before 0.8), which is not accepted: sign the plugin again with `minisign -S` or `plugbus sign`"
    )]
    Legacy {
        /// The signature file.
        path: PathBuf,
        /// The key id it names.
        key_id: String,
    },
    /// A signature file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A trusted key file is not a minisign public key.
    #[error("{path} is not a minisign public key: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The trusted-keys location holds no key.
    #[error("no minisign public key (*.pub) in {0}")]
    NoKeys(PathBuf),
    /// Two trusted key files hold different keys with the same key id: a
    /// signature naming that id could be checked against either.
    #[error(
        "{} and {} both hold a key with id {key_id}, and the keys differ: remove the one that is not trusted",
        first.display(),
        second.display()
    )]
    DuplicateKeyId {
        /// The key id (hex, as minisign prints it).
        key_id: String,
        /// The file read first.
        first: PathBuf,
        /// The file read second.
        second: PathBuf,
    },
    /// `require_signed` without any trusted key.
    #[error("signatures are required but no trusted keys are configured (--trusted-keys)")]
    RequiredWithoutKeys,
}

/// Who signed a plugin, as verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signer {
    /// The signing key's id in hex, as `minisign` prints it.
    pub key_id: String,
    /// The trusted key file that verified it.
    pub key_file: PathBuf,
    /// The signature's trusted comment (covered by the signature).
    pub trusted_comment: String,
}

/// One trusted key.
#[derive(Debug)]
struct TrustedKey {
    key: minisign_verify::PublicKey,
    /// The decoded key line (algorithm, id, Ed25519 key): what tells two
    /// files with the same id apart.
    raw: Vec<u8>,
    file: PathBuf,
}

/// Minisign public keys trusted to sign plugins, by key id.
#[derive(Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<u64, TrustedKey>,
}

impl TrustedKeys {
    /// Reads the minisign public keys at `path`: a `.pub` file, or every
    /// `*.pub` file of a directory.
    ///
    /// ```no_run
    /// let keys = plugbus::TrustedKeys::read("/etc/plugbus/trusted-keys")?;
    /// assert!(!keys.ids().is_empty());
    /// # Ok::<(), plugbus::SignatureError>(())
    /// ```
    ///
    /// # Errors
    /// [`SignatureError::Io`] if it cannot be read (a missing path
    /// included), [`SignatureError::BadKey`] naming a file that is not a
    /// public key, [`SignatureError::NoKeys`] for a directory without any,
    /// [`SignatureError::DuplicateKeyId`] naming two files with different
    /// keys under one id (the same key in two files is a warning).
    pub fn read(path: impl AsRef<Path>) -> Result<TrustedKeys, SignatureError> {
        let path = path.as_ref();
        let io = |source| SignatureError::Io {
            path: path.to_owned(),
            source,
        };
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                // Every `*.pub` entry: one that cannot be read as a key (a
                // FIFO, a directory, a dangling link) stops the start naming
                // itself, as a garbage key file does, instead of leaving its
                // key out without a word.
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect();
            files.sort();
            if files.len() > MAX_TRUSTED_KEYS {
                return Err(SignatureError::BadKey {
                    path: path.to_owned(),
                    reason: format!(
                        "{} key files, more than the {MAX_TRUSTED_KEYS} a trusted-keys directory may hold",
                        files.len()
                    ),
                });
            }
            files
        } else {
            std::fs::metadata(path).map_err(io)?;
            vec![path.to_owned()]
        };
        if files.is_empty() {
            return Err(SignatureError::NoKeys(path.to_owned()));
        }
        let mut keys = TrustedKeys::default();
        for file in files {
            let text = read_small(&file)?;
            keys.add(&file, &text)?;
        }
        Ok(keys)
    }

    /// Adds the public key in `text` (a `minisign.pub` file's content, or
    /// its base64 line alone), read from `file`. A key already present
    /// under the same id is kept (the same key read twice is logged).
    ///
    /// # Errors
    /// [`SignatureError::BadKey`] when `text` is not a minisign public key,
    /// [`SignatureError::DuplicateKeyId`] when a different key with its id
    /// was added before.
    pub fn add(&mut self, file: &Path, text: &str) -> Result<(), SignatureError> {
        let bad = |reason: &str| SignatureError::BadKey {
            path: file.to_owned(),
            reason: reason.to_owned(),
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| bad("no key line"))?;
        let key = minisign_verify::PublicKey::from_base64(line).map_err(|e| bad(&e.to_string()))?;
        // Bytes 2..10 of the decoded key are its id (little-endian), as in
        // every signature it makes.
        let id = decoded_key_id(line, 42).ok_or_else(|| bad("not a 42-byte Ed25519 key"))?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| bad(&e.to_string()))?;
        match self.keys.entry(id) {
            std::collections::btree_map::Entry::Occupied(seen) if seen.get().raw == raw => {
                tracing::warn!(
                    key_id = %key_id_text(id),
                    used = %seen.get().file.display(),
                    ignored = %file.display(),
                    "the same trusted key is in two files"
                );
            }
            std::collections::btree_map::Entry::Occupied(seen) => {
                return Err(SignatureError::DuplicateKeyId {
                    key_id: key_id_text(id),
                    first: seen.get().file.clone(),
                    second: file.to_owned(),
                });
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(TrustedKey {
                    key,
                    raw,
                    file: file.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The trusted key ids, as minisign prints them.
    pub fn ids(&self) -> Vec<String> {
        self.keys.keys().map(|id| key_id_text(*id)).collect()
    }

    /// Verifies `sig_text`, the content of `sig_path`, over `bytes`.
    ///
    /// # Errors
    /// [`SignatureError::Malformed`], [`SignatureError::UnknownKey`] or
    /// [`SignatureError::Mismatch`].
    pub fn verify(&self, bytes: &[u8], sig_path: &Path, sig_text: &str) -> Result<Signer, SignatureError> {
        let malformed = |reason: String| SignatureError::Malformed {
            path: sig_path.to_owned(),
            reason,
        };
        let signature = minisign_verify::Signature::decode(sig_text).map_err(|e| malformed(e.to_string()))?;
        let line = sig_text
            .lines()
            .nth(1)
            .ok_or_else(|| malformed("no signature line".into()))?;
        let id = decoded_key_id(line.trim(), 74).ok_or_else(|| malformed("not a 74-byte signature line".into()))?;
        let key_id = key_id_text(id);
        let Some(trusted) = self.keys.get(&id) else {
            return Err(SignatureError::UnknownKey {
                key_id,
                trusted: self.ids().join(", "),
            });
        };
        // Legacy (non-prehashed) signatures are refused: minisign has made
        // prehashed ones by default since 0.8 and `plugbus sign` only makes those.
        trusted.key.verify(bytes, &signature, false).map_err(|e| match e {
            // What minisign-verify answers for a legacy signature when
            // legacy ones are not allowed, before looking at the bytes.
            minisign_verify::Error::UnexpectedAlgorithm => SignatureError::Legacy {
                path: sig_path.to_owned(),
                key_id: key_id.clone(),
            },
            _ => SignatureError::Mismatch {
                path: sig_path.to_owned(),
                key_id: key_id.clone(),
            },
        })?;
        Ok(Signer {
            key_id,
            key_file: trusted.file.clone(),
            trusted_comment: signature
                .trusted_comment()
                .trim_start_matches("trusted comment: ")
                .to_owned(),
        })
    }
}

/// What the bus asks of plugin signatures (see the module docs).
#[derive(Debug, Default)]
pub struct SignaturePolicy {
    keys: Option<TrustedKeys>,
    require: bool,
}

impl SignaturePolicy {
    /// A policy over `keys`; with `require`, unsigned plugins are refused.
    ///
    /// # Errors
    /// [`SignatureError::RequiredWithoutKeys`] for `require` without keys.
    pub fn new(keys: Option<TrustedKeys>, require: bool) -> Result<SignaturePolicy, SignatureError> {
        if require && keys.as_ref().is_none_or(|k| k.keys.is_empty()) {
            return Err(SignatureError::RequiredWithoutKeys);
        }
        Ok(SignaturePolicy { keys, require })
    }

    /// Whether unsigned plugins are refused.
    pub fn requires_signatures(&self) -> bool {
        self.require
    }

    /// Checks the plugin at `wasm`, whose content is `bytes`, against its
    /// signature file: `Ok(None)` when it is unsigned and that is allowed
    /// (or no keys are trusted), `Ok(Some(signer))` when it verifies.
    ///
    /// # Errors
    /// Any [`SignatureError`] saying why the plugin must not run.
    pub fn check(&self, wasm: &Path, bytes: &[u8]) -> Result<Option<Signer>, SignatureError> {
        if self.keys.is_none() {
            return Ok(None);
        }
        let sig_path = signature_path(wasm);
        let text = match read_small(&sig_path) {
            Ok(text) => Some(text),
            Err(SignatureError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        self.check_signature(bytes, &sig_path, text.as_deref())
    }

    /// Checks `bytes` against the signature text `signature` (`None`: there
    /// is none) named `name` in messages: what [`check`](Self::check) does
    /// once it has read the file, and how a pull checks an artifact before
    /// any of it is in place.
    ///
    /// # Errors
    /// Any [`SignatureError`] saying why the plugin must not run.
    pub fn check_signature(
        &self,
        bytes: &[u8],
        name: &Path,
        signature: Option<&str>,
    ) -> Result<Option<Signer>, SignatureError> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        match signature {
            Some(text) => keys.verify(bytes, name, text).map(Some),
            None if self.require => Err(SignatureError::Unsigned(name.to_owned())),
            None => Ok(None),
        }
    }
}

/// The signature file of `wasm`: `name.wasm.minisig`.
pub fn signature_path(wasm: &Path) -> PathBuf {
    let mut name = wasm.as_os_str().to_owned();
    name.push(".");
    name.push(SIGNATURE_EXT);
    PathBuf::from(name)
}

/// A key id as Debian's `minisign` prints it in a public key's comment: the
/// 8 id bytes as a little-endian integer in upper-case hex, without leading
/// zeros (`%PRIX64`), so the id an operator copies from a `.pub` file is the
/// one plugbus shows.
pub(crate) fn key_id_text(id: u64) -> String {
    format!("{id:X}")
}

/// Parses a key id written in hex (with or without leading zeros).
pub(crate) fn parse_key_id(text: &str) -> Option<u64> {
    u64::from_str_radix(text.trim(), 16).ok()
}

/// The key id in a base64 line that decodes to `len` bytes (algorithm, id,
/// then the key or signature).
fn decoded_key_id(line: &str, len: usize) -> Option<u64> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(line).ok()?;
    if bytes.len() != len {
        return None;
    }
    Some(u64::from_le_bytes(bytes[2..10].try_into().ok()?))
}

/// Reads a small text file (a key or a signature), refusing anything
/// larger than [`MAX_SIGNATURE_BYTES`].
fn read_small(path: &Path) -> Result<String, SignatureError> {
    let io = |source| SignatureError::Io {
        path: path.to_owned(),
        source,
    };
    // A regular file only: a FIFO in its place would block the read forever.
    let bytes = crate::files::read_regular(path, MAX_SIGNATURE_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => SignatureError::Malformed {
            path: path.to_owned(),
            reason: format!("{e}: more than a signature or key has"),
        },
        _ => io(e),
    })?;
    String::from_utf8(bytes).map_err(|_| SignatureError::Malformed {
        path: path.to_owned(),
        reason: "not UTF-8 text".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_path_is_beside_the_plugin() {
        assert_eq!(
            signature_path(Path::new("/p/cost-tracker.wasm")),
            Path::new("/p/cost-tracker.wasm.minisig")
        );
    }

    /// Debian's minisign prints ids with `%PRIX64`: no leading zeros (an id
    /// starting with a 0 nibble, 1 in 16 keys, once made the shown id differ).
    #[test]
    fn key_ids_are_written_as_minisign_writes_them() {
        assert_eq!(key_id_text(0x074B_303C_A365_0B87), "74B303CA3650B87");
        assert_eq!(parse_key_id("074B303CA3650B87"), Some(0x074B_303C_A365_0B87));
        assert_eq!(parse_key_id("74b303ca3650b87"), Some(0x074B_303C_A365_0B87));
        assert_eq!(parse_key_id("not hex"), None);
    }

    #[test]
    fn garbage_is_named_as_such() {
        let mut keys = TrustedKeys::default();
        let err = keys
            .add(Path::new("k.pub"), "untrusted comment: x\nnot base64!!\n")
            .unwrap_err();
        assert!(matches!(err, SignatureError::BadKey { .. }), "{err}");
        assert!(err.to_string().contains("k.pub"), "{err}");
        let err = keys
            .verify(b"wasm", Path::new("p.wasm.minisig"), "garbage")
            .unwrap_err();
        assert!(matches!(err, SignatureError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("p.wasm.minisig"), "{err}");
    }

    /// Two files with one key id: the same key is kept once; different keys
    /// are refused, naming both files (the later one once replaced the other).
    #[test]
    fn a_key_id_in_two_files_is_refused_when_the_keys_differ() {
        let key = |id: u64, fill: u8| {
            let mut raw = b"Ed".to_vec();
            raw.extend_from_slice(&id.to_le_bytes());
            raw.extend_from_slice(&[fill; 32]);
            format!(
                "untrusted comment: minisign public key {id:X}\n{}\n",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        };
        let mut keys = TrustedKeys::default();
        keys.add(Path::new("a.pub"), &key(0xABC, 1)).unwrap();
        keys.add(Path::new("b.pub"), &key(0xABC, 1)).unwrap();
        keys.add(Path::new("c.pub"), &key(0xDEF, 2)).unwrap();
        assert_eq!(keys.ids(), ["ABC", "DEF"]);
        let err = keys.add(Path::new("d.pub"), &key(0xABC, 3)).unwrap_err();
        assert!(matches!(err, SignatureError::DuplicateKeyId { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("a.pub") && text.contains("d.pub") && text.contains("ABC"),
            "{text}"
        );
        assert_eq!(keys.keys[&0xABC].file, Path::new("a.pub"));
    }

    #[test]
    fn requiring_signatures_needs_keys() {
        assert!(matches!(
            SignaturePolicy::new(None, true),
            Err(SignatureError::RequiredWithoutKeys)
        ));
        let policy = SignaturePolicy::new(None, false).unwrap();
        assert_eq!(policy.check(Path::new("/nowhere/x.wasm"), b"").unwrap(), None);
    }

    /// A FIFO named like a signature once blocked the load forever, waiting
    /// for a writer: it is refused, named.
    #[test]
    fn a_fifo_in_place_of_a_signature_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("p.wasm");
        let fifo = signature_path(&wasm);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        let policy = SignaturePolicy::new(Some(TrustedKeys::default()), false).unwrap();
        let result = crate::files::finishes("reading a FIFO signature", move || {
            policy.check(&wasm, b"wasm").map_err(|e| e.to_string())
        });
        let err = result.unwrap_err();
        assert!(err.contains("p.wasm.minisig") && err.contains("FIFO"), "{err}");
    }

    /// A `*.pub` entry of a trusted-keys directory that is no key file (a
    /// FIFO, a dangling link) is refused naming it, never skipped (its key
    /// would be missing without a word) and never waited on.
    #[test]
    fn every_pub_entry_of_a_trusted_keys_directory_must_be_a_key_file() {
        for make in ["fifo", "dangling"] {
            let dir = tempfile::tempdir().unwrap();
            let entry = dir.path().join("odd.pub");
            if make == "fifo" {
                let made = std::process::Command::new("mkfifo").arg(&entry).status().unwrap();
                assert!(made.success());
            } else {
                std::os::unix::fs::symlink(dir.path().join("gone"), &entry).unwrap();
            }
            let path = dir.path().to_owned();
            let result = crate::files::finishes("reading the keys", move || {
                TrustedKeys::read(&path).map(|_| ()).map_err(|e| e.to_string())
            });
            let err = result.unwrap_err();
            assert!(err.contains("odd.pub"), "{make}: {err}");
        }
    }
}
