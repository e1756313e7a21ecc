//! Encodes the worlds of `../wit` that a plugin opts into as component-type
//! custom sections: `stateful-observer`, `queryable-observer` and
//! `projection`. `export_plugin!(T, state)`, `(T, query)` and
//! `(T, state, query)` place one of them in the plugin that opts in, and
//! only there: a section built into the SDK itself would reach every plugin
//! and make each one claim exports it lacks.

use std::path::PathBuf;

fn main() {
    let wit = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../wit");
    println!("cargo::rerun-if-changed={}", wit.display());
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_path(&wit)
        .unwrap_or_else(|e| panic!("cannot read the WIT package in {}: {e:#}", wit.display()));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    for name in ["stateful-observer", "queryable-observer", "projection"] {
        let world = resolve
            .select_world(&[package], Some(name))
            .unwrap_or_else(|e| panic!("wit/ defines no `{name}` world: {e:#}"));
        let bytes = wit_component::metadata::encode(&resolve, world, wit_component::StringEncoding::UTF8, None, false)
            .unwrap_or_else(|e| panic!("encode the {name} world: {e:#}"));
        std::fs::write(out.join(format!("{name}.type")), bytes).expect("write the encoded world");
    }
}
