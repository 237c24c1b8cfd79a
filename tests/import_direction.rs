//! Imports run downhill inside each crate: every `crate::` / `super::` path a
//! source file names (in `use` lines and inline, comments left out) must
//! point at its own layer or one below (unit-test modules aside).
//!
//! - sim: kernels (with the numerics, config, cache, profile and f64
//!   reference they use) <- backends <- workload (workload, replay, cases,
//!   fixtures);
//! - gpu: runtime <- kernel sources and compiler <- ops (the launchers) <-
//!   exec, diff, bench;
//! - cli: every verb (`src/cli/<verb>.rs`) is independent: it imports the
//!   shared CLI modules, never another verb.
//!
//! `ATTNLAB_IMPORTS_ROOT` points the test at another checkout (to measure an
//! older revision); by default it reads this one.

use std::path::{Path, PathBuf};

/// One crate's layers, lowest first: the top-level modules in each.
struct Layers {
    src: &'static str,
    layers: &'static [(&'static str, &'static [&'static str])],
}

const SIM: Layers = Layers {
    src: "sim/src",
    layers: &[
        (
            "kernels",
            &[
                "kernels",
                "numerics",
                "config",
                "cache",
                "profile",
                "reference",
                "fidelity",
            ],
        ),
        ("backends", &["backends"]),
        (
            "workload",
            &[
                "workload",
                "mla_workload",
                "replay",
                "cases",
                "draw",
                "fixture",
            ],
        ),
    ],
};

const GPU: Layers = Layers {
    src: "gpu/src",
    layers: &[
        ("runtime", &["runtime"]),
        ("kernel sources", &["kernels", "compile"]),
        ("ops", &["ops"]),
        ("diff/bench", &["exec", "diff", "bench"]),
    ],
};

/// CLI modules every verb may import: the helpers, and the drawing modules
/// (`svg`, the SVG writer `layout` and `trace` draw with; `trace_svg`, the
/// scheduler-step figure), which are not verbs.
const CLI_SHARED: &[&str] = &["util", "common", "svg", "trace_svg"];

fn root() -> PathBuf {
    std::env::var_os("ATTNLAB_IMPORTS_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file below `src` (`backends/mla/mod.rs` -> `[backends, mla]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The source without `//` comments (doc links name modules without
/// importing them) and without its `#[cfg(test)]` module (a unit test may
/// assemble its fixtures from any layer), which stands last by convention.
fn code_of(text: &str) -> String {
    let text = text.split("\n#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| {
            let mut in_str = false;
            let b = l.as_bytes();
            for i in 0..b.len() {
                match b[i] {
                    b'"' if i == 0 || b[i - 1] != b'\\' => in_str = !in_str,
                    b'/' if !in_str && b.get(i + 1) == Some(&b'/') => return &l[..i],
                    _ => {}
                }
            }
            l
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The items of a `{a::b, c, d::{e, f}}` group (the text after `{`), split at depth 0.
fn group_items(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0usize, 0usize, vec![]);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&s[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&s[start..]);
    items
}

/// Every module path (absolute, within the crate) that `code` names through
/// `crate::` or `super::`, as seen from module `here`.
fn imported_modules(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = vec![];
    let bytes = code.as_bytes();
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(pos) = code[from..].find(anchor) {
            let at = from + pos;
            from = at + anchor.len();
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':')
            {
                continue; // `foo_crate::` or the second `super` of `super::super::`
            }
            // Resolve the base module.
            let mut base: Vec<String> = if anchor == "crate::" {
                vec![]
            } else {
                // `super` of module `a::b` (`a/b.rs` or `a/b/mod.rs`) is `a`.
                let mut b = here.to_vec();
                b.pop();
                b
            };
            let mut rest = &code[from..];
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let mut targets = vec![];
            if let Some(group) = rest.strip_prefix('{') {
                for item in group_items(group) {
                    let id = ident_at(item.trim());
                    if !id.is_empty() && id != "self" {
                        targets.push(id.to_string());
                    } else if id == "self" {
                        targets.push(String::new());
                    }
                }
            } else {
                targets.push(ident_at(rest).to_string());
            }
            for t in targets {
                let mut m = base.clone();
                if !t.is_empty() {
                    m.push(t);
                }
                found.push(m);
            }
        }
    }
    found
}

/// `(file, imported module)` for every import from a layer above the file's.
fn uphill(l: &Layers) -> Vec<String> {
    let src = root().join(l.src);
    let layer_of = |m: &[String]| -> Option<usize> {
        let top = m.first()?;
        l.layers
            .iter()
            .position(|(_, mods)| mods.contains(&top.as_str()))
    };
    let mut files = vec![];
    rust_files(&src, &mut files);
    let mut bad = vec![];
    for f in files {
        let here = module_of(&src, &f);
        let Some(mine) = layer_of(&here) else {
            continue; // lib.rs and modules outside the layering
        };
        let code = code_of(&std::fs::read_to_string(&f).unwrap());
        for m in imported_modules(&code, &here) {
            if let Some(theirs) = layer_of(&m).filter(|&t| t > mine) {
                bad.push(format!(
                    "{}: imports {} ({} layer) from the {} layer",
                    f.strip_prefix(root()).unwrap_or(&f).display(),
                    m.join("::"),
                    l.layers[theirs].0,
                    l.layers[mine].0
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

#[test]
fn sim_kernels_import_no_backend_and_backends_no_workload() {
    let bad = uphill(&SIM);
    assert!(bad.is_empty(), "uphill imports in sim:\n{}", bad.join("\n"));
}

#[test]
fn gpu_runtime_imports_no_launcher_and_launchers_no_diff_or_bench() {
    let bad = uphill(&GPU);
    assert!(bad.is_empty(), "uphill imports in gpu:\n{}", bad.join("\n"));
}

#[test]
fn cli_verbs_import_only_the_shared_cli_modules() {
    let dir = root().join("src/cli");
    let mut files = vec![];
    rust_files(&dir, &mut files);
    let mut bad = vec![];
    for f in &files {
        let verb = f.file_stem().unwrap().to_string_lossy().to_string();
        if verb == "mod" || CLI_SHARED.contains(&verb.as_str()) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        let here = vec!["cli".to_string(), verb.clone()];
        for m in imported_modules(&code, &here) {
            let other = m.get(1).filter(|_| m[0] == "cli").map(String::as_str);
            if let Some(other) = other.filter(|o| *o != verb && !CLI_SHARED.contains(o)) {
                bad.push(format!(
                    "src/cli/{verb}.rs: imports the verb module cli::{other}"
                ));
            }
        }
    }
    bad.sort();
    bad.dedup();
    assert!(
        bad.is_empty(),
        "CLI verbs importing each other:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scanner_resolves_groups_and_super() {
    let here = vec!["backends".to_string(), "mla".to_string()];
    let code = "use super::exec::{Cpu, X};\nuse crate::{kernels::a, fixture::{B, C}};\nfn f() { crate::replay::go(); }";
    let got = imported_modules(code, &here);
    let want: Vec<Vec<String>> = [
        vec!["kernels"],
        vec!["fixture"],
        vec!["replay"],
        vec!["backends", "exec"],
    ]
    .iter()
    .map(|v| v.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(got, want);
}
