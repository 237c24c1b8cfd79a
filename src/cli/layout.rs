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
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (value, text) = describe(&a)?;
    if a.json {
        emit(&format!("{value}\n"));
    } else {
        emit(&text);
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(a: &Args) -> anyhow::Result<(Value, String)> {
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
        return Ok(describe_mla(
            MlaLayout::new(num_blocks, block_size, head_size - rope, rope, dtype)?,
            token,
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
    if a.json {
        // Every element of the token is one JSON object of ~10 values per side.
        let elements = (2 * kv_heads * head_size) as u128;
        limits::check_memory(
            &format!("layout --json listing {elements} elements"),
            elements * 512,
        )?;
    }
    let l = KvLayout::new(kind, num_blocks, block_size, kv_heads, head_size, dtype)?;
    Ok(describe_mha(&l, token, block, row))
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
