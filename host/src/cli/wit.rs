//! `plugbus wit` and `plugbus bindgen c`: the plugin contract, handed to
//! toolchains that are not Rust.
//!
//! The WIT package in `wit/` is compiled into this binary (the host bindings
//! come from the same text), so what these commands write always matches the
//! host that will load the plugin. Python and JavaScript toolchains read WIT
//! directly (`plugbus wit --out DIR`); C needs generated bindings
//! (`plugbus bindgen c --out DIR`), which the `wit-bindgen-c` library produces
//! here so that a C plugin needs only clang and no extra Rust tool install.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use wit_bindgen_core::wit_parser::{PackageId, Resolve};

/// The WIT package the host speaks, as written in `wit/`.
pub const OBSERVER_WIT: &str = include_str!("../../../wit/observer.wit");
/// The file name it is written under.
const WIT_FILE: &str = "observer.wit";
/// The world plugins implement.
const WORLD: &str = "observer";

/// `plugbus wit [--out DIR]`: prints the WIT package, or writes it to DIR.
pub fn wit(out: Option<&Path>) -> anyhow::Result<ExitCode> {
    match out {
        None => print!("{OBSERVER_WIT}"),
        Some(dir) => {
            write_file(&dir.join(WIT_FILE), OBSERVER_WIT.as_bytes())?;
            println!("wrote {}", dir.join(WIT_FILE).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugbus bindgen c --out DIR [--wit DIR] [--world WORLD]`: C bindings for
/// a world of the package (`observer` by default).
///
/// Writes `<world>.h`, `<world>.c` and `<world>_component_type.o` (the
/// component type, which the linker embeds so the result is a component of
/// the right world), with the world's name in snake case.
pub fn bindgen_c(out: &Path, wit: Option<&Path>, world: &str) -> anyhow::Result<ExitCode> {
    let (mut resolve, package) = resolve(wit)?;
    let world = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("the WIT package has no world `{world}` (worlds: {WORLD}, stateful-observer, queryable-observer, projection)"))?;
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("generating C bindings")?;
    let mut written = Vec::new();
    for (name, contents) in files.iter() {
        let path = out.join(name);
        write_file(&path, contents)?;
        written.push(path);
    }
    if written.is_empty() {
        bail!("wit-bindgen-c produced no files");
    }
    for path in &written {
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The package from `dir`, or the one built into this binary.
fn resolve(dir: Option<&Path>) -> anyhow::Result<(Resolve, PackageId)> {
    let mut resolve = Resolve::default();
    let package = match dir {
        Some(dir) => {
            if !dir.is_dir() {
                bail!("{}: not a directory of WIT files", dir.display());
            }
            resolve
                .push_dir(dir)
                .with_context(|| format!("parsing the WIT package in {}", dir.display()))?
                .0
        }
        None => resolve
            .push_str(PathBuf::from(WIT_FILE), OBSERVER_WIT)
            .context("parsing the built-in WIT package")?,
    };
    Ok((resolve, package))
}

/// Writes through a temp file and a rename, so a build reading `path` never
/// sees half a file.
fn write_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    std::fs::write(&tmp, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_package_has_the_observer_world() {
        let (resolve, package) = resolve(None).unwrap();
        assert!(resolve.select_world(&[package], Some(WORLD)).is_ok());
        assert_eq!(resolve.packages[package].name.to_string(), "plugbus:observer@0.1.3");
    }
}
