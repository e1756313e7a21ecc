//! Encodes the `stateful-observer` world of `../wit` as a component-type
//! custom section. `export_plugin!(T, state)` places it in the plugin that
//! opts in, and only there: a section built into the SDK itself would reach
//! every plugin and make each one claim a `state` export it lacks.

use std::path::PathBuf;

fn main() {
    let wit = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../wit");
    println!("cargo::rerun-if-changed={}", wit.display());
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_path(&wit)
        .unwrap_or_else(|e| panic!("cannot read the WIT package in {}: {e:#}", wit.display()));
    let world = resolve
        .select_world(&[package], Some("stateful-observer"))
        .expect("wit/ defines the stateful-observer world");
    let bytes = wit_component::metadata::encode(&resolve, world, wit_component::StringEncoding::UTF8, None, false)
        .expect("encode the stateful-observer world");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("stateful-observer.type");
    std::fs::write(&out, bytes).expect("write the encoded world");
}
