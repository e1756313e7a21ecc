//! `plugbus sign` and `plugbus keygen`: minisign signatures and keys for
//! plugins, in the format Debian's `minisign` makes and verifies, so either
//! tool can sign and either can check.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

/// Signs `file` with the secret key at `key`, writing `file.minisig`.
pub fn sign(key: &Path, password_env: Option<&str>, comment: Option<&str>, file: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(key).with_context(|| format!("reading the secret key {}", key.display()))?;
    let secret = match minisign::SecretKey::from_unencrypted_box(text.clone().into()) {
        Ok(secret) => secret,
        Err(_) => {
            let Some(var) = password_env else {
                bail!(
                    "{} is password-protected (or not a minisign secret key): give --password-env VAR with the password in VAR",
                    key.display()
                );
            };
            let password = std::env::var(var).with_context(|| format!("reading the key's password from ${var}"))?;
            minisign::SecretKey::from_box(text.into(), Some(password))
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?
        }
    };
    let public =
        minisign::PublicKey::from_secret_key(&secret).map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
    let bytes = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let trusted = match comment {
        Some(c) => c.to_owned(),
        // minisign's own default, with the file name as it adds it.
        None => format!("timestamp:{now}\tfile:{name}\thashed"),
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
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
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
    println!("secret key: {} (keep it private)", key.display());
    println!(
        "public key: {} (give it to the hosts' --trusted-keys)",
        public_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// watcher never reads half a signature.
fn write_new_or_replace(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}
