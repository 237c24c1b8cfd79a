//! The book's figures are drawn by the code: every SVG listed in
//! docs/figures.txt must equal what `attnlab <args> --svg -` draws now
//! (docs/gen-figures.sh regenerates them).

use std::path::Path;
use std::process::Command;

fn figures() -> Vec<(String, Vec<String>)> {
    let list =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/figures.txt"))
            .expect("docs/figures.txt");
    list.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut words = l.split_whitespace().map(String::from);
            let file = words.next().expect("a file name");
            (file, words.collect())
        })
        .collect()
}

#[test]
fn committed_figures_equal_what_the_code_draws() {
    let list = figures();
    assert!(
        list.len() >= 6,
        "docs/figures.txt lists {} figures",
        list.len()
    );
    for (file, args) in list {
        let out = Command::new(env!("CARGO_BIN_EXE_attnlab"))
            .args(&args)
            .args(["--svg", "-"])
            .output()
            .expect("attnlab runs");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs/src/figures")
            .join(&file);
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == out.stdout,
            "{} differs from `attnlab {} --svg -`: run docs/gen-figures.sh",
            path.display(),
            args.join(" ")
        );
    }
}

#[test]
fn layout_svg_marks_every_element_of_a_block_once_per_side() {
    let out = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args([
            "layout",
            "--layout",
            "rocm-paged",
            "--block-size",
            "16",
            "--head-size",
            "16",
        ])
        .args(["--kv-heads", "1", "--token", "3", "--svg", "-"])
        .output()
        .expect("attnlab runs");
    assert!(out.status.success());
    let svg = String::from_utf8(out.stdout).expect("UTF-8");
    // 16 tokens x 16 dims x 1 head per side, plus the 16 legend swatches and the background.
    assert_eq!(svg.matches("<rect").count(), 2 * 16 * 16 + 16 + 1, "{svg}");
    // The highlighted token (row 3) is dark, in 16 cells per side and its swatch.
    assert!(svg.contains(".t3{fill:hsl(52.52, 70%, 35%)}"), "{svg}");
    assert_eq!(svg.matches("class=\"t3").count(), 2 * 16 + 1);
}

#[test]
fn svg_with_json_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_attnlab"))
        .args([
            "layout",
            "--layout",
            "nhd",
            "--block-size",
            "16",
            "--head-size",
            "16",
            "--json",
            "--svg",
            "-",
        ])
        .output()
        .expect("attnlab runs");
    // Conflicting flags are a usage error (docs/src/cli.md): exit 2.
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("cannot be used with"), "{said}");
}
