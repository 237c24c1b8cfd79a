//! Reader and writer for `attn-fixture/1` and `attn-fixture/2` files (spec:
//! docs/src/reference/fixture-format.md): one attention case, as safetensors
//! with a JSON `case` in the header's `__metadata__`. `/1` is a case captured
//! from a real kernel (inputs and `output`); `/2` is a superset whose
//! `output` is optional (a file `attnlab cases` wrote holds inputs only, the
//! capture adds the output) and which says which backend and kernel path it
//! is for, what launch really ran, fp8 KV caches with their scales, ALiBi
//! slopes, tags, and a capture's error or environment.
//!
//! Everything is validated before anything is returned, so no kernel ever
//! sees an inconsistent case: the format string, the op, dtype names, every
//! tensor's presence, dtype and shape against the metadata, block ids and
//! `seq_lens` against the table (through [`AttentionMetadata::new`]),
//! `query_start_loc` monotone, NaN in inputs, truncated data. Every failure is
//! a [`FixtureError`] naming the file, the tensor (or metadata key) and the
//! problem; nothing here panics on a malformed file.

use crate::config::AttnConfig;
use crate::tensor::Flat;
use attnlab_shared::dtype::DType;
use attnlab_shared::limits;
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use half::{bf16, f16};
use ndarray::{Array, Array2, Array3, Array4, Dimension, IntoDimension};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The first format: every file a captured case with its `output`.
pub const FORMAT: &str = "attn-fixture/1";
/// The superset [`write`](fn@write) produces.
pub const FORMAT_2: &str = "attn-fixture/2";
/// The `backend` values of attn-fixture/2 (vLLM enum names).
pub const BACKENDS: [&str; 8] = [
    "TRITON_ATTN",
    "ROCM_ATTN",
    "ROCM_AITER_FA",
    "ROCM_AITER_UNIFIED_ATTN",
    "FLEX_ATTENTION",
    "TRITON_MLA",
    "ROCM_AITER_MLA",
    "ROCM_AITER_TRITON_MLA",
];

/// The kernel entry points (`path`) each op accepts.
pub fn paths_for(op: Op) -> &'static [&'static str] {
    match op {
        Op::PagedAttention => &[
            "unified_attention",
            "unified_attention_2d",
            "unified_attention_3d",
            "chunked_prefill_paged_decode",
            "aiter_flash_attn_varlen",
            "aiter_unified_attention",
            "flex_attention",
        ],
        Op::MergeAttnStates => &["merge_attn_states"],
        Op::MlaDecode => &["decode_attention_fwd", "aiter_mla_decode_fwd"],
    }
}

/// What went wrong, where: `{file}: {tensor}: {problem}`. `tensor` is a
/// tensor name, `metadata.<key>` for the case JSON, or `header`/`file`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {tensor}: {problem}")]
pub struct FixtureError {
    pub file: String,
    pub tensor: String,
    pub problem: String,
}

type Result<T> = std::result::Result<T, FixtureError>;

/// The three ops of attn-fixture/1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    PagedAttention,
    MergeAttnStates,
    MlaDecode,
}

impl Op {
    pub const NAMES: [&'static str; 3] = ["paged_attention", "merge_attn_states", "mla_decode"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Metadata every case has.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub op: Op,
    /// Dtype of query, caches and output.
    pub dtype: DType,
    pub producer: String,
    pub atol: f64,
    pub rtol: f64,
    pub seed: Option<i64>,
    pub note: Option<String>,
    /// 1 or 2 (`attn-fixture/<n>`).
    pub version: u8,
    /// /2: the vLLM backend the case targets.
    pub backend: Option<String>,
    /// /2: the kernel entry point the capture runs (one of [`paths_for`]).
    pub path: Option<String>,
    /// /2: what the capture's kernel launch really was.
    pub launch: Option<Launch>,
    /// /2: the regimes the case was drawn in (`edge:window_1`, `mixed_batch`, ...).
    pub tags: Vec<String>,
    /// /2: the capture's error on this case (then there is no `output`).
    pub capture_error: Option<String>,
    /// /2: the capture's environment (vllm, torch, triton, gpu, arch, adapter).
    pub capture: Option<serde_json::Map<String, Value>>,
}

impl Header {
    /// A /2 header for a case not yet captured.
    pub fn for_case(op: Op, dtype: DType, atol: f64, rtol: f64, seed: i64) -> Self {
        Header {
            op,
            dtype,
            producer: format!("attnlab cases {}", env!("CARGO_PKG_VERSION")),
            atol,
            rtol,
            seed: Some(seed),
            note: None,
            version: 2,
            backend: None,
            path: None,
            launch: None,
            tags: Vec::new(),
            capture_error: None,
            capture: None,
        }
    }
}

/// 2D (one program per row block) or 3D split-KV, as a capture recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LaunchGrid {
    #[serde(rename = "2d")]
    TwoD,
    #[serde(rename = "3d")]
    ThreeD,
}

/// The `launch` object of attn-fixture/2: the keys replay uses, typed, and
/// the whole object as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub kernel: Option<String>,
    pub grid: Option<LaunchGrid>,
    /// Segments of a 3D launch (or KV splits), when recorded.
    pub num_segments: Option<usize>,
    /// `chunked_prefill_paged_decode`: the kernel its decode rows ran, one of
    /// [`DECODE_KERNELS`].
    pub decode: Option<String>,
    pub raw: serde_json::Map<String, Value>,
}

/// `launch.decode` values: Triton's 2D paged decode, or the HIP custom paged attention.
pub const DECODE_KERNELS: [&str; 2] = ["kernel_paged_attention_2d", "paged_attention_ll4mi"];

/// Largest `launch.num_segments` accepted (vLLM's kernels use up to 128).
pub const MAX_SEGMENTS: usize = 1024;

/// `op = paged_attention`. Tensors are row-major arrays with named axes
/// ([`crate::tensor`]); the caches are canonical NHD.
#[derive(Debug, Clone, PartialEq)]
pub struct PagedCase {
    /// Heads, head size, scale, window, softcap, sinks; `dtype` = `kv_dtype` = the case's dtype.
    pub cfg: AttnConfig,
    /// Validated; `slot_mapping` holds the slots of the query tokens (the
    /// caches already contain them).
    pub meta: AttentionMetadata,
    /// `[token, head, d]`.
    pub query: Array3<f32>,
    /// `[block, slot, kv_head, d]`, values of `cfg.kv_dtype` (fp8 caches:
    /// the stored fp8 values, not yet scaled).
    pub key_cache: Array4<f32>,
    pub value_cache: Array4<f32>,
    /// `[token, head, d]`: what the kernel returned; absent in a case not yet captured.
    pub output: Option<Array3<f32>>,
    pub reference: Option<Array3<f32>>,
}

/// `op = merge_attn_states`: outputs `[token, head, d]`, LSEs
/// `[head, token]` (natural log).
#[derive(Debug, Clone, PartialEq)]
pub struct MergeCase {
    pub num_tokens: usize,
    pub num_heads: usize,
    pub head_size: usize,
    pub prefix_output: Array3<f32>,
    pub prefix_lse: Array2<f32>,
    pub suffix_output: Array3<f32>,
    pub suffix_lse: Array2<f32>,
    pub output: Option<Array3<f32>>,
    pub output_lse: Option<Array2<f32>>,
}

/// `op = mla_decode`: absorbed MLA, one query token per sequence
/// (`d` = `kv_lora_rank + qk_rope_head_dim`, `c` = `kv_lora_rank`).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaCase {
    pub num_heads: usize,
    pub kv_lora_rank: usize,
    pub qk_rope_head_dim: usize,
    pub scale: f32,
    pub num_kv_splits: usize,
    /// Validated block table and seq_lens (query_start_loc = 0, 1, .., num_seqs).
    pub meta: AttentionMetadata,
    /// `[seq, head, d]`.
    pub query: Array3<f32>,
    /// `[block, slot, d]`.
    pub kv_cache: Array3<f32>,
    /// `[seq, head, c]`; absent in a case not yet captured.
    pub output: Option<Array3<f32>>,
    pub reference: Option<Array3<f32>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Case {
    Paged(PagedCase),
    Merge(MergeCase),
    Mla(MlaCase),
}

impl Case {
    /// The kernel's output (`[token, head, d]`; MLA `[seq, head, c]`), when
    /// the file holds one.
    pub fn output(&self) -> Option<&Array3<f32>> {
        match self {
            Case::Paged(p) => p.output.as_ref(),
            Case::Merge(m) => m.output.as_ref(),
            Case::Mla(m) => m.output.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fixture {
    /// The path (or name) it was read from, as given.
    pub file: String,
    pub header: Header,
    pub case: Case,
}

/// Reads and validates one fixture file.
pub fn load(path: &Path) -> Result<Fixture> {
    let file = path.display().to_string();
    let bytes = read_bounded(path).map_err(|problem| FixtureError {
        file: file.clone(),
        tensor: "file".into(),
        problem,
    })?;
    parse(&file, &bytes)
}

/// A regular file's bytes, never more than its size says nor more than
/// `max_fixture_bytes` (a device such as /dev/zero, a pipe or a directory is
/// refused before anything is read), within the memory budget once widened.
fn read_bounded(path: &Path) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let regular = |m: std::fs::Metadata| match m.is_file() {
        true => Ok(m),
        false => Err(
            "not a regular file (a device, pipe or directory): a fixture is a .safetensors file"
                .to_string(),
        ),
    };
    // Checked before opening too: opening a pipe would wait for a writer.
    regular(std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?)?;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = regular(f.metadata().map_err(|e| format!("cannot read: {e}"))?)?;
    let size = limits::MAX_FIXTURE_BYTES
        .check("fixture size", meta.len())
        .map_err(|e| e.to_string())?;
    // Widened to f32 (x2 for 16-bit data), then copied into each backend's layout.
    limits::check_memory("replaying this fixture", size as u128 * 8).map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(size as usize);
    f.take(size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 != size {
        return Err(format!(
            "its size changed while read: {size} bytes by its metadata, {} read",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Parses and validates fixture bytes; `file` is only used in errors.
pub fn parse(file: &str, bytes: &[u8]) -> Result<Fixture> {
    let err = |tensor: &str, problem: String| FixtureError {
        file: file.to_string(),
        tensor: tensor.to_string(),
        problem,
    };
    let st = match SafeTensors::deserialize(bytes) {
        Ok(st) => st,
        Err(SafeTensorError::MetadataIncompleteBuffer) => {
            return Err(truncation_error(file, bytes))
        }
        Err(e) => {
            return Err(err(
                "header",
                format!("not a readable safetensors file ({e:?}); truncated or not attn-fixture/1"),
            ))
        }
    };
    let (_, raw_meta) =
        SafeTensors::read_metadata(bytes).map_err(|e| err("header", format!("{e:?}")))?;
    let case_json = raw_meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("case"))
        .ok_or_else(|| {
            err(
                "metadata",
                "the header's __metadata__ has no 'case' entry".into(),
            )
        })?;
    let case: HashMap<String, Value> = serde_json::from_str(case_json)
        .map_err(|e| err("metadata", format!("'case' is not a JSON object: {e}")))?;
    let r = Reader { file, st, case };

    let format = r.string("format")?;
    let version = match format.as_str() {
        FORMAT => 1,
        FORMAT_2 => 2,
        _ => {
            return Err(err(
                "metadata.format",
                format!("'{format}' is not supported: allowed: {FORMAT}, {FORMAT_2}"),
            ))
        }
    };
    let op = match r.string("op")?.as_str() {
        "paged_attention" => Op::PagedAttention,
        "merge_attn_states" => Op::MergeAttnStates,
        "mla_decode" => Op::MlaDecode,
        other => {
            return Err(err(
                "metadata.op",
                format!("'{other}' is unknown: allowed: {}", Op::NAMES.join(", ")),
            ))
        }
    };
    let dtype = match r.string("dtype")?.as_str() {
        "float16" => DType::F16,
        "bfloat16" => DType::Bf16,
        "float32" => DType::F32,
        other => {
            return Err(err(
                "metadata.dtype",
                format!("'{other}' is unknown: allowed: float16, bfloat16, float32"),
            ))
        }
    };
    let v2 = version == 2;
    let header = Header {
        op,
        dtype,
        producer: r.string("producer")?,
        atol: r.tolerance("atol")?,
        rtol: r.tolerance("rtol")?,
        seed: r.case.get("seed").and_then(Value::as_i64),
        note: r
            .case
            .get("note")
            .and_then(Value::as_str)
            .map(str::to_string),
        version,
        backend: if v2 {
            r.one_of("backend", &BACKENDS)?
        } else {
            None
        },
        path: if v2 {
            r.one_of("path", paths_for(op))?
        } else {
            None
        },
        launch: if v2 { r.launch()? } else { None },
        tags: if v2 { r.tags()? } else { Vec::new() },
        capture_error: if v2 {
            r.optional_string("capture_error")?
        } else {
            None
        },
        capture: if v2 {
            r.optional_object("capture")?
        } else {
            None
        },
    };
    // /1 files are captures: `output` is required. /2 cases may lack it.
    let need_output = !v2;
    let case = match op {
        Op::PagedAttention => Case::Paged(r.paged(dtype, v2, need_output)?),
        Op::MergeAttnStates => Case::Merge(r.merge(dtype, need_output)?),
        Op::MlaDecode => Case::Mla(r.mla(dtype, need_output)?),
    };
    Ok(Fixture {
        file: file.to_string(),
        header,
        case,
    })
}

/// Serializes a fixture as `attn-fixture/2` (whatever version it was read
/// as): the header's metadata, every input, and `output`/`output_lse`/
/// `reference` where present. [`parse`] reads the bytes back to an equal
/// [`Fixture`] (up to `file` and `version`).
pub fn write(f: &Fixture) -> Result<Vec<u8>> {
    let h = &f.header;
    let mut meta = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        meta.insert(k.to_string(), v);
    };
    put("format", FORMAT_2.into());
    put("op", h.op.name().into());
    put("dtype", h.dtype.name().into());
    put("producer", h.producer.clone().into());
    put("atol", h.atol.into());
    put("rtol", h.rtol.into());
    if let Some(seed) = h.seed {
        put("seed", seed.into());
    }
    if let Some(note) = &h.note {
        put("note", note.clone().into());
    }
    put("backend", h.backend.clone().into());
    put("path", h.path.clone().into());
    put(
        "launch",
        h.launch
            .as_ref()
            .map_or(Value::Null, |l| Value::Object(l.raw.clone())),
    );
    put("tags", h.tags.clone().into());
    if let Some(e) = &h.capture_error {
        put("capture_error", e.clone().into());
    }
    if let Some(c) = &h.capture {
        put("capture", Value::Object(c.clone()));
    }
    let dt = h.dtype;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    // Shapes come from the arrays themselves.
    let mut float = |name: &str, dtype: DType, shape: &[usize], v: &[f32]| {
        tensors.push((
            name.to_string(),
            st_dtype(dtype),
            shape.to_vec(),
            storage_bytes(v, dtype),
        ));
    };
    let mut ints: Vec<(String, Vec<usize>, Vec<i32>)> = Vec::new();
    match &f.case {
        Case::Paged(p) => {
            let c = &p.cfg;
            let (hq, d) = (c.num_heads(), c.head_size());
            put("num_heads", hq.into());
            put("num_kv_heads", c.num_kv_heads().into());
            put("head_size", d.into());
            put("block_size", p.meta.block_size().into());
            put("scale", (c.scale() as f64).into());
            put("causal", p.meta.causal().into());
            put("sliding_window", c.sliding_window().into());
            put("softcap", c.softcap().map(f64::from).into());
            put("kv_cache_dtype", fp8_name(c.kv_dtype()).into());
            float("query", dt, p.query.shape(), &p.query.flat());
            let (k, v) = (&p.key_cache, &p.value_cache);
            float("key_cache", c.kv_dtype(), k.shape(), &k.flat());
            float("value_cache", c.kv_dtype(), v.shape(), &v.flat());
            if c.kv_dtype().is_fp8() {
                float("k_scale", DType::F32, &[1], &[c.k_scale()]);
                float("v_scale", DType::F32, &[1], &[c.v_scale()]);
            }
            if let Some(x) = &c.sinks() {
                float("sinks", DType::F32, &[hq], x);
            }
            if let Some(x) = &c.alibi_slopes() {
                float("alibi_slopes", DType::F32, &[hq], x);
            }
            if let Some(o) = &p.output {
                float("output", dt, o.shape(), &o.flat());
            }
            if let Some(r) = &p.reference {
                float("reference", DType::F32, r.shape(), &r.flat());
            }
            table_tensors(&mut ints, &p.meta);
            ints.push((
                "query_start_loc".into(),
                vec![p.meta.query_start_loc().len()],
                p.meta.query_start_loc().to_vec(),
            ));
        }
        Case::Merge(m) => {
            put("num_heads", m.num_heads.into());
            put("head_size", m.head_size.into());
            // Outputs [token, head, d] in the case's dtype, LSEs [head, token] in f32.
            let merge_tensors = [
                ("prefix_output", dt, Some(m.prefix_output.view().into_dyn())),
                ("suffix_output", dt, Some(m.suffix_output.view().into_dyn())),
                (
                    "prefix_lse",
                    DType::F32,
                    Some(m.prefix_lse.view().into_dyn()),
                ),
                (
                    "suffix_lse",
                    DType::F32,
                    Some(m.suffix_lse.view().into_dyn()),
                ),
                ("output", dt, m.output.as_ref().map(|a| a.view().into_dyn())),
                (
                    "output_lse",
                    DType::F32,
                    m.output_lse.as_ref().map(|a| a.view().into_dyn()),
                ),
            ];
            for (name, dtype, a) in merge_tensors {
                if let Some(a) = a {
                    float(name, dtype, a.shape(), &a.flat());
                }
            }
        }
        Case::Mla(m) => {
            put("num_heads", m.num_heads.into());
            put("kv_lora_rank", m.kv_lora_rank.into());
            put("qk_rope_head_dim", m.qk_rope_head_dim.into());
            put("block_size", m.meta.block_size().into());
            put("scale", (m.scale as f64).into());
            put("num_kv_splits", m.num_kv_splits.into());
            float("query", dt, m.query.shape(), &m.query.flat());
            float("kv_cache", dt, m.kv_cache.shape(), &m.kv_cache.flat());
            if let Some(o) = &m.output {
                float("output", dt, o.shape(), &o.flat());
            }
            if let Some(o) = &m.reference {
                float("reference", DType::F32, o.shape(), &o.flat());
            }
            table_tensors(&mut ints, &m.meta);
        }
    }
    for (name, shape, v) in ints {
        tensors.push((
            name,
            Dtype::I32,
            shape,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
    }
    let mut views = Vec::with_capacity(tensors.len());
    for (name, dtype, shape, bytes) in &tensors {
        let view =
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map_err(|e| {
                FixtureError {
                    file: f.file.clone(),
                    tensor: name.clone(),
                    problem: format!("cannot be serialized: {e:?}"),
                }
            })?;
        views.push((name.clone(), view));
    }
    let case_json = Value::Object(meta).to_string();
    let info = Some(HashMap::from([("case".to_string(), case_json)]));
    safetensors::tensor::serialize(views, &info).map_err(|e| FixtureError {
        file: f.file.clone(),
        tensor: "file".into(),
        problem: format!("cannot be serialized: {e:?}"),
    })
}

/// [`write`](fn@write) to a file.
pub fn save(path: &Path, f: &Fixture) -> Result<()> {
    let bytes = write(f)?;
    std::fs::write(path, bytes).map_err(|e| FixtureError {
        file: path.display().to_string(),
        tensor: "file".into(),
        problem: format!("cannot write: {e}"),
    })
}

/// `block_table` and `seq_lens` of a batch.
fn table_tensors(ints: &mut Vec<(String, Vec<usize>, Vec<i32>)>, meta: &AttentionMetadata) {
    let t = &meta.block_table();
    ints.push((
        "block_table".into(),
        vec![t.num_rows, t.max_blocks],
        t.data.clone(),
    ));
    ints.push((
        "seq_lens".into(),
        vec![meta.seq_lens().len()],
        meta.seq_lens().to_vec(),
    ));
}

/// The safetensors dtype a value dtype is stored as (fp8: raw bits in U8).
fn st_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::F16 => Dtype::F16,
        DType::Bf16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::Fp8E4m3Fn | DType::Fp8E4m3Fnuz => Dtype::U8,
    }
}

/// Little-endian storage bytes of values exact in `dtype`.
fn storage_bytes(v: &[f32], dtype: DType) -> Vec<u8> {
    let n = dtype.size_bytes();
    let mut out = Vec::with_capacity(v.len() * n);
    for &x in v {
        out.extend_from_slice(&dtype.to_bits(x).to_le_bytes()[..n]);
    }
    out
}

/// Names the first tensor whose bytes lie past the end of a truncated file.
fn truncation_error(file: &str, bytes: &[u8]) -> FixtureError {
    let mk = |tensor: &str, problem: String| FixtureError {
        file: file.to_string(),
        tensor: tensor.to_string(),
        problem,
    };
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8])) as usize;
    let avail = bytes.len().saturating_sub(8 + n);
    let header: HashMap<String, Value> = match bytes
        .get(8..8 + n)
        .and_then(|h| serde_json::from_slice(h).ok())
    {
        Some(h) => h,
        None => return mk("header", "truncated inside the header".into()),
    };
    let mut cut: Vec<(u64, &String)> = header
        .iter()
        .filter_map(|(name, info)| Some((info.get("data_offsets")?.get(1)?.as_u64()?, name)))
        .filter(|(end, _)| *end as usize > avail)
        .collect();
    cut.sort();
    match cut.first() {
        Some((end, name)) => {
            mk(name, format!("truncated file: the tensor's data ends at byte {end} of the data section but only {avail} bytes are present"))
        }
        None => mk("file", format!("{avail} data bytes do not match the header's tensor offsets (trailing or missing bytes)")),
    }
}

/// A tensor's storage dtype, shape and raw little-endian bytes.
type TensorInfo<'a> = (Dtype, Vec<usize>, &'a [u8]);

/// Typed access to one parsed file's tensors and case metadata, with errors
/// that name what was asked for.
struct Reader<'a> {
    file: &'a str,
    st: SafeTensors<'a>,
    case: HashMap<String, Value>,
}

impl Reader<'_> {
    fn err(&self, tensor: &str, problem: impl Into<String>) -> FixtureError {
        FixtureError {
            file: self.file.to_string(),
            tensor: tensor.to_string(),
            problem: problem.into(),
        }
    }

    fn value(&self, key: &str) -> Result<&Value> {
        self.case
            .get(key)
            .ok_or_else(|| self.err(&format!("metadata.{key}"), "missing"))
    }

    fn string(&self, key: &str) -> Result<String> {
        self.value(key)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.err(&format!("metadata.{key}"), "must be a string"))
    }

    /// `null`/absent -> None, else a string.
    fn optional_string(&self, key: &str) -> Result<Option<String>> {
        match self.case.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(
                &format!("metadata.{key}"),
                format!("{v} is not allowed: must be a string or null"),
            )),
        }
    }

    /// `null`/absent -> None, else one of `allowed`.
    fn one_of(&self, key: &str, allowed: &[&str]) -> Result<Option<String>> {
        let v = self.optional_string(key)?;
        if let Some(s) = &v {
            if !allowed.contains(&s.as_str()) {
                return Err(self.err(
                    &format!("metadata.{key}"),
                    format!("'{s}' is unknown: allowed: {}", allowed.join(", ")),
                ));
            }
        }
        Ok(v)
    }

    /// `null`/absent -> None, else a JSON object.
    fn optional_object(&self, key: &str) -> Result<Option<serde_json::Map<String, Value>>> {
        match self.case.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m.clone())),
            Some(v) => Err(self.err(
                &format!("metadata.{key}"),
                format!("{v} is not allowed: must be an object or null"),
            )),
        }
    }

    /// `tags`: absent or an array of strings.
    fn tags(&self) -> Result<Vec<String>> {
        match self.case.get("tags") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|t| {
                    t.as_str().map(str::to_string).ok_or_else(|| {
                        self.err(
                            "metadata.tags",
                            format!("{t} is not allowed: tags must be strings"),
                        )
                    })
                })
                .collect(),
            Some(v) => Err(self.err(
                "metadata.tags",
                format!("{v} is not allowed: must be an array of strings"),
            )),
        }
    }

    /// `launch`: `grid` must be "2d" or "3d", `num_segments` in [1, MAX_SEGMENTS].
    fn launch(&self) -> Result<Option<Launch>> {
        let Some(raw) = self.optional_object("launch")? else {
            return Ok(None);
        };
        let grid = match raw.get("grid") {
            None | Some(Value::Null) => None,
            Some(Value::String(g)) if g == "2d" => Some(LaunchGrid::TwoD),
            Some(Value::String(g)) if g == "3d" => Some(LaunchGrid::ThreeD),
            Some(g) => {
                return Err(self.err(
                    "metadata.launch.grid",
                    format!("{g} is not allowed: allowed: \"2d\", \"3d\""),
                ))
            }
        };
        let num_segments = match raw.get("num_segments") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && n as usize <= MAX_SEGMENTS => Some(n as usize),
                _ => {
                    return Err(self.err(
                        "metadata.launch.num_segments",
                        format!("{v} is not allowed: must be an integer in [1, {MAX_SEGMENTS}]"),
                    ))
                }
            },
        };
        let kernel = raw
            .get("kernel")
            .and_then(Value::as_str)
            .map(str::to_string);
        let decode = match raw.get("decode") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) if DECODE_KERNELS.contains(&d.as_str()) => Some(d.clone()),
            Some(d) => {
                return Err(self.err(
                    "metadata.launch.decode",
                    format!("{d} is not allowed: allowed: {}", DECODE_KERNELS.join(", ")),
                ))
            }
        };
        Ok(Some(Launch {
            kernel,
            grid,
            num_segments,
            decode,
            raw,
        }))
    }

    /// A positive integer (dimension, block size, split count).
    fn dim(&self, key: &str) -> Result<usize> {
        match self.value(key)?.as_u64() {
            Some(v) if v >= 1 && v <= i32::MAX as u64 => Ok(v as usize),
            _ => Err(self.err(
                &format!("metadata.{key}"),
                format!(
                    "{} is not allowed: must be an integer in [1, 2^31)",
                    self.value(key)?
                ),
            )),
        }
    }

    fn positive(&self, key: &str) -> Result<f32> {
        match self.value(key)?.as_f64() {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v as f32),
            _ => Err(self.err(
                &format!("metadata.{key}"),
                format!(
                    "{} is not allowed: must be a finite number > 0",
                    self.value(key)?
                ),
            )),
        }
    }

    fn tolerance(&self, key: &str) -> Result<f64> {
        match self.value(key)?.as_f64() {
            Some(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(self.err(
                &format!("metadata.{key}"),
                format!(
                    "{} is not allowed: must be a finite number >= 0",
                    self.value(key)?
                ),
            )),
        }
    }

    /// `null`/absent -> None, else a positive number.
    fn optional_positive(&self, key: &str) -> Result<Option<f32>> {
        match self.case.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.positive(key).map(Some),
        }
    }

    fn tensor_info(&self, name: &str) -> Result<Option<TensorInfo<'_>>> {
        match self.st.tensor(name) {
            Ok(t) => Ok(Some((t.dtype(), t.shape().to_vec(), t.data()))),
            Err(SafeTensorError::TensorNotFound(_)) => Ok(None),
            Err(e) => Err(self.err(name, format!("{e:?}"))),
        }
    }

    /// A float tensor of storage dtype `want` and exactly `shape` (a tuple
    /// of its axes' sizes), widened to f32.
    /// `nan_ok` is false for inputs (NaN rejected; +-inf allowed, e.g. LSEs) and true for outputs.
    fn floats<Sh: IntoDimension>(
        &self,
        name: &str,
        want: DType,
        shape: Sh,
        nan_ok: bool,
    ) -> Result<Array<f32, Sh::Dim>> {
        self.optional_floats(name, want, shape, nan_ok)?
            .ok_or_else(|| self.err(name, "missing (required for this op)"))
    }

    fn optional_floats<Sh: IntoDimension>(
        &self,
        name: &str,
        want: DType,
        shape: Sh,
        nan_ok: bool,
    ) -> Result<Option<Array<f32, Sh::Dim>>> {
        let Some((dt, got, data)) = self.tensor_info(name)? else {
            return Ok(None);
        };
        let st_dtype = match want {
            DType::F16 => Dtype::F16,
            DType::Bf16 => Dtype::BF16,
            _ => Dtype::F32,
        };
        if dt != st_dtype {
            return Err(self.err(name, format!("dtype {dt:?} is wrong: must be {st_dtype:?}")));
        }
        let v: Vec<f32> = match dt {
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        };
        let a = self.shaped(name, &got, shape, v)?;
        if !nan_ok {
            if let Some((i, idx)) = first_nan(&a) {
                return Err(self.err(
                    name,
                    format!(
                        "NaN at flat index {i} {:?}: inputs must not contain NaN",
                        idx.slice()
                    ),
                ));
            }
        }
        Ok(Some(a))
    }

    /// `data` (the tensor's elements, its file shape `got`) as an array of
    /// exactly `shape`, or an error naming both shapes.
    fn shaped<Sh: IntoDimension>(
        &self,
        name: &str,
        got: &[usize],
        shape: Sh,
        data: Vec<f32>,
    ) -> Result<Array<f32, Sh::Dim>> {
        let shape = shape.into_dimension();
        if got != shape.slice() {
            return Err(self.err(
                name,
                format!("shape {got:?} is wrong: must be {:?}", shape.slice()),
            ));
        }
        // safetensors checked that the data fills the file's shape.
        Array::from_shape_vec(shape, data)
            .map_err(|e| self.err(name, format!("data does not fill shape {got:?}: {e}")))
    }

    /// An I32 tensor whose rank is fixed but whose sizes are discovered.
    fn ints(&self, name: &str, rank: usize) -> Result<(Vec<usize>, Vec<i32>)> {
        let (dt, shape, data) = self
            .tensor_info(name)?
            .ok_or_else(|| self.err(name, "missing (required for this op)"))?;
        if dt != Dtype::I32 {
            return Err(self.err(name, format!("dtype {dt:?} is wrong: must be I32")));
        }
        if shape.len() != rank {
            return Err(self.err(
                name,
                format!("shape {shape:?} is wrong: must have rank {rank}"),
            ));
        }
        Ok((
            shape,
            data.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ))
    }

    /// The shape of a tensor, for discovering sizes (e.g. num_blocks).
    fn shape(&self, name: &str, rank: usize) -> Result<Vec<usize>> {
        let (_, shape, _) = self
            .tensor_info(name)?
            .ok_or_else(|| self.err(name, "missing (required for this op)"))?;
        if shape.len() != rank {
            return Err(self.err(
                name,
                format!("shape {shape:?} is wrong: must have rank {rank}"),
            ));
        }
        Ok(shape)
    }

    /// block_table + seq_lens (+ query_start_loc) checked by `AttentionMetadata::new`,
    /// its error re-attributed to the tensor it names.
    fn metadata(
        &self,
        block_size: usize,
        num_blocks: usize,
        query_start_loc: Vec<i32>,
        causal: bool,
    ) -> Result<AttentionMetadata> {
        limits::MAX_BLOCK_SIZE
            .check_usize("metadata.block_size", block_size)
            .map_err(|e| self.err("metadata.block_size", e.to_string()))?;
        limits::MAX_NUM_BLOCKS
            .check_usize("num_blocks (the cache's first dimension)", num_blocks)
            .map_err(|e| self.err("num_blocks", e.to_string()))?;
        let (seq_shape, seq_lens) = self.ints("seq_lens", 1)?;
        let (bt_shape, bt) = self.ints("block_table", 2)?;
        if bt_shape[0] != seq_shape[0] {
            return Err(self.err(
                "block_table",
                format!(
                    "shape {bt_shape:?} is wrong: must have num_seqs = {} rows (seq_lens)",
                    seq_shape[0]
                ),
            ));
        }
        if let Some(i) = seq_lens.iter().position(|&s| s < 1) {
            return Err(self.err(
                "seq_lens",
                format!(
                    "seq_lens[{i}] = {} is not allowed: must be >= 1",
                    seq_lens[i]
                ),
            ));
        }
        for (i, w) in query_start_loc.windows(2).enumerate() {
            if w[1] < w[0] {
                return Err(self.err(
                    "query_start_loc",
                    format!("not monotone: [{i}] = {} > [{}] = {}", w[0], i + 1, w[1]),
                ));
            }
        }
        let table = BlockTableTensor {
            num_rows: bt_shape[0],
            max_blocks: bt_shape[1],
            data: bt,
        };
        // Slots of the query tokens (already in the cache): the last q_i tokens of each sequence.
        let mut slots = Vec::new();
        for (i, (w, &s)) in query_start_loc.windows(2).zip(&seq_lens).enumerate() {
            let q = (w[1] - w[0]).max(0);
            for t in (s - q).max(0)..s {
                let j = t as usize / block_size;
                // Row i exists: the table has one row per seq_lens entry (checked above).
                let b = table.row(i).get(j).copied().unwrap_or(-1);
                slots.push(if b < 0 {
                    -1
                } else {
                    b as i64 * block_size as i64 + (t as usize % block_size) as i64
                });
            }
        }
        AttentionMetadata::new(
            block_size,
            num_blocks,
            query_start_loc,
            seq_lens,
            table,
            slots,
            causal,
        )
        .map_err(|e| {
            let s = e.to_string();
            let tensor = ["block_table", "seq_lens", "query_start_loc", "slot_mapping"]
                .into_iter()
                .find(|t| s.contains(t))
                .unwrap_or("metadata");
            let tensor = if tensor == "slot_mapping" {
                "block_table"
            } else {
                tensor
            };
            self.err(tensor, s)
        })
    }

    /// An output tensor: required (`need`) or optional.
    fn output<Sh: IntoDimension>(
        &self,
        name: &str,
        want: DType,
        shape: Sh,
        need: bool,
    ) -> Result<Option<Array<f32, Sh::Dim>>> {
        if need {
            self.floats(name, want, shape, true).map(Some)
        } else {
            self.optional_floats(name, want, shape, true)
        }
    }

    /// A U8 tensor of raw fp8 bits of `fp8` and exactly `shape`, decoded to
    /// the fp8 values (not scaled); NaN codes are rejected like NaN inputs.
    fn fp8_tensor<Sh: IntoDimension>(
        &self,
        name: &str,
        fp8: DType,
        shape: Sh,
    ) -> Result<Array<f32, Sh::Dim>> {
        let (dt, got, data) = self
            .tensor_info(name)?
            .ok_or_else(|| self.err(name, "missing (required for this op)"))?;
        if dt != Dtype::U8 {
            return Err(self.err(
                name,
                format!(
                    "dtype {dt:?} is wrong: must be U8 (raw fp8 bits) with kv_cache_dtype {}",
                    fp8_name(fp8)
                ),
            ));
        }
        let v = data.iter().map(|&b| fp8.from_bits(b as u32)).collect();
        let a = self.shaped(name, &got, shape, v)?;
        if let Some((i, idx)) = first_nan(&a) {
            return Err(self.err(
                name,
                format!(
                    "fp8 NaN code 0x{:02x} at flat index {i} {:?}: inputs must not contain NaN",
                    data[i],
                    idx.slice()
                ),
            ));
        }
        Ok(a)
    }

    /// `k_scale` / `v_scale`: F32 `[1]`, finite and > 0.
    fn fp8_scale(&self, name: &str) -> Result<f32> {
        let v = self.floats(name, DType::F32, 1, false)?;
        match v[0] {
            x if x.is_finite() && x > 0.0 => Ok(x),
            x => Err(self.err(name, format!("{x} is not allowed: must be finite and > 0"))),
        }
    }

    /// `kv_cache_dtype` (/2): `auto` -> the case's dtype, or an fp8 format.
    fn kv_cache_dtype(&self, dtype: DType) -> Result<DType> {
        match self.optional_string("kv_cache_dtype")?.as_deref() {
            None | Some("auto") => Ok(dtype),
            Some("fp8_e4m3") => Ok(DType::Fp8E4m3Fn),
            Some("fp8_e4m3fnuz") => Ok(DType::Fp8E4m3Fnuz),
            Some(other) => Err(self.err(
                "metadata.kv_cache_dtype",
                format!("'{other}' is unknown: allowed: auto, fp8_e4m3, fp8_e4m3fnuz"),
            )),
        }
    }

    /// Refuses a block table that makes the work disproportionate to the
    /// file: on average each cached token may be attended at most
    /// `max_kv_reuse` times (`sum(seq_lens) / (num_blocks * block_size)`),
    /// so one block repeated 262,144 times is an error, not a minute of work.
    fn check_reuse(&self, meta: &AttentionMetadata) -> Result<()> {
        let attended: u64 = meta.seq_lens().iter().map(|&s| s.max(0) as u64).sum();
        let held = (meta.num_blocks() as u64).saturating_mul(meta.block_size() as u64);
        let what = "sum(seq_lens) / cached tokens";
        limits::MAX_KV_REUSE
            .check(what, attended.div_ceil(held.max(1)))
            .map(drop)
            .map_err(|e| self.err("seq_lens", e.to_string()))
    }

    fn paged(&self, dtype: DType, v2: bool, need_output: bool) -> Result<PagedCase> {
        let (hq, hkv, d, bs) = (
            self.dim("num_heads")?,
            self.dim("num_kv_heads")?,
            self.dim("head_size")?,
            self.dim("block_size")?,
        );
        if hq % hkv != 0 {
            return Err(self.err(
                "metadata.num_kv_heads",
                format!("{hkv} is not allowed: must divide num_heads = {hq}"),
            ));
        }
        let causal = self
            .value("causal")?
            .as_bool()
            .ok_or_else(|| self.err("metadata.causal", "must be true or false"))?;
        let window = self.optional_positive("sliding_window")?;
        if window.is_some_and(|w| w.fract() != 0.0) {
            return Err(self.err(
                "metadata.sliding_window",
                format!("{window:?} is not allowed: must be a whole number of tokens"),
            ));
        }
        // A window is a token count: beyond the longest sequence it would only
        // overflow the kernels' position arithmetic (p < t + window).
        if let Some(w) = window {
            limits::MAX_SEQ_LEN
                .check("sliding_window", w as u64)
                .map_err(|e| self.err("metadata.sliding_window", e.to_string()))?;
        }
        let (qsl_shape, qsl) = self.ints("query_start_loc", 1)?;
        let num_seqs = self.shape("seq_lens", 1)?[0];
        if qsl_shape[0] != num_seqs + 1 {
            return Err(self.err(
                "query_start_loc",
                format!(
                    "shape {qsl_shape:?} is wrong: must be [num_seqs + 1] = [{}]",
                    num_seqs + 1
                ),
            ));
        }
        if qsl[0] != 0 {
            return Err(self.err(
                "query_start_loc",
                format!("query_start_loc[0] = {} is not allowed: must be 0", qsl[0]),
            ));
        }
        // query_start_loc's last entry must be the query's row count before it
        // sizes anything (the rows are real bytes; the entry is just a number).
        let t = self.shape("query", 3)?[0];
        if qsl[num_seqs] as i64 != t as i64 {
            return Err(self.err(
                "query_start_loc",
                format!(
                    "last entry {} is wrong: must be the query's num_tokens = {t}",
                    qsl[num_seqs]
                ),
            ));
        }
        let num_blocks = self.shape("key_cache", 4)?[0];
        let meta = self.metadata(bs, num_blocks, qsl, causal)?;
        let cache_shape = (num_blocks, bs, hkv, d);
        let mut fields = AttnConfig::builder(hq, hkv, d, dtype);
        fields.scale = self.positive("scale")?;
        fields.sliding_window = window.map(|w| w as usize);
        fields.softcap = self.optional_positive("softcap")?;
        fields.sinks = self
            .optional_floats("sinks", DType::F32, hq, false)?
            .map(|a| a.to_vec());
        fields.alibi_slopes = self
            .optional_floats("alibi_slopes", DType::F32, hq, false)?
            .map(|a| a.to_vec());
        if v2 {
            fields.kv_dtype = self.kv_cache_dtype(dtype)?;
        }
        let (key_cache, value_cache) = if fields.kv_dtype.is_fp8() {
            fields.k_scale = self.fp8_scale("k_scale")?;
            fields.v_scale = self.fp8_scale("v_scale")?;
            (
                self.fp8_tensor("key_cache", fields.kv_dtype, cache_shape)?,
                self.fp8_tensor("value_cache", fields.kv_dtype, cache_shape)?,
            )
        } else {
            (
                self.floats("key_cache", dtype, cache_shape, false)?,
                self.floats("value_cache", dtype, cache_shape, false)?,
            )
        };
        let cfg = fields
            .build()
            .map_err(|e| self.err("metadata", e.to_string()))?;
        self.check_reuse(&meta)?;
        Ok(PagedCase {
            query: self.floats("query", dtype, (t, hq, d), false)?,
            key_cache,
            value_cache,
            output: self.output("output", dtype, (t, hq, d), need_output)?,
            reference: self.optional_floats("reference", DType::F32, (t, hq, d), true)?,
            cfg,
            meta,
        })
    }

    fn merge(&self, dtype: DType, need_output: bool) -> Result<MergeCase> {
        let (h, d) = (self.dim("num_heads")?, self.dim("head_size")?);
        let t = self.shape("prefix_output", 3)?[0];
        let (out_shape, lse_shape) = ((t, h, d), (h, t));
        Ok(MergeCase {
            num_tokens: t,
            num_heads: h,
            head_size: d,
            prefix_output: self.floats("prefix_output", dtype, out_shape, false)?,
            prefix_lse: self.floats("prefix_lse", DType::F32, lse_shape, false)?,
            suffix_output: self.floats("suffix_output", dtype, out_shape, false)?,
            suffix_lse: self.floats("suffix_lse", DType::F32, lse_shape, false)?,
            output: self.output("output", dtype, out_shape, need_output)?,
            output_lse: self.optional_floats("output_lse", DType::F32, lse_shape, true)?,
        })
    }

    fn mla(&self, dtype: DType, need_output: bool) -> Result<MlaCase> {
        let (h, l, r, bs) = (
            self.dim("num_heads")?,
            self.dim("kv_lora_rank")?,
            self.dim("qk_rope_head_dim")?,
            self.dim("block_size")?,
        );
        let num_seqs = self.shape("seq_lens", 1)?[0];
        let num_blocks = self.shape("kv_cache", 3)?[0];
        let meta = self.metadata(bs, num_blocks, (0..=num_seqs as i32).collect(), true)?;
        self.check_reuse(&meta)?;
        let splits_key = "metadata.num_kv_splits";
        let num_kv_splits = limits::MAX_KV_SPLITS
            .check_usize(splits_key, self.dim("num_kv_splits")?)
            .map_err(|e| self.err(splits_key, e.to_string()))?;
        // The split-KV decode's f32 partials: [num_seqs, heads, splits, kv_lora_rank + 1].
        let partials = [num_seqs, h, num_kv_splits, l + 1, 4]
            .iter()
            .fold(1u128, |a, &x| a.saturating_mul(x as u128));
        limits::check_memory(
            &format!("{splits_key} {num_kv_splits} (split-KV partials)"),
            partials,
        )
        .map_err(|e| self.err(splits_key, e.to_string()))?;
        Ok(MlaCase {
            num_heads: h,
            kv_lora_rank: l,
            qk_rope_head_dim: r,
            scale: self.positive("scale")?,
            num_kv_splits,
            query: self.floats("query", dtype, (num_seqs, h, l + r), false)?,
            kv_cache: self.floats("kv_cache", dtype, (num_blocks, bs, l + r), false)?,
            output: self.output("output", dtype, (num_seqs, h, l), need_output)?,
            reference: self.optional_floats("reference", DType::F32, (num_seqs, h, l), true)?,
            meta,
        })
    }
}

/// The `kv_cache_dtype` name of an fp8 storage dtype (`auto` otherwise).
pub fn fp8_name(kv: DType) -> &'static str {
    match kv {
        DType::Fp8E4m3Fn => "fp8_e4m3",
        DType::Fp8E4m3Fnuz => "fp8_e4m3fnuz",
        _ => "auto",
    }
}

/// The first NaN of `a` in row-major order: its flat index and its
/// multi-index, for error messages.
fn first_nan<D: Dimension>(a: &Array<f32, D>) -> Option<(usize, D)> {
    a.indexed_iter()
        .enumerate()
        .find(|(_, (_, x))| x.is_nan())
        .map(|(i, (idx, _))| (i, idx.into_dimension()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fixtures")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn reads_a_shipped_paged_case_with_its_metadata() {
        let f = parse(
            "ua",
            &shipped("ua_dec3d_bf16_h128_g8x1_b32_swa_softcap.safetensors"),
        )
        .unwrap();
        assert_eq!(
            (f.header.op, f.header.dtype, f.header.atol, f.header.rtol),
            (Op::PagedAttention, DType::Bf16, 0.015, 0.01)
        );
        let Case::Paged(p) = f.case else {
            panic!("not paged")
        };
        assert_eq!(
            (p.cfg.num_heads(), p.cfg.num_kv_heads(), p.cfg.head_size()),
            (8, 1, 128)
        );
        assert_eq!(
            (p.cfg.sliding_window(), p.cfg.softcap()),
            (Some(256), Some(5.0))
        );
        assert_eq!(p.meta.seq_lens(), vec![300, 128, 64]);
        assert_eq!(p.query.len(), 3 * 8 * 128);
        assert!(p.reference.is_some());
    }

    #[test]
    fn truncated_file_names_the_cut_tensor() {
        let bytes = shipped("merge_f32_t7_h2_d128_inf.safetensors");
        let e = parse("m.safetensors", &bytes[..bytes.len() - 10]).unwrap_err();
        assert_eq!(e.file, "m.safetensors");
        assert!(e.problem.contains("truncated"), "{e}");
        assert_ne!(e.tensor, "file");
        let e = parse("m", &bytes[..20]).unwrap_err();
        assert_eq!(e.tensor, "header", "{e}");
        assert!(parse("m", &[]).is_err());
    }

    #[test]
    fn first_nan_gives_its_row_major_and_multi_index() {
        let mut a = Array::zeros((2, 2, 3));
        a[[1, 0, 1]] = f32::NAN;
        a[[1, 1, 0]] = f32::NAN;
        let (i, idx) = first_nan(&a).unwrap();
        assert_eq!((i, idx.slice()), (7, &[1, 0, 1][..]));
        assert!(first_nan(&Array::<f32, _>::zeros(4)).is_none());
    }
}
