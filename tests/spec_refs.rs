//! Every "§" reference in the repository resolves to a section of a
//! specification that ships with it (`docs/src/reference/`).
//!
//! A reference names its spec (`vllm-backends.md §9.3`, `aiter §5.2`,
//! `selection.md §5.12`) or, bare (`§19.31`), refers to the spec the same
//! file named last. `§A` needs a heading numbered `A`; `§A.B` needs a heading
//! `A.B` or a numbered item `B.` under heading `A` (selection.md §5 lists its
//! points that way). `§19 #7` is item 7 of section 19: only the section is
//! checked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const SPECS: [&str; 7] = [
    "vllm-backends",
    "aiter",
    "selection",
    "numerics",
    "fixture-format",
    "architecture",
    "style",
];

/// Directories whose files may cite the specs.
const SCANNED: [&str; 8] = [
    "shared", "sim", "gpu", "src", "tests", "kernels", "docs/src", "python",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The section numbers a spec defines: headings `## 9.` / `### 9.3` and
/// numbered items `12.` (recorded as `<section>.12`) under a heading.
fn sections(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim_start_matches('#');
        if trimmed.len() < line.len() {
            if let Some(num) = leading_number(trimmed.trim_start()) {
                out.insert(num.clone());
                current = Some(num);
            }
        } else if let (Some(sec), Some(item)) = (&current, leading_number(line)) {
            if !item.contains('.') && line[item.len()..].starts_with(". ") {
                out.insert(format!("{sec}.{item}"));
            }
        }
    }
    out
}

/// `9.3` from `9.3 Tile-range ...`, `1` from `1. Common ...`.
fn leading_number(s: &str) -> Option<String> {
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_digit() || c == '.'))
        .map_or(s.len(), |(i, _)| i);
    let num = s[..end].trim_end_matches('.');
    (!num.is_empty() && num.starts_with(|c: char| c.is_ascii_digit())).then(|| num.to_string())
}

/// The spec named right before byte `at` in `line` (`aiter.md`, `vllm-backends §`), if any.
fn spec_named_in(line: &str, at: usize) -> Option<(usize, &'static str)> {
    let head = &line[..at];
    SPECS
        .iter()
        .filter_map(|&spec| {
            let md = head.rfind(&format!("{spec}.md")).map(|i| (i, spec));
            let bare = head
                .rfind(spec)
                .filter(|&i| head[i + spec.len()..].trim().is_empty())
                .map(|i| (i, spec));
            md.max(bare)
        })
        .max()
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_dir() {
            if !matches!(
                name,
                "target" | "reference" | ".git" | "node_modules" | "__pycache__"
            ) {
                walk(&p, files);
            }
        } else if name != "spec_refs.rs"
            && [".rs", ".hip", ".h", ".cpp", ".md", ".py", ".sh"]
                .iter()
                .any(|x| name.ends_with(x))
        {
            files.push(p);
        }
    }
}

#[test]
fn every_section_reference_resolves_to_a_shipped_spec() {
    let refdir = root().join("docs/src/reference");
    let mut known: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for spec in SPECS {
        let path = refdir.join(format!("{spec}.md"));
        let text = fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the specs the code cites ship here)",
                path.display()
            )
        });
        known.insert(spec, sections(&text));
    }
    let mut files = Vec::new();
    for d in SCANNED {
        walk(&root().join(d), &mut files);
    }
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in &files {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        let mut last: Option<&str> = None;
        for (lineno, line) in text.lines().enumerate() {
            let mut from = 0;
            while let Some(off) = line[from..].find('§') {
                let at = from + off;
                from = at + '§'.len_utf8();
                if let Some((_, spec)) = spec_named_in(line, at) {
                    last = Some(spec);
                }
                let num = leading_number(line[from..].trim_start()).unwrap_or_default();
                let place = format!(
                    "{}:{}",
                    file.strip_prefix(root()).unwrap_or(file).display(),
                    lineno + 1
                );
                checked += 1;
                match last {
                    None => broken.push(format!("{place}: §{num} names no spec")),
                    Some(spec) if !known[spec].contains(&num) => {
                        broken.push(format!("{place}: {spec}.md has no §{num}"))
                    }
                    Some(_) => {}
                }
            }
            // A spec named without a § still sets the context for bare references.
            if let Some((_, spec)) = spec_named_in(line, line.len()) {
                last = Some(spec);
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} references found: is the scan looking in the right place?"
    );
    assert!(
        broken.is_empty(),
        "{} of {checked} § references do not resolve:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn section_parser_reads_headings_and_numbered_items() {
    let s = sections(
        "# Title\n## 5. Subtle points\n1. **first**\n12. twelfth\n### 5.3 Sub\n## 19. Surprises\n",
    );
    for want in ["5", "5.1", "5.12", "5.3", "19"] {
        assert!(s.contains(want), "{want} missing from {s:?}");
    }
    assert!(!s.contains("19.1"));
}
