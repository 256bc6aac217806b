//! Turns the API's contract (`openapi.yaml` at the repository root) into JSON at build time:
//! `GET /openapi.json` serves the string this writes (`http::contract`), so no YAML parser ships
//! in a binary.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let source = manifest.join("..").join("openapi.yaml");
    println!("cargo:rerun-if-changed={}", source.display());
    let text = std::fs::read_to_string(&source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let spec: serde_json::Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML of a JSON document: {e}", source.display()));
    let version = spec["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3.1."),
        "{} must be OpenAPI 3.1 (it says {version:?})",
        source.display()
    );
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("openapi.json");
    let json = serde_json::to_string(&spec).expect("a JSON value serialises");
    std::fs::write(&out, json).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
