//! `plugbus check FILE.wasm`.

use std::path::Path;
use std::process::ExitCode;

pub async fn check(
    file: &Path,
    json: bool,
    cache: &super::CacheArgs,
    trust: &super::TrustArgs,
) -> anyhow::Result<ExitCode> {
    let bus = trust.apply(cache.apply(plugbus::Bus::builder())).build().await?;
    let result = bus.check_plugin(file).await;
    bus.shutdown().await;
    match result {
        Ok(c) if json => outln!("{}", serde_json::to_string_pretty(&c)?)?,
        Ok(c) => {
            outln!("name:          {}", c.name)?;
            outln!("world:         {}", c.world)?;
            outln!("language:      {}", c.language.unwrap_or("unknown"))?;
            outln!("size:          {} bytes", c.size)?;
            outln!("version:       sha256:{}", c.version)?;
            match &c.signer {
                Some(s) => {
                    outln!("signed by:     key {} ({})", s.key_id, s.key_file.display())?;
                    outln!(
                        "               trusted comment: {}",
                        plugbus::text::printable(&s.trusted_comment)
                    )?;
                }
                None if plugbus::signature::signature_path(file).exists() => {
                    outln!("signed by:     not checked (give --trusted-keys)")?;
                }
                None => outln!("signed by:     unsigned")?,
            }
            outln!("subscriptions: {}", c.subscriptions.join(", "))?;
            if !c.http_allow.is_empty() {
                outln!("http allow:    {}", c.http_allow.join(", "))?;
            }
            if !c.secrets.is_empty() {
                outln!("secrets:       {} (values not shown)", c.secrets.join(", "))?;
            }
            outln!("imports:")?;
            for i in &c.imports {
                outln!("  {i}")?;
            }
        }
        Err(e) => {
            eprintln!("plugbus: invalid plugin {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
