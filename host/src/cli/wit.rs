//! `plugbus wit` and `plugbus bindgen c`: the plugin contract, handed to
//! toolchains that are not Rust.
//!
//! The WIT package in `wit/` is compiled into this binary (the host bindings
//! come from the same text), so what these commands write always matches the
//! host that will load the plugin. Python and JavaScript toolchains read WIT
//! directly (`plugbus wit --out DIR`: the package and the WASI 0.2 packages
//! its `http-observer` worlds import, under `deps/`); C needs generated
//! bindings (`plugbus bindgen c --out DIR`), which the `wit-bindgen-c` library
//! produces here so that a C plugin needs only clang and no extra Rust tool
//! install.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};
use wit_bindgen_core::wit_parser::{PackageId, Resolve, SourceMap};

/// The WIT package the host speaks, as written in `wit/`.
pub const OBSERVER_WIT: &str = include_str!("../../../wit/observer.wit");
/// The file name it is written under.
const WIT_FILE: &str = "observer.wit";
/// The worlds of plugins that send HTTP requests (`wit/http.wit`).
const HTTP_WIT: &str = include_str!("../../../wit/http.wit");
/// The WASI 0.2 packages `http.wit` imports, vendored in `wit/deps` at the
/// release the host's wasmtime-wasi-http implements.
const DEPS: &[(&str, &str)] = &[
    ("deps/cli/cli.wit", include_str!("../../../wit/deps/cli/cli.wit")),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../../wit/deps/filesystem/filesystem.wit"),
    ),
    ("deps/http/http.wit", include_str!("../../../wit/deps/http/http.wit")),
    ("deps/io/io.wit", include_str!("../../../wit/deps/io/io.wit")),
    (
        "deps/random/random.wit",
        include_str!("../../../wit/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../../wit/deps/sockets/sockets.wit"),
    ),
];

/// `plugbus wit [--out DIR]`: prints `observer.wit`, or writes the whole
/// package to DIR (`observer.wit`, `http.wit` and the WASI packages under
/// `deps/`), ready for `componentize-py -d DIR` or `componentize-qjs --wit DIR`.
///
/// # Errors
/// A file that cannot be written, named.
pub fn wit(out: Option<&Path>) -> anyhow::Result<ExitCode> {
    match out {
        None => out!("{OBSERVER_WIT}")?,
        Some(dir) => {
            check_out_dir(dir)?;
            let files = [(WIT_FILE, OBSERVER_WIT), ("http.wit", HTTP_WIT)];
            for (name, text) in files.iter().chain(DEPS) {
                write_file(&dir.join(name), text.as_bytes())?;
            }
            outln!(
                "wrote {} and {} (with its WASI 0.2 deps)",
                dir.join(WIT_FILE).display(),
                dir.join("http.wit").display()
            )?;
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
    check_out_dir(out)?;
    let (mut resolve, package) = resolve(wit)?;
    let world = resolve.select_world(&[package], Some(world)).with_context(|| {
        let worlds: Vec<&str> = resolve.packages[package].worlds.keys().map(String::as_str).collect();
        format!("the WIT package has no world `{world}` (worlds: {})", worlds.join(", "))
    })?;
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
        outln!("wrote {}", path.display())?;
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
        None => {
            let parse = |files: &[(&str, &str)]| {
                let mut map = SourceMap::new();
                for (name, text) in files {
                    map.push_str(name, *text);
                }
                map.parse()
                    .map_err(|(_, e)| anyhow::anyhow!("parsing the built-in WIT package: {e}"))
            };
            let main = parse(&[(WIT_FILE, OBSERVER_WIT), ("http.wit", HTTP_WIT)])?;
            let deps = DEPS
                .iter()
                .map(|file| parse(std::slice::from_ref(file)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            resolve
                .push_groups(main, deps)
                .context("resolving the built-in WIT package")?
        }
    };
    Ok((resolve, package))
}

/// Writes through a temp file and a rename, so a build reading `path` never
/// sees half a file.
/// `--out` names a directory to write into (made if missing), not a file.
fn check_out_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("--out {}: a file, not a directory to write into", dir.display());
    }
    Ok(())
}

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

    /// The world plugins implement.
    const WORLD: &str = "observer";

    #[test]
    fn the_built_in_package_has_the_observer_world() {
        let (resolve, package) = resolve(None).unwrap();
        assert!(resolve.select_world(&[package], Some(WORLD)).is_ok());
        assert_eq!(resolve.packages[package].name.to_string(), "plugbus:observer@0.1.3");
    }

    #[test]
    fn the_built_in_package_resolves_the_http_worlds_against_the_vendored_wasi() {
        let (resolve, package) = resolve(None).unwrap();
        let world = resolve.select_world(&[package], Some("http-observer")).unwrap();
        let imports: Vec<String> = resolve.worlds[world]
            .imports
            .keys()
            .map(|k| resolve.name_world_key(k))
            .collect();
        assert!(
            imports.contains(&"wasi:http/outgoing-handler@0.2.12".to_string()),
            "{imports:?}"
        );
        assert!(
            imports.contains(&"plugbus:observer/host@0.1.3".to_string()),
            "{imports:?}"
        );
    }

    /// `wit/deps` is the WASI the host implements: byte for byte the WIT
    /// that the wasmtime-wasi-http crate this build links ships. After a
    /// wasmtime upgrade this fails until the deps are vendored again.
    #[test]
    fn the_vendored_wasi_is_the_wit_of_the_linked_wasmtime_wasi_http() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Only this machine's platform: without the filter, cargo wants the
        // sources of every platform's dependencies (android_system_properties…),
        // which an offline build machine never downloaded.
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
        let version = std::process::Command::new(rustc).arg("-vV").output().unwrap();
        let version = String::from_utf8_lossy(&version.stdout);
        let host = version
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .expect("rustc -vV names the host");
        let out = std::process::Command::new(cargo)
            .args([
                "metadata",
                "--format-version",
                "1",
                "--offline",
                "--filter-platform",
                host,
            ])
            .arg("--manifest-path")
            .arg(root.join("Cargo.toml"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let manifest = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "wasmtime-wasi-http")
            .and_then(|p| p["manifest_path"].as_str())
            .expect("wasmtime-wasi-http is a dependency");
        let crate_deps = Path::new(manifest).parent().unwrap().join("wit/deps");
        let mut compared = 0;
        for entry in std::fs::read_dir(&crate_deps).unwrap() {
            let file = entry.unwrap().path();
            let name = file.file_stem().unwrap().to_str().unwrap().to_owned();
            let vendored = root.join(format!("wit/deps/{name}/{name}.wit"));
            assert_eq!(
                std::fs::read(&vendored).unwrap_or_default(),
                std::fs::read(&file).unwrap(),
                "{} differs from {}",
                vendored.display(),
                file.display()
            );
            compared += 1;
        }
        assert_eq!(compared, DEPS.len());
    }

    #[test]
    fn wit_out_writes_a_package_the_parser_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        wit(Some(dir.path())).unwrap();
        let (resolve, package) = resolve(Some(dir.path())).unwrap();
        for world in [WORLD, "http-observer", "stateful-http-observer", "projection"] {
            assert!(resolve.select_world(&[package], Some(world)).is_ok(), "{world}");
        }
    }
}
