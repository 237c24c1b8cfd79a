//! `attnlab cases`: inputs-only `attn-fixture/2` cases, one file per case,
//! for the kernel path of one vLLM backend, drawn by [`crate::draw`] (the
//! generator the GPU diffs and the drawn-case property tests use).
//!
//! A [`Target`] is a backend (its `path` is the kernel entry point its vLLM
//! backend calls) or the `merge_attn_states` kernel. What a target draws
//! follows the registry ([`attnlab_shared::registry`]): its dtypes, fp8 KV
//! caches where the kernel takes them, block sizes among 16, 32, 64, 544,
//! 1056 (1 for AITER MLA), head sizes among 64, 80, 96, 128, 256 (512 where
//! accepted), sinks, ALiBi (the Triton and ROCm paths), soft-cap (where the
//! kernel has the argument); and always GQA ratios 1..8 including 3, 5 and
//! 6, sliding windows, mixed batches, zero-length queries, chunked extends,
//! and a shuffled block table with block 0 as the null block plus unused
//! random blocks. With `edge`, every odd case is drawn in one boundary
//! regime ([`Edge`]), cycling through the target's regimes.
//!
//! Everything is deterministic in (target, seed, index) and bounded: at most
//! [`MAX_COUNT`] cases per target and [`MAX_CASE_BYTES`] per case.

use crate::draw::{draw_with, pick, AttnCase, CaseSpace, Edge, Regimes};
use crate::fixture::{Case, Fixture, Header, MergeCase, MlaCase, Op, PagedCase};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::{AttentionMetadata, BlockTableTensor};
use ndarray::{Array2, Array3, Array4, Zip};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Most cases one target may be asked for.
pub const MAX_COUNT: usize = 10_000;
/// Largest case file, its output included once captured (tensors; the
/// header adds a few hundred bytes).
pub const MAX_CASE_BYTES: usize = 640 * 1024;
/// The cap of the 80% of paged cases with blocks of 16..64 (block 544 cases
/// may take 3/5 of [`MAX_CASE_BYTES`], block 1056 cases all of it: one
/// 1056-token block of 64-wide f16 K and V alone is 270 KB), and of MLA cases.
pub const SMALL_CASE_BYTES: usize = 160 * 1024;
/// Draws tried per case before a target is declared unable to draw one.
const MAX_ATTEMPTS: usize = 2_000;

/// The block sizes the issue asks for, before a target's filter.
pub const BLOCK_SIZES: [usize; 6] = [1, 16, 32, 64, 544, 1056];
/// The head sizes the issue asks for, before a target's filter.
pub const HEAD_SIZES: [usize; 6] = [64, 80, 96, 128, 256, 512];

/// Tolerances of vLLM's own kernel tests (fixtures/MANIFEST.md).
const PAGED_TOL: (f64, f64) = (1.5e-2, 1e-2);
/// vLLM's unified-attention test with an fp8 cache.
const PAGED_FP8_TOL: (f64, f64) = (1.5e-1, 1.5e-1);
const MLA_TOL: (f64, f64) = (2e-2, 2e-2);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CasesError {
    #[error("unknown --backend '{name}': allowed: {allowed}, all")]
    UnknownTarget { name: String, allowed: String },
    #[error("--count {count} is not allowed: allowed: 1..={max} cases per backend")]
    Count { count: usize, max: usize },
    #[error(
        "{target}: no case within {max_bytes} bytes after {attempts} draws (a bug in its space)"
    )]
    Exhausted {
        target: &'static str,
        attempts: usize,
        max_bytes: usize,
    },
}

/// What `attnlab cases --backend NAME` draws for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    TritonAttn,
    RocmAttn,
    RocmAiterFa,
    RocmAiterUnifiedAttn,
    FlexAttention,
    MergeAttnStates,
    TritonMla,
    RocmAiterMla,
    RocmAiterTritonMla,
}

impl Target {
    pub const ALL: [Target; 9] = [
        Target::TritonAttn,
        Target::RocmAttn,
        Target::RocmAiterFa,
        Target::RocmAiterUnifiedAttn,
        Target::FlexAttention,
        Target::MergeAttnStates,
        Target::TritonMla,
        Target::RocmAiterMla,
        Target::RocmAiterTritonMla,
    ];

    /// The `--backend` name: the vLLM enum name, or `merge_attn_states`.
    pub fn name(self) -> &'static str {
        match self {
            Target::TritonAttn => "TRITON_ATTN",
            Target::RocmAttn => "ROCM_ATTN",
            Target::RocmAiterFa => "ROCM_AITER_FA",
            Target::RocmAiterUnifiedAttn => "ROCM_AITER_UNIFIED_ATTN",
            Target::FlexAttention => "FLEX_ATTENTION",
            Target::MergeAttnStates => "merge_attn_states",
            Target::TritonMla => "TRITON_MLA",
            Target::RocmAiterMla => "ROCM_AITER_MLA",
            Target::RocmAiterTritonMla => "ROCM_AITER_TRITON_MLA",
        }
    }

    /// `NAME` or `all` (every target).
    pub fn parse(name: &str) -> Result<Vec<Target>, CasesError> {
        if name.eq_ignore_ascii_case("all") {
            return Ok(Self::ALL.to_vec());
        }
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
            .map(|t| vec![t])
            .ok_or_else(|| CasesError::UnknownTarget {
                name: name.to_string(),
                allowed: Self::ALL.map(|t| t.name()).join(", "),
            })
    }

    pub fn op(self) -> Op {
        match self {
            Target::MergeAttnStates => Op::MergeAttnStates,
            Target::TritonMla | Target::RocmAiterMla | Target::RocmAiterTritonMla => Op::MlaDecode,
            _ => Op::PagedAttention,
        }
    }

    /// The `backend` metadata (null for the merge kernel, which several backends call).
    pub fn backend(self) -> Option<&'static str> {
        (self != Target::MergeAttnStates).then(|| self.name())
    }

    /// The kernel entry point the capture runs (attn-fixture/2 `path`).
    pub fn path(self) -> &'static str {
        match self {
            Target::TritonAttn => "unified_attention",
            Target::RocmAttn => "chunked_prefill_paged_decode",
            Target::RocmAiterFa => "aiter_flash_attn_varlen",
            Target::RocmAiterUnifiedAttn => "aiter_unified_attention",
            Target::FlexAttention => "flex_attention",
            Target::MergeAttnStates => "merge_attn_states",
            Target::TritonMla | Target::RocmAiterTritonMla => "decode_attention_fwd",
            Target::RocmAiterMla => "aiter_mla_decode_fwd",
        }
    }

    /// What a paged target draws: (dtypes, fp8 cache format, head sizes,
    /// block sizes, sinks, alibi, softcap). The lists agree with the
    /// registry (a test checks it).
    fn paged_space(self) -> PagedSpace {
        const ALL3: &[DType] = &[DType::F16, DType::Bf16, DType::F32];
        const HALF: &[DType] = &[DType::F16, DType::Bf16];
        const MHA_BLOCKS: &[usize] = &[16, 32, 64, 544, 1056];
        const ANY_HEAD: &[usize] = &[64, 80, 96, 128, 256, 512];
        match self {
            Target::TritonAttn => PagedSpace {
                dtypes: ALL3,
                fp8_kv: &[DType::Fp8E4m3Fn],
                head_sizes: ANY_HEAD,
                block_sizes: MHA_BLOCKS,
                sinks: true,
                alibi: true,
                softcap: true,
            },
            // chunked_prefill_paged_decode has no soft-cap argument; the selector rejects sinks.
            Target::RocmAttn => PagedSpace {
                dtypes: ALL3,
                fp8_kv: &[DType::Fp8E4m3Fn],
                head_sizes: &[64, 80, 96, 128, 256],
                block_sizes: MHA_BLOCKS,
                sinks: false,
                alibi: true,
                softcap: false,
            },
            Target::RocmAiterFa => PagedSpace {
                dtypes: HALF,
                fp8_kv: &[DType::Fp8E4m3Fnuz],
                head_sizes: &[64, 128, 256],
                block_sizes: MHA_BLOCKS,
                sinks: true,
                alibi: false,
                softcap: true,
            },
            Target::RocmAiterUnifiedAttn => PagedSpace {
                dtypes: HALF,
                fp8_kv: &[DType::Fp8E4m3Fnuz],
                head_sizes: ANY_HEAD,
                block_sizes: MHA_BLOCKS,
                sinks: true,
                alibi: false,
                softcap: true,
            },
            _ => PagedSpace {
                dtypes: ALL3,
                fp8_kv: &[],
                head_sizes: ANY_HEAD,
                block_sizes: MHA_BLOCKS,
                sinks: false,
                alibi: false,
                softcap: true,
            },
        }
    }

    /// The boundary regimes this target's kernel can express.
    pub fn edges(self) -> Vec<Edge> {
        match self.op() {
            Op::MergeAttnStates => vec![Edge::InfLse],
            Op::MlaDecode => vec![Edge::LastBlockFull],
            Op::PagedAttention => Edge::PAGED
                .into_iter()
                .filter(|e| *e != Edge::SoftcapOverflow || self.paged_space().softcap)
                .collect(),
        }
    }

    /// MLA block sizes: TRITON_MLA needs a multiple of 16; AITER MLA takes any
    /// (544 and 1056 would exceed [`MAX_CASE_BYTES`] with a 576-wide latent).
    fn mla_block_sizes(self) -> &'static [usize] {
        match self {
            Target::TritonMla => &[16, 32, 64],
            _ => &[1, 16, 32, 64],
        }
    }
}

/// A paged target's draw space (see `Target::paged_space`).
#[derive(Debug, Clone, Copy)]
pub struct PagedSpace {
    pub dtypes: &'static [DType],
    pub fp8_kv: &'static [DType],
    pub head_sizes: &'static [usize],
    pub block_sizes: &'static [usize],
    pub sinks: bool,
    pub alibi: bool,
    pub softcap: bool,
}

impl PagedSpace {
    pub fn of(target: Target) -> Self {
        target.paged_space()
    }
}

/// The seeded stream of one target (independent per target, so adding a
/// target does not change another's cases).
pub fn rng_for(target: Target, seed: u64) -> ChaCha8Rng {
    let salt = target
        .name()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
    ChaCha8Rng::seed_from_u64(seed ^ salt)
}

/// The regime case `index` is drawn in: with `edge`, odd cases cycle
/// through the target's regimes.
pub fn edge_of(target: Target, index: usize, edge: bool) -> Option<Edge> {
    let edges = target.edges();
    (edge && index % 2 == 1 && !edges.is_empty()).then(|| edges[(index / 2) % edges.len()])
}

/// `count` cases for `target`, named `<target>_<index>.safetensors` (lower case).
pub fn generate(
    target: Target,
    count: usize,
    seed: u64,
    edge: bool,
) -> Result<Vec<(String, Fixture)>, CasesError> {
    if count == 0 || count > MAX_COUNT {
        return Err(CasesError::Count {
            count,
            max: MAX_COUNT,
        });
    }
    let mut rng = rng_for(target, seed);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("{}_{i:05}.safetensors", target.name().to_lowercase());
        let e = edge_of(target, i, edge);
        let mut fixture = None;
        for _ in 0..MAX_ATTEMPTS {
            if let Some(f) = draw_case(target, &mut rng, e, seed as i64) {
                fixture = Some(f);
                break;
            }
        }
        let mut f = fixture.ok_or(CasesError::Exhausted {
            target: target.name(),
            attempts: MAX_ATTEMPTS,
            max_bytes: MAX_CASE_BYTES,
        })?;
        f.file = name.clone();
        out.push((name, f));
    }
    Ok(out)
}

/// One case for `target` in regime `edge`; `None` when the draw is rejected
/// (a shape the layout refuses, or over [`MAX_CASE_BYTES`]): draw again.
pub fn draw_case(
    target: Target,
    rng: &mut ChaCha8Rng,
    edge: Option<Edge>,
    seed: i64,
) -> Option<Fixture> {
    let d = match target.op() {
        Op::PagedAttention => {
            let c = draw_paged(target, rng, edge)?;
            let tol = if c.cfg.kv_dtype().is_fp8() {
                PAGED_FP8_TOL
            } else {
                PAGED_TOL
            };
            Drawn {
                dtype: c.cfg.dtype(),
                tol,
                tags: c.tags.clone(),
                case: Case::Paged(paged_case(c).ok()?),
            }
        }
        Op::MergeAttnStates => draw_merge(rng, edge == Some(Edge::InfLse)),
        Op::MlaDecode => draw_mla(target, rng, edge)?,
    };
    let mut header = Header::for_case(target.op(), d.dtype, d.tol.0, d.tol.1, seed);
    header.backend = target.backend().map(str::to_string);
    header.path = Some(target.path().to_string());
    header.tags = d.tags;
    Some(Fixture {
        file: String::new(),
        header,
        case: d.case,
    })
}

/// A drawn case with what its header needs.
struct Drawn {
    dtype: DType,
    tol: (f64, f64),
    tags: Vec<String>,
    case: Case,
}

/// A paged case through [`draw_with`]: 80% small blocks (16..64, up to 4
/// rows, at most [`SMALL_CASE_BYTES`]), 12% block 544 and 8% block 1056 (one
/// or two rows, one KV head, so the case stays under [`MAX_CASE_BYTES`]);
/// the target's lists filter each.
pub fn draw_paged(target: Target, rng: &mut ChaCha8Rng, edge: Option<Edge>) -> Option<AttnCase> {
    let ps = target.paged_space();
    let band = rng.gen_range(0..100);
    #[allow(clippy::type_complexity)]
    let (blocks, heads, hkv, max_reqs, max_context, cap): (
        &[usize],
        &[usize],
        &[usize],
        usize,
        usize,
        usize,
    ) = if band < 80 {
        (
            &[16, 32, 64],
            ps.head_sizes,
            &[1, 2, 4],
            4,
            96,
            SMALL_CASE_BYTES,
        )
    } else if band < 92 {
        (
            &[544],
            &[64, 80, 96, 128],
            &[1],
            2,
            96,
            MAX_CASE_BYTES * 3 / 5,
        )
    } else {
        (&[1056], &[64], &[1], 1, 64, MAX_CASE_BYTES)
    };
    let block_sizes = static_subset(blocks, ps.block_sizes)?;
    let head_sizes = static_subset(heads, ps.head_sizes)?;
    let dtypes = if band < 80 {
        ps.dtypes
    } else {
        &[DType::F16, DType::Bf16][..]
    };
    let space = CaseSpace {
        layouts: &[LayoutKind::Nhd],
        block_sizes,
        head_sizes,
        max_reqs,
        max_query_len: 16,
        max_context,
        sinks: ps.sinks,
        alibi: ps.alibi,
        non_causal: false,
    };
    let regimes = Regimes {
        dtypes,
        fp8_kv: ps.fp8_kv,
        num_kv_heads: hkv,
        queries_per_kv: &[1, 2, 3, 4, 5, 6, 8],
        softcap: ps.softcap,
        window: true,
        zero_len_queries: true,
        null_block: true,
        max_cache_bytes: Some(cap),
        edge,
    };
    let c = draw_with(rng, &space, &regimes)?;
    (c.stored_bytes() <= cap).then_some(c)
}

/// The elements of `xs` that `allowed` holds, as one of a fixed set of
/// static lists (so [`CaseSpace`]'s `&'static` fields can point at them).
fn static_subset(xs: &'static [usize], allowed: &[usize]) -> Option<&'static [usize]> {
    let all_in = xs.iter().all(|x| allowed.contains(x));
    if all_in {
        return Some(xs);
    }
    // The only partial overlap among the targets: head sizes without 80/96/512.
    const HEADS_64_128: &[usize] = &[64, 128];
    const HEADS_64_128_256: &[usize] = &[64, 128, 256];
    const HEADS_NO_512: &[usize] = &[64, 80, 96, 128, 256];
    for cand in [HEADS_NO_512, HEADS_64_128_256, HEADS_64_128] {
        let want: Vec<usize> = xs.iter().copied().filter(|x| allowed.contains(x)).collect();
        if cand == want.as_slice() {
            return Some(cand);
        }
    }
    None
}

/// A drawn paged case as the fixture's canonical NHD case (no output yet);
/// an error if its tensors do not fill their shapes (its cache not NHD).
pub fn paged_case(c: AttnCase) -> Result<PagedCase, Error> {
    let l = c.cache.layout;
    if l.kind != LayoutKind::Nhd {
        return Err(Error::invalid(
            "cache layout",
            l.kind,
            "must be NHD (the fixtures' layout)",
        ));
    }
    let shape_err =
        |e: ndarray::ShapeError| Error::invalid("drawn case tensor", e, "must fill its shape");
    let cache_shape = (l.num_blocks, l.block_size, l.num_kv_heads, l.head_size);
    Ok(PagedCase {
        query: Array3::from_shape_vec(
            (
                c.meta.num_actual_tokens(),
                c.cfg.num_heads(),
                c.cfg.head_size(),
            ),
            c.query,
        )
        .map_err(shape_err)?,
        key_cache: Array4::from_shape_vec(cache_shape, c.cache.k).map_err(shape_err)?,
        value_cache: Array4::from_shape_vec(cache_shape, c.cache.v).map_err(shape_err)?,
        cfg: c.cfg,
        meta: c.meta,
        output: None,
        reference: None,
    })
}

/// Two partial results over disjoint KV sets: outputs U(-2, 2) in the
/// dtype, LSEs U(-8, 8); with `inf_lse`, 30% of LSE entries of either side
/// become +inf or -inf (never both sides of one (head, token): vLLM's
/// kernel returns 0/0 there).
fn draw_merge(rng: &mut ChaCha8Rng, inf_lse: bool) -> Drawn {
    let dtype = pick(rng, &[DType::F16, DType::Bf16, DType::F32]);
    let t = rng.gen_range(1..=24);
    let h = rng.gen_range(1..=8);
    let d = pick(rng, &[64usize, 80, 96, 128, 256]);
    // Drawn in row-major order: outputs [token, head, d], LSEs [head, token].
    let mut out =
        || Array3::from_shape_simple_fn((t, h, d), || dtype.round(rng.gen_range(-2.0f32..2.0)));
    let (po, so) = (out(), out());
    let mut lse = || Array2::from_shape_simple_fn((h, t), || rng.gen_range(-8.0f32..8.0));
    let (mut pl, mut sl) = (lse(), lse());
    if inf_lse {
        // Row-major, as the flat loop over h * t drew them.
        Zip::from(&mut pl).and(&mut sl).for_each(|p, s| {
            if rng.gen_bool(0.3) {
                let v = if rng.gen_bool(0.5) {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                };
                if rng.gen_bool(0.5) {
                    *p = v;
                } else {
                    *s = v;
                }
            }
        });
    }
    let tol = match dtype {
        DType::Bf16 => (1e-3, 1e-2),
        _ => (1e-3, 1e-3),
    };
    Drawn {
        dtype,
        tol,
        tags: if inf_lse {
            vec![Edge::InfLse.tag().to_string()]
        } else {
            Vec::new()
        },
        case: Case::Merge(MergeCase {
            num_tokens: t,
            num_heads: h,
            head_size: d,
            prefix_output: po,
            prefix_lse: pl,
            suffix_output: so,
            suffix_lse: sl,
            output: None,
            output_lse: None,
        }),
    }
}

/// An absorbed MLA decode batch (DeepSeek's 512 + 64 latent): 1..=3
/// sequences of 1..=96 tokens (block-multiples with
/// [`Edge::LastBlockFull`]), 16 or 32 heads, a split count among 1..16, a
/// shuffled table with a null block 0 and spare blocks.
fn draw_mla(target: Target, rng: &mut ChaCha8Rng, edge: Option<Edge>) -> Option<Drawn> {
    let (l, r) = (512usize, 64usize);
    let dtype = pick(rng, &[DType::F16, DType::Bf16]);
    let heads = pick(rng, &[16usize, 32]);
    let bs = pick(rng, target.mla_block_sizes());
    let splits = pick(rng, &[1usize, 2, 4, 8, 16]);
    let n = rng.gen_range(1..=3usize);
    let mut seq_lens: Vec<i32> = (0..n).map(|_| rng.gen_range(1..=96)).collect();
    if edge == Some(Edge::LastBlockFull) {
        for s in &mut seq_lens {
            *s = (*s as usize).next_multiple_of(bs) as i32;
        }
    }
    let per: Vec<usize> = seq_lens
        .iter()
        .map(|&s| (s as usize).div_ceil(bs))
        .collect();
    let num_blocks = 1 + per.iter().sum::<usize>() + rng.gen_range(0..3);
    let bytes = (num_blocks * bs + n * heads) * (l + r) * dtype.size_bytes()
        + n * heads * l * dtype.size_bytes();
    if bytes > SMALL_CASE_BYTES {
        return None;
    }
    let mut ids: Vec<i32> = (1..num_blocks as i32).collect();
    ids.shuffle(rng);
    let mut next = ids.into_iter();
    let rows: Vec<Vec<i32>> = per
        .iter()
        .map(|&k| next.by_ref().take(k).collect())
        .collect();
    let meta = AttentionMetadata::new(
        bs,
        num_blocks,
        (0..=n as i32).collect(),
        seq_lens.clone(),
        BlockTableTensor::from_rows(&rows),
        rows.iter()
            .zip(&seq_lens)
            .map(|(row, &s)| {
                let p = s as usize - 1;
                row[p / bs] as i64 * bs as i64 + (p % bs) as i64
            })
            .collect(),
        true,
    )
    .ok()?;
    // Drawn in row-major order: query [seq, head, d], kv_cache [block, slot, d].
    let mut vals =
        |shape| Array3::from_shape_simple_fn(shape, || dtype.round(rng.gen_range(-1.0f32..1.0)));
    let query = vals((n, heads, l + r));
    let kv_cache = vals((num_blocks, bs, l + r));
    let mut tags = Vec::new();
    if let Some(e) = edge {
        tags.push(e.tag().to_string());
    }
    Some(Drawn {
        dtype,
        tol: MLA_TOL,
        tags,
        case: Case::Mla(MlaCase {
            num_heads: heads,
            kv_lora_rank: l,
            qk_rope_head_dim: r,
            scale: 1.0 / ((128 + r) as f32).sqrt(),
            num_kv_splits: splits,
            meta,
            query,
            kv_cache,
            output: None,
            reference: None,
        }),
    })
}
