//! Generates one doc module per chapter of `docs/src/*.md`, so every
//! ```rust box of the book is a doctest: a new chapter is picked up with no
//! edit here, and a box that drifts from the code fails `cargo test`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let chapters = manifest.join("../src");
    println!("cargo:rerun-if-changed={}", chapters.display());
    let mut names: Vec<PathBuf> = std::fs::read_dir(&chapters)
        .expect("docs/src is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter(|p| p.file_name().is_some_and(|n| n != "SUMMARY.md"))
        .collect();
    names.sort();
    let mut code = String::new();
    for path in &names {
        println!("cargo:rerun-if-changed={}", path.display());
        let module = module_name(path);
        let abs = path.canonicalize().expect("chapter path");
        writeln!(
            code,
            "#[doc = include_str!({:?})]\npub mod {module} {{}}\n",
            abs.display().to_string()
        )
        .expect("write to String");
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("chapters.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}

/// `backend-aiter-fa.md` -> `backend_aiter_fa`.
fn module_name(path: &Path) -> String {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("UTF-8 chapter name");
    stem.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}
