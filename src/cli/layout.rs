//! `attnlab layout`: where token T's K and V elements land in a KV-cache
//! layout — shapes, flat offsets, n-d indices and a picture of one block.
//! A teaching aid for the formulas in `attnlab_shared::layout`.
//!
//! The token is a slot (`block * block_size + row`), as in `slot_mapping`.
//! Sizes are parsed here rather than by clap so that every bad value, with
//! `--json` too, gets the same one-line error naming the allowed values.

use super::util::{emit, parse_bounded, parse_size};
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_shared::layout::{KvIndex, KvLayout, KvSide, LayoutKind, LAYOUT_NAMES};
use attnlab_shared::limits::{self, MAX_BLOCK_SIZE, MAX_HEAD_SIZE, MAX_KV_HEADS, MAX_NUM_BLOCKS};
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// nhd, rocm-paged, aiter-shuffled or mla.
    #[arg(long, value_name = "NAME")]
    layout: String,
    /// Tokens per block.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    block_size: String,
    /// Channels per head (for mla: kv_lora_rank + rope dim, e.g. 576).
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    head_size: String,
    /// KV heads (ignored by mla, which caches one latent head).
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "N",
        default_value = "1"
    )]
    kv_heads: String,
    /// Cache storage dtype: fixes x = 16 bytes / element. A torch name
    /// (bfloat16, float8_e4m3fnuz, ...) or a --kv-cache-dtype (fp8: the --arch's fp8).
    #[arg(long, value_name = "D", default_value = "bfloat16")]
    dtype: String,
    /// GPU architecture deciding what `--dtype fp8` stores (gfx94x: e4m3fnuz, else e4m3fn).
    #[arg(long, default_value = "gfx942")]
    arch: String,
    /// The token's slot: block = T / block_size, row = T % block_size.
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "T",
        default_value = "0"
    )]
    token: String,
    /// Blocks in the cache [default: just enough to hold the token].
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    num_blocks: Option<String>,
    /// mla only: trailing channels holding k_pe.
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "N",
        default_value = "64"
    )]
    rope_dim: String,
    /// Print JSON ({"error": {...}} on bad input).
    #[arg(long)]
    json: bool,
    /// Draw the token's block as SVG into FILE ("-": stdout) instead of the
    /// text: every element in memory order, coloured by token, the --token dark.
    #[arg(long, value_name = "FILE", conflicts_with = "json")]
    svg: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(path) = &a.svg {
        let svg = draw(&a)?;
        if path == "-" {
            emit(&svg);
        } else {
            std::fs::write(path, svg).map_err(|e| anyhow::anyhow!("invalid --svg {path}: {e}"))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (value, text) = describe(&a)?;
    if a.json {
        emit(&format!("{value}\n"));
    } else {
        emit(&text);
    }
    Ok(ExitCode::SUCCESS)
}

/// The validated layout of the arguments and the token's (block, row).
enum Parsed {
    Mha(KvLayout, usize, usize),
    Mla(MlaLayout, usize, usize),
}

fn draw(a: &Args) -> anyhow::Result<String> {
    Ok(match parse(a)? {
        Parsed::Mha(l, block, row) => {
            // Every element of one block is a cell: bound the picture.
            let cells = 2 * l.block_numel() as u128;
            limits::check_memory(&format!("layout --svg drawing {cells} cells"), cells * 256)?;
            svg_mha(&l, block, row)
        }
        Parsed::Mla(l, block, row) => svg_mla(&l, block, row),
    })
}

fn describe(a: &Args) -> anyhow::Result<(Value, String)> {
    let token = parse_size("--token", &a.token, 0)?;
    match parse(a)? {
        Parsed::Mla(l, block, row) => Ok(describe_mla(l, token, block, row)),
        Parsed::Mha(l, block, row) => {
            if a.json {
                // Every element of the token is one JSON object of ~10 values per side.
                let elements = (2 * l.num_kv_heads * l.head_size) as u128;
                limits::check_memory(
                    &format!("layout --json listing {elements} elements"),
                    elements * 512,
                )?;
            }
            Ok(describe_mha(&l, token, block, row))
        }
    }
}

fn parse(a: &Args) -> anyhow::Result<Parsed> {
    let block_size = parse_bounded("--block-size", &a.block_size, 1, &MAX_BLOCK_SIZE)?;
    // Small upper bounds: this prints every element of one token.
    let head_size = parse_bounded("--head-size", &a.head_size, 1, &MAX_HEAD_SIZE)?;
    let token = parse_size("--token", &a.token, 0)?;
    let dtype = DType::parse_storage(&a.dtype, &a.arch)?;
    let num_blocks = match &a.num_blocks {
        Some(n) => parse_bounded("--num-blocks", n, 1, &MAX_NUM_BLOCKS)?,
        None => {
            MAX_NUM_BLOCKS.check_usize(
                "--token's block (--token / --block-size)",
                token / block_size,
            )? + 1
        }
    };
    if token / block_size >= num_blocks {
        anyhow::bail!(
            "invalid --token {token}: allowed range is [0, {}) (num_blocks * block_size)",
            num_blocks.saturating_mul(block_size)
        );
    }
    let (block, row) = (token / block_size, token % block_size);
    if a.layout.eq_ignore_ascii_case("mla") {
        let rope = parse_size("--rope-dim", &a.rope_dim, 0)?;
        if rope >= head_size {
            anyhow::bail!("invalid --rope-dim {rope}: must be < --head-size {head_size} (kv_lora_rank = head_size - rope_dim >= 1)");
        }
        return Ok(Parsed::Mla(
            MlaLayout::new(num_blocks, block_size, head_size - rope, rope, dtype)?,
            block,
            row,
        ));
    }
    let kind = LayoutKind::parse(&a.layout.to_ascii_lowercase()).map_err(|_| {
        anyhow::anyhow!(
            "invalid layout '{}': allowed: {}, mla",
            a.layout,
            LAYOUT_NAMES.join(", ")
        )
    })?;
    let kv_heads = parse_bounded("--kv-heads", &a.kv_heads, 1, &MAX_KV_HEADS)?;
    let l = KvLayout::new(kind, num_blocks, block_size, kv_heads, head_size, dtype)?;
    Ok(Parsed::Mha(l, block, row))
}

/// Names of the shape's axes, for labels.
fn axis_names(kind: LayoutKind, side: KvSide) -> &'static [&'static str] {
    match (kind, side) {
        (LayoutKind::Nhd, _) => &["nb", "bs", "h", "d"],
        (_, KvSide::K) => &["nb", "h", "d/x", "bs", "x"],
        (LayoutKind::RocmPaged, KvSide::V) => &["nb", "h", "d", "bs"],
        (LayoutKind::AiterShuffled, KvSide::V) => &["nb", "h", "bs/x", "d", "x"],
    }
}

fn describe_mha(l: &KvLayout, token: usize, block: usize, row: usize) -> (Value, String) {
    let mut text = format!(
        "layout {}  dtype {} (x = {} elements = 16 bytes)  block_size {}  head_size {}  kv_heads {}  num_blocks {}\n",
        l.kind,
        l.dtype,
        l.x(),
        l.block_size,
        l.head_size,
        l.num_kv_heads,
        l.num_blocks
    );
    text += &format!("token {token} = slot {token}: block {block}, row {row}\n");
    let mut value = json!({
        "layout": l.kind.name(), "dtype": l.dtype.name(), "x": l.x(), "block_size": l.block_size,
        "head_size": l.head_size, "num_kv_heads": l.num_kv_heads, "num_blocks": l.num_blocks,
        "token": token, "block": block, "row": row,
    });
    for (side, key) in [(KvSide::K, "k"), (KvSide::V, "v")] {
        let names = axis_names(l.kind, side);
        text += &format!(
            "\n{} shape {:?}  [{}]\n",
            key.to_uppercase(),
            l.shape(side),
            names.join(", ")
        );
        let mut elems = Vec::new();
        for head in 0..l.num_kv_heads {
            let offs: Vec<usize> = (0..l.head_size)
                .map(|dim| {
                    l.offset(
                        side,
                        KvIndex {
                            block,
                            row,
                            head,
                            dim,
                        },
                    )
                })
                .collect();
            if head < 4 || head + 1 == l.num_kv_heads {
                text += &format!(
                    "  head {head}: {}\n",
                    runs(&offs, |d| l.nd_index(
                        side,
                        KvIndex {
                            block,
                            row,
                            head,
                            dim: d
                        }
                    ))
                );
            } else if head == 4 {
                text += "  ...\n";
            }
            for (dim, o) in offs.into_iter().enumerate() {
                elems.push(json!({"head": head, "dim": dim, "offset": o, "index": l.nd_index(side, KvIndex { block, row, head, dim })}));
            }
        }
        value[key] = json!({"shape": l.shape(side), "axes": names, "elements": elems});
        text += &picture(l, side, block, row);
    }
    (value, text)
}

/// "16 runs of 8 contiguous elements; run starts 24, 152, ... (stride 128)".
fn runs(offs: &[usize], index: impl Fn(usize) -> Vec<usize>) -> String {
    let mut starts = vec![0usize];
    for d in 1..offs.len() {
        if offs[d] != offs[d - 1] + 1 {
            starts.push(d);
        }
    }
    let len = offs.len() / starts.len();
    let shown: Vec<String> = starts
        .iter()
        .take(3)
        .map(|&d| format!("{} = {:?}", offs[d], index(d)))
        .collect();
    let stride = if starts.len() > 1 {
        format!(" (stride {})", offs[starts[1]] - offs[starts[0]])
    } else {
        String::new()
    };
    let more = if starts.len() > 3 { ", ..." } else { "" };
    if len == 1 {
        format!(
            "{} single elements{stride}; offsets {}{more}",
            starts.len(),
            shown.join(", ")
        )
    } else if starts.len() == 1 {
        format!("{} contiguous elements at offset {}", offs.len(), shown[0])
    } else {
        format!(
            "{} runs of {len} contiguous elements{stride}; offsets {}{more}",
            starts.len(),
            shown.join(", ")
        )
    }
}

/// One head's slice of the token's block as a grid: each cell is a
/// contiguous run of the innermost axis, memory order left to right then
/// down; `#` marks cells holding the token.
fn picture(l: &KvLayout, side: KvSide, block: usize, row: usize) -> String {
    let head = 0;
    let shape = l.shape(side);
    let names = axis_names(l.kind, side);
    // Axes below the head (NHD: below the block, the heads become columns).
    let skip = if l.kind == LayoutKind::Nhd { 1 } else { 2 };
    let inner = &shape[skip..];
    let (rows, cols, cell) = match inner.len() {
        3 => (inner[0], inner[1], inner[2]),
        _ => (inner[0], inner[1], 1),
    };
    let heads: Vec<usize> = if l.kind == LayoutKind::Nhd {
        (0..l.num_kv_heads).collect()
    } else {
        vec![head]
    };
    let mut marked = std::collections::HashSet::new();
    for &h in &heads {
        for dim in 0..l.head_size {
            let idx = l.nd_index(
                side,
                KvIndex {
                    block,
                    row,
                    head: h,
                    dim,
                },
            );
            marked.insert((idx[skip], idx[skip + 1]));
        }
    }
    let (max_rows, max_cols) = (12, 48);
    let who = if l.kind == LayoutKind::Nhd {
        format!("block {block}")
    } else {
        format!("block {block}, head {head}")
    };
    let mut s = format!(
        "  {who}: rows = {}, columns = {}, each cell = {cell} contiguous element(s){}, # = holds the token\n",
        names[skip],
        names[skip + 1],
        if cell > 1 { format!(" along {}", names[skip + 2]) } else { String::new() }
    );
    for r in 0..rows.min(max_rows) {
        let line: String = (0..cols.min(max_cols))
            .map(|c| if marked.contains(&(r, c)) { '#' } else { '.' })
            .collect();
        s += &format!(
            "  {r:>5} |{line}{}\n",
            if cols > max_cols { " ..." } else { "" }
        );
    }
    if rows > max_rows {
        let hidden: std::collections::HashSet<usize> = marked
            .iter()
            .map(|&(r, _)| r)
            .filter(|&r| r >= max_rows)
            .collect();
        s += &format!(
            "  ... {} more rows ({} of them hold the token)\n",
            rows - max_rows,
            hidden.len()
        );
    }
    s
}

fn describe_mla(l: MlaLayout, token: usize, block: usize, row: usize) -> (Value, String) {
    let first = l.offset(block, row, 0);
    let mut text = format!(
        "layout mla  dtype {}  block_size {}  width {} = kv_lora_rank {} + rope {}  num_blocks {}\n",
        l.dtype,
        l.block_size,
        l.width(),
        l.kv_lora_rank,
        l.rope_dim,
        l.num_blocks
    );
    text += &format!("token {token} = slot {token}: block {block}, row {row}\n\nshape {:?}  [nb, bs, kv_lora_rank + rope]\n", l.shape());
    text += &format!(
        "  c_kv (also read as V): offsets {}..{}  index [{block}, {row}, 0..{}]\n",
        first,
        first + l.kv_lora_rank,
        l.kv_lora_rank
    );
    text += &format!(
        "  k_pe:                  offsets {}..{}  index [{block}, {row}, {}..{}]\n",
        first + l.kv_lora_rank,
        first + l.width(),
        l.kv_lora_rank,
        l.width()
    );
    text += &format!("  block {block}: one row per token, [c_kv | k_pe]\n");
    for r in 0..l.block_size.min(12) {
        let mark = if r == row {
            "[########|##]"
        } else {
            "[........|..]"
        };
        text += &format!("  {r:>5} |{mark}\n");
    }
    if l.block_size > 12 {
        text += &format!("  ... {} more rows\n", l.block_size - 12);
    }
    let value = json!({
        "layout": "mla", "dtype": l.dtype.name(), "block_size": l.block_size, "num_blocks": l.num_blocks,
        "kv_lora_rank": l.kv_lora_rank, "rope_dim": l.rope_dim, "shape": l.shape(),
        "token": token, "block": block, "row": row,
        "c_kv": {"offsets": [first, first + l.kv_lora_rank]},
        "k_pe": {"offsets": [first + l.kv_lora_rank, first + l.width()]},
    });
    (value, text)
}

/// The innermost contiguous unit of a side's memory (what one picture line
/// holds before wrapping) and what it is.
fn line_unit(l: &KvLayout, side: KvSide) -> (usize, &'static str) {
    let (bs, h, d, x) = (l.block_size, l.num_kv_heads, l.head_size, l.x());
    match (l.kind, side) {
        (LayoutKind::Nhd, _) => (h * d, "one token: every head's head_size elements"),
        (_, KvSide::K) => (bs * x, "one d/x group: x dims of every token"),
        (LayoutKind::RocmPaged, KvSide::V) => (bs, "one dim of every token"),
        (LayoutKind::AiterShuffled, KvSide::V) => (d * x, "x tokens' dims, interleaved"),
    }
}

/// Lines drawn at most per side before the unit is wrapped into wider lines.
const MAX_LINES: usize = 48;
/// Drawing width of a line, pixels.
const LINE_PX: f64 = 1080.0;

/// One block of K and of V in memory order, a cell per element coloured by
/// the token (block row) it belongs to; the highlighted row dark.
fn svg_mha(l: &KvLayout, block: usize, row: usize) -> String {
    use super::svg::{token_colour, Svg};
    let n = l.block_numel();
    let mut svg = Svg::new(1200.0, 0.0);
    // One class per token row: its colour (the highlighted row dark).
    for r in 0..l.block_size {
        svg.add_style(&format!(".t{r}{{fill:{}}}", token_colour(r, r == row)));
    }
    svg.add_style(".c{stroke:white;stroke-width:1}");
    svg.add_style(".n{font-size:8px;text-anchor:middle}");
    svg.text(
        20.0,
        24.0,
        15.0,
        "start",
        &format!(
            "{} layout, {} (x = {}), block_size {}, head_size {}, kv_heads {}: block {block}, token row {row} dark",
            l.kind, l.dtype, l.x(), l.block_size, l.head_size, l.num_kv_heads
        ),
    );
    let mut y = 44.0;
    for side in [KvSide::K, KvSide::V] {
        // offset within the block -> (row, head, dim)
        let mut who = vec![(0usize, 0usize, 0usize); n];
        for r in 0..l.block_size {
            for head in 0..l.num_kv_heads {
                for dim in 0..l.head_size {
                    let o = l.offset(
                        side,
                        KvIndex {
                            block,
                            row: r,
                            head,
                            dim,
                        },
                    ) - block * n;
                    who[o] = (r, head, dim);
                }
            }
        }
        let (unit, what) = line_unit(l, side);
        let f = (n / unit).div_ceil(MAX_LINES).max(1);
        let w = unit * f;
        let lines = n.div_ceil(w);
        let cw = (LINE_PX / w as f64).min(22.0);
        let ch = cw.clamp(6.0, 22.0);
        let names = axis_names(l.kind, side);
        let wrap = if f > 1 {
            format!(", {f} units per line")
        } else {
            String::new()
        };
        svg.text(
            20.0,
            y + 14.0,
            13.0,
            "start",
            &format!(
                "{}  shape {:?} [{}]: a line = {w} contiguous elements ({what}{wrap})",
                if side == KvSide::K { "K" } else { "V" },
                l.shape(side),
                names.join(", ")
            ),
        );
        y += 24.0;
        let x0 = 90.0;
        if l.kind == LayoutKind::Nhd {
            for head in 0..l.num_kv_heads {
                let hx = x0 + (head * l.head_size) as f64 * cw;
                svg.text(hx + 2.0, y + 10.0, 10.0, "start", &format!("head {head}"));
            }
            y += 14.0;
        }
        let mut last_head = usize::MAX;
        for line in 0..lines {
            let ly = y + line as f64 * ch;
            let (_, head, dim) = who[line * w];
            if l.kind != LayoutKind::Nhd && head != last_head {
                svg.text(
                    x0 - 6.0,
                    ly + ch.min(10.0),
                    10.0,
                    "end",
                    &format!("head {head}"),
                );
                last_head = head;
            } else if l.kind != LayoutKind::Nhd && ch >= 10.0 {
                svg.text(x0 - 6.0, ly + 9.0, 8.0, "end", &format!("d {dim}"));
            }
            for col in 0..w.min(n - line * w) {
                let (r, _, _) = who[line * w + col];
                let cx = x0 + col as f64 * cw;
                let class = if cw >= 6.0 {
                    format!("t{r} c")
                } else {
                    format!("t{r}")
                };
                svg.cell(cx, ly, cw, ch, &class);
                if cw >= 14.0 {
                    svg.label(cx + cw / 2.0, ly + ch * 0.7, "n", &r.to_string());
                }
            }
        }
        if l.kind == LayoutKind::Nhd {
            for head in 1..l.num_kv_heads {
                let hx = x0 + (head * l.head_size) as f64 * cw;
                svg.line(hx, y - 2.0, hx, y + lines as f64 * ch + 2.0, "black", 1.5);
            }
        }
        y += lines as f64 * ch + 26.0;
    }
    // Legend: the colour of every token row.
    svg.text(20.0, y + 10.0, 12.0, "start", "token (row of the block):");
    let sw = (900.0 / l.block_size as f64).min(28.0);
    for r in 0..l.block_size {
        let x = 180.0 + r as f64 * sw;
        svg.cell(x, y, sw - 2.0, 14.0, &format!("t{r}"));
        if sw >= 14.0 {
            svg.text(x + sw / 2.0 - 1.0, y + 11.0, 9.0, "middle", &r.to_string());
        }
    }
    svg.grow_to(y + 30.0);
    svg.finish()
}

/// One block of the MLA latent cache: a line per token, `c_kv` then `k_pe`.
fn svg_mla(l: &MlaLayout, block: usize, row: usize) -> String {
    use super::svg::{token_colour, Svg};
    let mut svg = Svg::new(1200.0, 0.0);
    svg.text(
        20.0,
        24.0,
        15.0,
        "start",
        &format!(
            "mla layout, {}, block_size {}: [num_blocks, block_size, {} + {}], block {block}, token row {row} dark",
            l.dtype, l.block_size, l.kv_lora_rank, l.rope_dim
        ),
    );
    let scale = LINE_PX / l.width() as f64;
    let ch = (600.0 / l.block_size as f64).clamp(3.0, 18.0);
    let (x0, mut y) = (90.0, 40.0);
    let kv_w = l.kv_lora_rank as f64 * scale;
    svg.text(
        x0 + kv_w / 2.0,
        y + 10.0,
        11.0,
        "middle",
        &format!("c_kv: channels 0..{} (read as K and as V)", l.kv_lora_rank),
    );
    if l.rope_dim > 0 {
        svg.text(
            x0 + kv_w + l.rope_dim as f64 * scale / 2.0,
            y + 10.0,
            11.0,
            "middle",
            "k_pe",
        );
    }
    y += 16.0;
    for r in 0..l.block_size {
        let ly = y + r as f64 * ch;
        let first = l.offset(block, r, 0);
        if ch >= 9.0 || r == row {
            svg.text(
                x0 - 6.0,
                ly + ch.min(10.0),
                9.0,
                "end",
                &format!("row {r} @{first}"),
            );
        }
        svg.rect(
            x0,
            ly,
            kv_w,
            ch,
            &token_colour(r, r == row),
            Some("white"),
            None,
        );
        if l.rope_dim > 0 {
            let fill = if r == row {
                "hsl(0, 0%, 25%)"
            } else {
                "hsl(0, 0%, 70%)"
            };
            svg.rect(
                x0 + kv_w,
                ly,
                l.rope_dim as f64 * scale,
                ch,
                fill,
                Some("white"),
                None,
            );
        }
    }
    y += l.block_size as f64 * ch + 20.0;
    svg.text(
        20.0,
        y,
        12.0,
        "start",
        &format!(
            "no head axis: every query head reads the same {}-wide row ({} bytes per token)",
            l.width(),
            l.width() * l.dtype.size_bytes()
        ),
    );
    svg.grow_to(y + 14.0);
    svg.finish()
}
