//! `plugbus sign` and `plugbus keygen`: minisign signatures and keys for
//! plugins, in the format Debian's `minisign` makes and verifies, so either
//! tool can sign and either can check.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// Signs `file` with the secret key at `key`, writing `file.minisig`.
pub fn sign(key: &Path, password_env: Option<&str>, comment: Option<&str>, file: &Path) -> anyhow::Result<ExitCode> {
    // Checked before the key is read: nothing is written for a comment
    // that would make a signature no verifier accepts.
    if let Some(c) = comment {
        check_trusted_comment(c)?;
    }
    let text = std::fs::read_to_string(key).with_context(|| format!("reading the secret key {}", key.display()))?;
    let secret = read_secret_key(key, &text, password_env)?;
    let public =
        minisign::PublicKey::from_secret_key(&secret).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let mut bytes = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    // A plugin is a WebAssembly component: a signature over anything else
    // (an events file, a manifest given by mistake) trusts nothing a host
    // loads.
    let mut magic = [0u8; 4];
    let is_wasm = std::io::Read::read_exact(&mut bytes, &mut magic).is_ok() && magic == *b"\0asm";
    if !is_wasm {
        bail!(
            "{}: not a WebAssembly file; `sign` signs plugins (.wasm)",
            file.display()
        );
    }
    std::io::Seek::rewind(&mut bytes).with_context(|| format!("reading {}", file.display()))?;
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let trusted = match comment {
        Some(c) => c.to_owned(),
        // minisign's own default, with the file name as it adds it (a line
        // break in the name would break the signature's line).
        None => format!(
            "timestamp:{now}\tfile:{}\thashed",
            name.replace(['\n', '\r', '\0'], "_")
        ),
    };
    let signature = minisign::sign(
        Some(&public),
        &secret,
        std::io::BufReader::new(bytes),
        Some(&trusted),
        Some("signature from plugbus secret key"),
    )
    .map_err(|e| anyhow::anyhow!("signing {}: {e}", file.display()))?;
    let out = plugbus::signature::signature_path(file);
    write_new_or_replace(&out, signature.into_string().as_bytes())?;
    outln!("{}", out.display())?;
    Ok(ExitCode::SUCCESS)
}

/// The trusted comment is one line of the signature file: a line break in it
/// (or a NUL, where Debian's `minisign` stops reading) makes a signature
/// that neither plugbus nor `minisign -V` verifies; and it is printed
/// (`check`, `minisign -V`), so no other control character (an escape
/// sequence would act on the terminal of whoever checks the plugin).
fn check_trusted_comment(comment: &str) -> anyhow::Result<()> {
    if let Some(c) = comment.chars().find(|c| c.is_control()) {
        bail!(
            "--comment: the trusted comment is one printed line of the signature file and cannot contain {}",
            c.escape_default()
        );
    }
    // The rest of a signature file is ~300 bytes; verifiers read at most
    // 8 KiB of it (plugbus's `MAX_SIGNATURE_BYTES`).
    const MAX_COMMENT: usize = 4 << 10;
    if comment.len() > MAX_COMMENT {
        bail!(
            "--comment: {} bytes; a trusted comment may have at most {MAX_COMMENT} (the signature file must stay under 8 KiB)",
            comment.len()
        );
    }
    Ok(())
}

/// The secret key in `text` (a minisign secret key file, read from `path`).
///
/// The key's second line is, in base64: the signature algorithm `Ed`, the
/// key derivation `Sc` (scrypt: password-protected) or `\0\0` (none: `minisign
/// -G -W`, `plugbus keygen`), the checksum algorithm `B2`, the scrypt salt
/// and limits, then the key id, the Ed25519 key and its BLAKE2b checksum
/// (158 bytes). Debian's minisign 0.11 writes an unprotected key's checksum as
/// zeros, which the `minisign` crate refuses as corrupted: such a key is
/// read as is, and signing checks its signature against the key's own
/// public half, so a damaged key still fails.
fn read_secret_key(path: &Path, text: &str, password_env: Option<&str>) -> anyhow::Result<minisign::SecretKey> {
    use base64::Engine as _;
    const LEN: usize = 158;
    // The crate reads the key from the second line of a box.
    let boxed = |line: &str| minisign::SecretKeyBox::from(format!("untrusted comment: minisign secret key\n{line}\n"));
    let not_a_key = |why: &str| anyhow::anyhow!("{} is not a minisign secret key: {why}", path.display());
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
        .ok_or_else(|| not_a_key("no key line"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .map_err(|_| not_a_key("the key line is not base64"))?;
    if bytes.len() != LEN {
        return Err(not_a_key(&format!("{} bytes, not {LEN}", bytes.len())));
    }
    if &bytes[0..2] != b"Ed" {
        return Err(not_a_key("the signature algorithm is not Ed25519 (Ed)"));
    }
    if &bytes[4..6] != b"B2" {
        return Err(not_a_key("the checksum algorithm is not BLAKE2b (B2)"));
    }
    match &bytes[2..4] {
        [0, 0] => {
            if let Some(var) = password_env {
                eprintln!(
                    "note: {} is not password-protected: --password-env {var} is not used",
                    path.display()
                );
            }
            let key = if bytes[LEN - 32..].iter().all(|&b| b == 0) {
                minisign::SecretKey::from_bytes(&bytes)
            } else {
                minisign::SecretKey::from_unencrypted_box(boxed(line))
            };
            key.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        b"Sc" => {
            let Some(var) = password_env else {
                bail!(
                    "{} is password-protected: give --password-env VAR with the password in VAR",
                    path.display()
                );
            };
            let password = std::env::var(var).with_context(|| format!("reading the key's password from ${var}"))?;
            minisign::SecretKey::from_box(boxed(line), Some(password))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        other => Err(not_a_key(&format!(
            "unknown key derivation {:?} (minisign uses Sc, or none)",
            String::from_utf8_lossy(other)
        ))),
    }
}

/// Writes a new key pair: `key` (secret) and `key.pub`.
pub fn keygen(key: &Path) -> anyhow::Result<ExitCode> {
    let public_path = {
        let mut p = key.as_os_str().to_owned();
        p.push(".pub");
        std::path::PathBuf::from(p)
    };
    for path in [key, public_path.as_path()] {
        if path.exists() {
            bail!("{} exists: not overwriting a key", path.display());
        }
    }
    let pair = minisign::KeyPair::generate_unencrypted_keypair().map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = pair.sk.to_box(None).map_err(|e| anyhow::anyhow!("{e}"))?.into_string();
    // Written as Debian's minisign writes it (the crate pads the id to 16
    // digits): the id in the comment is then the one `check`, the
    // dashboard and refusals show.
    let keynum: [u8; 8] = pair
        .pk
        .keynum()
        .try_into()
        .map_err(|_| anyhow::anyhow!("a minisign key number is 8 bytes"))?;
    let public = format!(
        "untrusted comment: minisign public key {:X}\n{}\n",
        u64::from_le_bytes(keynum),
        pair.pk.to_base64()
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(key)
        .with_context(|| format!("creating {}", key.display()))?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    std::fs::write(&public_path, public.as_bytes()).with_context(|| format!("writing {}", public_path.display()))?;
    outln!("secret key: {} (keep it private)", key.display())?;
    outln!(
        "public key: {} (give it to the hosts' --trusted-keys)",
        public_path.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// watcher never reads half a signature.
fn write_new_or_replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        // Leave nothing half-done behind (the target may be a directory).
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming into {}", path.display()));
    }
    Ok(())
}
