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
        Ok(c) if json => println!("{}", serde_json::to_string_pretty(&c)?),
        Ok(c) => {
            println!("name:          {}", c.name);
            println!("world:         {}", c.world);
            println!("language:      {}", c.language.unwrap_or("unknown"));
            println!("size:          {} bytes", c.size);
            println!("version:       sha256:{}", c.version);
            match &c.signer {
                Some(s) => {
                    println!("signed by:     key {} ({})", s.key_id, s.key_file.display());
                    println!("               trusted comment: {}", s.trusted_comment);
                }
                None if plugbus::signature::signature_path(file).exists() => {
                    println!("signed by:     not checked (give --trusted-keys)");
                }
                None => println!("signed by:     unsigned"),
            }
            println!("subscriptions: {}", c.subscriptions.join(", "));
            if !c.http_allow.is_empty() {
                println!("http allow:    {}", c.http_allow.join(", "));
            }
            if !c.secrets.is_empty() {
                println!("secrets:       {} (values not shown)", c.secrets.join(", "));
            }
            println!("imports:");
            for i in &c.imports {
                println!("  {i}");
            }
        }
        Err(e) => {
            eprintln!("plugbus: invalid plugin {e}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
