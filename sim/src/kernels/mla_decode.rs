//! Absorbed MLA decode over the latent cache, split-KV: vLLM's
//! `decode_attention_fwd(..., is_mla=True)` (`v1/attention/ops/triton_decode_attention.py`,
//! from SGLang/LightLLM flash-decoding; vllm-backends.md §14.3-§14.5), which
//! TRITON_MLA launches. The same two stages with AITER's split rule model the
//! asm `mla_decode_fwd` (aiter.md §6.3) that ROCM_AITER_MLA launches.
//!
//! Each query row carries the absorbed query `q = [q_latent (Lkv) | q_pe (R)]`
//! for every head; keys are the whole cache entry (576 wide), values are its
//! first Lkv (512) channels: V *is* the latent.
//!
//! ```text
//! stage 1, _fwd_grouped_kernel_stage1: grid (rows, cdiv(H, BLOCK_H), num_kv_splits)
//!   heads = hblk*BLOCK_H .. min(+BLOCK_H, H)
//!   (start, end) = split bounds of this row (KvSplits); end = min(end, kv_len)
//!   if end <= start: write nothing                         // stage 2 skips it too
//!   m_i = -inf, l_i = 0, acc = 0                           // per head: softmax::RowState
//!   for n0 in (start..end).step_by(BLOCK_N):               // tiles ascending, aligned to start
//!     gather K[j] = load(cache[slot(n0 + j)]) for j < BLOCK_N, 0 past end
//!        load: fp8 -> round_q(x * kv_scale); 16-bit: as stored
//!     per head h, per key j (one f32 lane each, dims ascending, fma from 0):
//!        qk_nope = sum_c<Lkv q[h,c] K[j,c];  qk_pe = sum_c<R q[h,Lkv+c] K[j,Lkv+c]
//!        s_j = (qk_nope + qk_pe) * (scale * LOG2E)          // -inf past end
//!     RowState::update(s, V = K[.., :Lkv], P rounded to the q dtype)
//!   Att_Out[row, h, split, :Lkv] = acc / l_i (f32); Att_Out[row, h, split, Lkv] = m_i + log2c(l_i)
//! stage 2, _fwd_kernel_stage2: grid (rows, H)
//!   RowState over the non-empty splits in ascending order, each a "key" with
//!   score Att_Out[.., Lkv] and value Att_Out[.., :Lkv], P not rounded:
//!     m' = max(m, lse_s); alpha = exp2c(m - m'); w = exp2c(lse_s - m')
//!     acc = acc * alpha; acc = fma(w, out_s, acc); l = fma(l, alpha, w)
//!   o[row, h] = round_out(acc / l); lse[row, h] = round_lse((m + log2c(l)) * LN2)
//! ```
//! Constants (vllm-backends §20.3, ROCm launch): BLOCK_N 16, BLOCK_H 16, BLOCK_DMODEL 512,
//! BLOCK_DPE 64. Split bounds: Triton `cdiv(len, S)` tokens per split (not
//! page aligned); AITER whole multiples of its granularity (`mgc`).
//!
//! Deliberate differences from the GPU kernels: exp is the contract's exp2c in
//! base 2 with `scale * LOG2E` folded once, so the per-split LSE in Att_Out is
//! base 2 (vLLM stores natural log there); the returned LSE is natural (one
//! multiply by LN2). The dot inside a `tl.dot`/MFMA has a hardware order; here
//! it is one fma chain per lane in ascending channel order. A row with no key
//! (padding) yields output 0 and lse -inf, where vLLM's stage 2 yields 0/0.

use super::mla_cache::{load_latent, LatentCache};
use super::softmax::{lane_dots, RowState, ScoreParams};
use crate::addressing::{check_extent, AddressedKernel, CacheExtent};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
use rayon::prelude::*;

/// Keys per stage-1 tile (ROCm launch; 32 on CUDA).
pub const BLOCK_N: usize = 16;
/// Heads per stage-1 program (`BLOCK_H`).
pub const BLOCK_H: usize = 16;

/// The KV one query row attends to, in page terms (`mla_decode_fwd`'s
/// paging, which also covers a block-table row): KV token `t` lives in flat
/// cache slot `pages[t / page_size] * page_size + t % page_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvRow<'a> {
    pub pages: &'a [i32],
    pub page_size: usize,
    /// Keys `0..kv_len` are visible to this row (causal MTP rows see fewer).
    pub kv_len: usize,
    /// The length the split boundaries are computed from (>= kv_len): the
    /// row's own seq_len for Triton, the request's KV length for AITER.
    pub split_len: usize,
}

/// How the KV of a row is cut into `num_kv_splits` stage-1 programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvSplits {
    /// vLLM/SGLang Triton: `cdiv(len, S)` tokens per split.
    Even { num_kv_splits: usize },
    /// AITER asm: splits are whole multiples of `granularity` tokens
    /// (`cdiv(cdiv(len, g), S) * g` each); trailing empty splits are skipped.
    Granular {
        num_kv_splits: usize,
        granularity: usize,
    },
}

impl KvSplits {
    pub fn num_kv_splits(&self) -> usize {
        match *self {
            KvSplits::Even { num_kv_splits } | KvSplits::Granular { num_kv_splits, .. } => {
                num_kv_splits
            }
        }
    }

    /// Token range `[start, end)` of `split` for a row of `len` tokens (may be empty).
    pub fn bounds(&self, len: usize, split: usize) -> (usize, usize) {
        let per = match *self {
            KvSplits::Even { num_kv_splits } => len.div_ceil(num_kv_splits),
            KvSplits::Granular {
                num_kv_splits,
                granularity,
            } => len.div_ceil(granularity).div_ceil(num_kv_splits) * granularity,
        };
        let start = (per * split).min(len);
        (start, (start + per).min(len))
    }

    fn validate(&self) -> Result<()> {
        if self.num_kv_splits() == 0 {
            return Err(Error::invalid("num_kv_splits", 0, "must be >= 1"));
        }
        if let KvSplits::Granular { granularity: 0, .. } = self {
            return Err(Error::invalid("split granularity", 0, "must be >= 1"));
        }
        Ok(())
    }
}

/// Per-call parameters of the decode kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MlaDecodeParams {
    pub num_heads: usize,
    /// Softmax scale (natural), the model's `1/sqrt(qk_head_dim)` * mscale.
    pub scale: f32,
    /// Query dtype: K/V are loaded (dequantized) to it and P is rounded to it.
    pub q_dtype: DType,
    /// fp8 latent dequant scale (`layer._k_scale`); ignored for 16-bit caches.
    pub kv_scale: f32,
    pub out_dtype: DType,
    /// TRITON_MLA returns its LSE in the q dtype; f32 elsewhere.
    pub lse_dtype: DType,
    /// Real bugs re-injected (`attnlab zoo`); empty unless a zoo run sets it.
    pub faults: FaultSet,
}

/// `o [rows, H, Lkv]` (exact in `out_dtype`) and natural-log `lse [rows, H]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlaDecodeOutput {
    pub out: Vec<f32>,
    pub lse: Vec<f32>,
}

/// One split-KV decode launch, validated once ([`validate`]: splits,
/// query length, scales, every row's pages inside the cache). The emulator
/// ([`decode`]), both kernel executors and the GPU launcher take it;
/// everything is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct MlaDecodeArgs<'a> {
    q: &'a [f32],
    rows: &'a [KvRow<'a>],
    cache: &'a LatentCache,
    splits: KvSplits,
    p: &'a MlaDecodeParams,
}

impl<'a> MlaDecodeArgs<'a> {
    pub fn new(
        q: &'a [f32],
        rows: &'a [KvRow<'a>],
        cache: &'a LatentCache,
        splits: KvSplits,
        p: &'a MlaDecodeParams,
    ) -> Result<Self> {
        validate(q, rows, cache, splits, p)?;
        Ok(MlaDecodeArgs {
            q,
            rows,
            cache,
            splits,
            p,
        })
    }
    /// Absorbed queries `[rows, H, Lkv + R]`, exact in `q_dtype`.
    pub fn q(&self) -> &'a [f32] {
        self.q
    }
    pub fn rows(&self) -> &'a [KvRow<'a>] {
        self.rows
    }
    pub fn cache(&self) -> &'a LatentCache {
        self.cache
    }
    pub fn splits(&self) -> KvSplits {
        self.splits
    }
    pub fn params(&self) -> &'a MlaDecodeParams {
        self.p
    }
}

/// Stage 1 + stage 2: `decode_attention_fwd` for absorbed MLA queries
/// `q [rows, H, Lkv + R]` (exact in `q_dtype`).
pub fn decode_attention_fwd(
    q: &[f32],
    rows: &[KvRow],
    cache: &LatentCache,
    splits: KvSplits,
    p: &MlaDecodeParams,
) -> Result<MlaDecodeOutput> {
    decode(&MlaDecodeArgs::new(q, rows, cache, splits, p)?)
}

/// [`decode_attention_fwd`] over validated arguments (errors only from a
/// re-injected fault's address check).
pub fn decode(args: &MlaDecodeArgs) -> Result<MlaDecodeOutput> {
    let MlaDecodeArgs {
        rows,
        cache,
        splits,
        p,
        ..
    } = *args;
    // The kernel's page-address arithmetic over this cache (crate::addressing).
    let kernel = match splits {
        KvSplits::Even { .. } => AddressedKernel::TritonMlaDecode,
        KvSplits::Granular { .. } => AddressedKernel::AiterMlaDecode,
    };
    if let Some(row) = rows.first() {
        let l = cache.layout;
        let slots = l.num_blocks * l.block_size;
        let extent = CacheExtent {
            num_blocks: slots / row.page_size.max(1),
            block_size: row.page_size,
            row_elems: l.width(),
        };
        check_extent(kernel, extent, p.faults)?;
    }
    let attn_logits = stage1_of(args);
    stage2(&attn_logits, rows, cache.layout.kv_lora_rank, splits, p)
}

/// The visible part of `split` for `row`.
fn split_range(row: &KvRow, splits: KvSplits, split: usize) -> (usize, usize) {
    let (start, end) = splits.bounds(row.split_len, split);
    (start, end.min(row.kv_len))
}

/// The checks [`stage1`] runs (also used by attnlab-gpu's launcher).
pub fn validate(
    q: &[f32],
    rows: &[KvRow],
    cache: &LatentCache,
    splits: KvSplits,
    p: &MlaDecodeParams,
) -> Result<()> {
    splits.validate()?;
    let w = cache.layout.width();
    if p.num_heads == 0 {
        return Err(Error::invalid("num_heads", 0, "must be >= 1"));
    }
    if q.len() != rows.len() * p.num_heads * w {
        return Err(Error::invalid(
            "query length",
            q.len(),
            format!(
                "[rows {}, heads {}, {w}] needs {}",
                rows.len(),
                p.num_heads,
                rows.len() * p.num_heads * w
            ),
        ));
    }
    if !(p.scale.is_finite() && p.scale > 0.0) {
        return Err(Error::invalid("scale", p.scale, "must be finite and > 0"));
    }
    if cache.layout.dtype.is_fp8() && !(p.kv_scale.is_finite() && p.kv_scale > 0.0) {
        return Err(Error::invalid(
            "kv_scale",
            p.kv_scale,
            "an fp8 latent cache needs a finite scale > 0",
        ));
    }
    let num_slots = cache.num_slots();
    for (r, row) in rows.iter().enumerate() {
        if row.page_size == 0 {
            return Err(Error::invalid(
                format!("row {r} page_size"),
                0,
                "must be >= 1",
            ));
        }
        if row.kv_len > row.split_len {
            return Err(Error::invalid(
                format!("row {r} kv_len"),
                row.kv_len,
                format!("must be <= its split length {}", row.split_len),
            ));
        }
        let pages = row.kv_len.div_ceil(row.page_size);
        if pages > row.pages.len() {
            return Err(Error::invalid(
                format!("row {r} kv_len"),
                row.kv_len,
                format!(
                    "needs {pages} pages of {} but the row has {}",
                    row.page_size,
                    row.pages.len()
                ),
            ));
        }
        let max_page = num_slots / row.page_size;
        if let Some((j, &pg)) = row.pages[..pages]
            .iter()
            .enumerate()
            .find(|(_, &pg)| pg < 0 || pg as usize >= max_page)
        {
            return Err(Error::invalid(format!("row {r} page {j}"), pg, format!("page ids must be in [0, {max_page}) for {num_slots} cache slots in pages of {}", row.page_size)));
        }
    }
    Ok(())
}

/// Stage 1: `Att_Out [rows, H, num_kv_splits, Lkv + 1]` (f32; base-2 LSE in
/// the last channel; entries of empty splits stay 0 and are never read).
pub fn stage1(
    q: &[f32],
    rows: &[KvRow],
    cache: &LatentCache,
    splits: KvSplits,
    p: &MlaDecodeParams,
) -> Result<Vec<f32>> {
    Ok(stage1_of(&MlaDecodeArgs::new(q, rows, cache, splits, p)?))
}

/// [`stage1`] over validated arguments.
fn stage1_of(args: &MlaDecodeArgs) -> Vec<f32> {
    let MlaDecodeArgs {
        q,
        rows,
        cache,
        splits,
        p,
    } = *args;
    let (lkv, h) = (cache.layout.kv_lora_rank, p.num_heads);
    let s = splits.num_kv_splits();
    let hblocks = h.div_ceil(BLOCK_H);
    let programs: Vec<(usize, usize, usize)> = (0..rows.len())
        .flat_map(|b| (0..hblocks).flat_map(move |hb| (0..s).map(move |sp| (b, hb, sp))))
        .collect();
    // Each program returns its heads' partials; scattering them afterwards keeps
    // the result independent of the thread count.
    let partials: Vec<Vec<f32>> = programs
        .par_iter()
        .map(|&(b, hb, sp)| stage1_program(q, &rows[b], b, hb, sp, cache, splits, p))
        .collect();
    let mut attn_logits = vec![0.0f32; rows.len() * h * s * (lkv + 1)];
    for (&(b, hb, sp), part) in programs.iter().zip(&partials) {
        for (i, chunk) in part.chunks_exact(lkv + 1).enumerate() {
            let head = hb * BLOCK_H + i;
            let at = ((b * h + head) * s + sp) * (lkv + 1);
            attn_logits[at..at + lkv + 1].copy_from_slice(chunk);
        }
    }
    attn_logits
}

/// One stage-1 program: (row b, head block hb, split sp). Returns
/// `[heads in block, Lkv + 1]`, or nothing for an empty split.
#[allow(clippy::too_many_arguments)]
fn stage1_program(
    q: &[f32],
    row: &KvRow,
    b: usize,
    hb: usize,
    sp: usize,
    cache: &LatentCache,
    splits: KvSplits,
    p: &MlaDecodeParams,
) -> Vec<f32> {
    let (start, end) = split_range(row, splits, sp);
    if end <= start {
        return Vec::new();
    }
    let (lkv, w) = (cache.layout.kv_lora_rank, cache.layout.width());
    let heads = hb * BLOCK_H..((hb + 1) * BLOCK_H).min(p.num_heads);
    let sp_params = ScoreParams::new(p.scale, None);
    let mut states: Vec<RowState> = heads.clone().map(|_| RowState::new(lkv, None)).collect();
    // K tile row-major [BLOCK_N, W] (V rows for PV) and transposed [W, BLOCK_N]
    // so the QK lanes (one per key) run over contiguous memory.
    let mut tile = vec![0.0f32; BLOCK_N * w];
    let mut tile_t = vec![0.0f32; w * BLOCK_N];
    let (mut qk_nope, mut qk_pe, mut scores) =
        ([0.0f32; BLOCK_N], [0.0f32; BLOCK_N], [0.0f32; BLOCK_N]);
    for n0 in (start..end).step_by(BLOCK_N) {
        let valid = (end - n0).min(BLOCK_N);
        for j in 0..BLOCK_N {
            let dst = &mut tile[j * w..(j + 1) * w];
            if j < valid {
                let t = n0 + j;
                let slot =
                    row.pages[t / row.page_size] as usize * row.page_size + t % row.page_size;
                for (d, &x) in dst.iter_mut().zip(cache.entry(slot)) {
                    *d = load_latent(x, cache.layout.dtype, p.kv_scale, p.q_dtype);
                }
            } else {
                dst.fill(0.0);
            }
        }
        for j in 0..BLOCK_N {
            for c in 0..w {
                tile_t[c * BLOCK_N + j] = tile[j * w + c];
            }
        }
        for (state, head) in states.iter_mut().zip(heads.clone()) {
            let qh = &q[(b * p.num_heads + head) * w..(b * p.num_heads + head + 1) * w];
            // One f32 lane per key, channels ascending, fma from 0 (`softmax::dot`'s chain).
            lane_dots(
                &qh[..lkv],
                &tile_t[..lkv * BLOCK_N],
                BLOCK_N,
                0,
                &mut qk_nope,
            );
            lane_dots(&qh[lkv..], &tile_t[lkv * BLOCK_N..], BLOCK_N, 0, &mut qk_pe);
            for j in 0..BLOCK_N {
                scores[j] = if j < valid {
                    sp_params.score(qk_nope[j] + qk_pe[j], 0.0)
                } else {
                    f32::NEG_INFINITY
                };
            }
            state.update(&scores, |j| &tile[j * w..j * w + lkv], p.q_dtype);
        }
    }
    let mut out = Vec::with_capacity(states.len() * (lkv + 1));
    for state in &states {
        out.extend(state.normalized());
        out.push(state.lse2());
    }
    out
}

/// Stage 2: merges the splits of each (row, head) in ascending split order.
pub fn stage2(
    attn_logits: &[f32],
    rows: &[KvRow],
    kv_lora_rank: usize,
    splits: KvSplits,
    p: &MlaDecodeParams,
) -> Result<MlaDecodeOutput> {
    splits.validate()?;
    let (h, s, lkv) = (p.num_heads, splits.num_kv_splits(), kv_lora_rank);
    let need = rows.len() * h * s * (lkv + 1);
    if attn_logits.len() != need {
        return Err(Error::invalid(
            "attn_logits length",
            attn_logits.len(),
            format!(
                "[rows {}, heads {h}, splits {s}, {}] needs {need}",
                rows.len(),
                lkv + 1
            ),
        ));
    }
    let mut out = vec![0.0f32; rows.len() * h * lkv];
    let mut lse = vec![0.0f32; rows.len() * h];
    out.par_chunks_mut(h * lkv)
        .zip(lse.par_chunks_mut(h))
        .enumerate()
        .for_each(|(b, (o_row, lse_row))| {
            for head in 0..h {
                let mut state = RowState::new(lkv, None);
                for sp in 0..s {
                    let (start, end) = split_range(&rows[b], splits, sp);
                    if end > start {
                        let at = ((b * h + head) * s + sp) * (lkv + 1);
                        let part = &attn_logits[at..at + lkv + 1];
                        state.update(&part[lkv..], |_| &part[..lkv], DType::F32);
                    }
                }
                for (o, x) in o_row[head * lkv..(head + 1) * lkv]
                    .iter_mut()
                    .zip(state.normalized())
                {
                    *o = p.out_dtype.round(x);
                }
                lse_row[head] = p.lse_dtype.round(state.lse());
            }
        });
    Ok(MlaDecodeOutput { out, lse })
}

/// `mla_decode_fwd`'s paging arguments (aiter.md §6.2): request b owns query
/// rows `qo_indptr[b]..qo_indptr[b+1]` and pages
/// `kv_indices[kv_indptr[b]..kv_indptr[b+1]]`, the last one holding
/// `kv_last_page_lens[b]` tokens, so `L_b = (pages - 1) * page_size + last`.
/// vLLM passes page size 1 (one page per token, `last = 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AiterPaging {
    pub qo_indptr: Vec<i32>,
    pub kv_indptr: Vec<i32>,
    pub kv_indices: Vec<i32>,
    pub kv_last_page_lens: Vec<i32>,
    pub page_size: usize,
}

impl AiterPaging {
    pub fn batch_size(&self) -> usize {
        self.kv_indptr.len().saturating_sub(1)
    }

    /// KV length of request b (valid after [`AiterPaging::validate`]).
    pub fn kv_len(&self, b: usize) -> usize {
        let pages = (self.kv_indptr[b + 1] - self.kv_indptr[b]) as usize;
        if pages == 0 {
            0
        } else {
            (pages - 1) * self.page_size + self.kv_last_page_lens[b] as usize
        }
    }

    /// Checks the CSR arrays against each other and against a cache of `num_slots` token slots.
    pub fn validate(&self, num_slots: usize) -> Result<()> {
        let bs = self.batch_size();
        if self.page_size == 0 || !num_slots.is_multiple_of(self.page_size) {
            return Err(Error::invalid(
                "page_size",
                self.page_size,
                format!("must be >= 1 and divide the cache's {num_slots} token slots"),
            ));
        }
        for (what, v, want) in [
            ("kv_indptr", self.kv_indptr.len(), bs + 1),
            ("qo_indptr", self.qo_indptr.len(), bs + 1),
            ("kv_last_page_lens", self.kv_last_page_lens.len(), bs),
        ] {
            if v != want || want == 0 {
                return Err(Error::invalid(format!("{what} length"), v, format!("must be batch_size + 1 = {} (batch_size + 0 for last_page_lens) with batch_size >= 1", bs + 1)));
            }
        }
        for (what, ptr) in [
            ("kv_indptr", &self.kv_indptr),
            ("qo_indptr", &self.qo_indptr),
        ] {
            if ptr[0] != 0 {
                return Err(Error::invalid(format!("{what}[0]"), ptr[0], "must be 0"));
            }
            if let Some(i) = (1..ptr.len()).find(|&i| ptr[i] < ptr[i - 1]) {
                return Err(Error::invalid(
                    format!("{what}[{i}]"),
                    ptr[i],
                    format!("must be >= {what}[{}] = {}", i - 1, ptr[i - 1]),
                ));
            }
        }
        let used = self.kv_indptr[bs] as usize;
        if used > self.kv_indices.len() {
            return Err(Error::invalid(
                "kv_indptr[batch_size]",
                used,
                format!(
                    "exceeds the {} entries of kv_indices",
                    self.kv_indices.len()
                ),
            ));
        }
        let num_pages = num_slots / self.page_size;
        if let Some((i, &pg)) = self.kv_indices[..used]
            .iter()
            .enumerate()
            .find(|(_, &pg)| pg < 0 || pg as usize >= num_pages)
        {
            return Err(Error::invalid(
                format!("kv_indices[{i}]"),
                pg,
                format!("page ids must be in [0, {num_pages})"),
            ));
        }
        for b in 0..bs {
            let (pages, last) = (
                self.kv_indptr[b + 1] - self.kv_indptr[b],
                self.kv_last_page_lens[b],
            );
            if pages > 0 && !(1..=self.page_size as i32).contains(&last) {
                return Err(Error::invalid(
                    format!("kv_last_page_lens[{b}]"),
                    last,
                    format!("must be in [1, {}]", self.page_size),
                ));
            }
            let q = (self.qo_indptr[b + 1] - self.qo_indptr[b]) as usize;
            if q > self.kv_len(b) {
                return Err(Error::invalid(
                    format!("request {b} query length"),
                    q,
                    format!("exceeds its KV length {}", self.kv_len(b)),
                ));
            }
        }
        Ok(())
    }

    /// One [`KvRow`] per query row. Causal (bottom-right): row i of a request
    /// with q query tokens sees keys `j <= i + L - q`; splits follow `L`.
    pub fn rows(&self, causal: bool) -> Vec<KvRow<'_>> {
        self.rows_with(causal, FaultSet::NONE)
    }

    /// [`AiterPaging::rows`] as a kernel with `faults` reads them
    /// ([`Fault::AiterMlaPageSizeIgnored`]: every `kv_indices` entry is one
    /// token slot, and a request's length is its number of entries).
    pub fn rows_with(&self, causal: bool, faults: FaultSet) -> Vec<KvRow<'_>> {
        let ignore = faults.has(Fault::AiterMlaPageSizeIgnored) && self.page_size > 1;
        let mut rows = Vec::new();
        for b in 0..self.batch_size() {
            let pages =
                &self.kv_indices[self.kv_indptr[b] as usize..self.kv_indptr[b + 1] as usize];
            let (l, q) = (
                if ignore { pages.len() } else { self.kv_len(b) },
                (self.qo_indptr[b + 1] - self.qo_indptr[b]) as usize,
            );
            for i in 0..q {
                let kv_len = if causal {
                    l.saturating_sub(q - 1 - i)
                } else {
                    l
                };
                rows.push(KvRow {
                    pages,
                    page_size: if ignore { 1 } else { self.page_size },
                    kv_len,
                    split_len: l,
                });
            }
        }
        rows
    }
}

/// AITER's non-persistent split count (`get_meta_param`, aiter.md §6.3): the
/// i in 1..=16 maximising CU occupancy times `avg_kv / (avg_kv + 84.1 i)`.
pub fn aiter_num_kv_splits(batch_size: usize, total_kv: usize, num_cus: usize) -> usize {
    let (bs, cu) = (batch_size.max(1) as f64, num_cus.max(1) as f64);
    let avg_kv = total_kv as f64 / bs;
    let score = |i: f64| bs * i / ((bs * i / cu).ceil() * cu) * avg_kv / (avg_kv + 84.1 * i);
    (1..=16usize).fold(1, |best, i| {
        if score(i as f64) > score(best as f64) {
            i
        } else {
            best
        }
    })
}

/// The token granularity of the asm kernel's splits (`mgc`, aiter.md §6.3).
pub fn aiter_split_granularity(num_heads: usize, max_seqlen_q: usize, fp8: bool) -> usize {
    match (num_heads, max_seqlen_q) {
        (8 | 16, 1) | (8, 2) => 64,
        (128, 1) if fp8 => 32,
        (64, 1) if !fp8 => 32,
        _ => 16,
    }
}

/// `aiter.mla.mla_decode_fwd` (non-persistent path): the split-KV kernel
/// above with AITER's paging, split count and split granularity.
/// `q [total_q, H, Lkv + R]`; `num_kv_splits` None = [`aiter_num_kv_splits`].
pub fn mla_decode_fwd(
    q: &[f32],
    cache: &LatentCache,
    paging: &AiterPaging,
    causal: bool,
    num_kv_splits: Option<usize>,
    num_cus: usize,
    p: &MlaDecodeParams,
) -> Result<MlaDecodeOutput> {
    let splits = aiter_splits(cache, paging, num_kv_splits, num_cus, p.num_heads)?;
    decode_attention_fwd(q, &paging.rows_with(causal, p.faults), cache, splits, p)
}

/// The launch `mla_decode_fwd` makes: `paging` validated against `cache`,
/// then AITER's split count and granularity. Shared with executors that run
/// [`decode_attention_fwd`] elsewhere, so the split rule lives here only.
pub fn aiter_splits(
    cache: &LatentCache,
    paging: &AiterPaging,
    num_kv_splits: Option<usize>,
    num_cus: usize,
    num_heads: usize,
) -> Result<KvSplits> {
    paging.validate(cache.num_slots())?;
    let bs = paging.batch_size();
    let total_kv: usize = (0..bs).map(|b| paging.kv_len(b)).sum();
    let max_q = (0..bs)
        .map(|b| (paging.qo_indptr[b + 1] - paging.qo_indptr[b]) as usize)
        .max()
        .unwrap_or(0);
    Ok(KvSplits::Granular {
        num_kv_splits: num_kv_splits.unwrap_or_else(|| aiter_num_kv_splits(bs, total_kv, num_cus)),
        granularity: aiter_split_granularity(num_heads, max_q, cache.layout.dtype.is_fp8()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab_shared::layout::mla::MlaLayout;

    fn params(h: usize) -> MlaDecodeParams {
        MlaDecodeParams {
            num_heads: h,
            scale: 0.3,
            q_dtype: DType::F32,
            kv_scale: 1.0,
            out_dtype: DType::F32,
            lse_dtype: DType::F32,
            faults: FaultSet::NONE,
        }
    }

    /// A tiny cache (Lkv 4, R 2, block 2) whose slot s holds values derived from s.
    fn cache() -> LatentCache {
        let l = MlaLayout::new(4, 2, 4, 2, DType::F32).unwrap();
        let data = (0..l.numel())
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 8.0)
            .collect();
        LatentCache::from_tensor(l, data).unwrap()
    }

    #[test]
    fn triton_splits_are_cdiv_wide_and_not_page_aligned() {
        let s = KvSplits::Even { num_kv_splits: 4 };
        assert_eq!(
            (0..4).map(|i| s.bounds(10, i)).collect::<Vec<_>>(),
            vec![(0, 3), (3, 6), (6, 9), (9, 10)]
        );
        assert_eq!(
            s.bounds(2, 3),
            (2, 2),
            "more splits than tokens leaves empty splits"
        );
    }

    #[test]
    fn aiter_splits_are_whole_granules() {
        let s = KvSplits::Granular {
            num_kv_splits: 3,
            granularity: 16,
        };
        assert_eq!(
            (0..3).map(|i| s.bounds(40, i)).collect::<Vec<_>>(),
            vec![(0, 16), (16, 32), (32, 40)]
        );
        assert_eq!(s.bounds(20, 2), (20, 20));
    }

    #[test]
    fn single_key_returns_its_latent_and_its_score_as_lse() {
        let c = cache();
        let q: Vec<f32> = (0..6).map(|i| i as f32 * 0.25).collect();
        let pages = [3];
        let rows = [KvRow {
            pages: &pages,
            page_size: 2,
            kv_len: 1,
            split_len: 1,
        }];
        let o = decode_attention_fwd(
            &q,
            &rows,
            &c,
            KvSplits::Even { num_kv_splits: 2 },
            &params(1),
        )
        .unwrap();
        let k = c.entry(6);
        assert_eq!(&o.out[..], &k[..4]);
        let s: f64 = q
            .iter()
            .zip(k)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum::<f64>()
            * 0.3;
        approx::assert_abs_diff_eq!(o.lse[0] as f64, s, epsilon = 1e-5);
    }

    #[test]
    fn aiter_paging_with_pages_of_two_matches_the_same_tokens_in_pages_of_one() {
        let c = cache();
        let q: Vec<f32> = (0..12).map(|i| ((i * 5 % 7) as f32 - 3.0) / 4.0).collect();
        // One request of 3 tokens: slots 6, 7 (page 3 of size 2) then 2 (page 1, last len 1).
        let p2 = AiterPaging {
            qo_indptr: vec![0, 1],
            kv_indptr: vec![0, 2],
            kv_indices: vec![3, 1],
            kv_last_page_lens: vec![1],
            page_size: 2,
        };
        let p1 = AiterPaging {
            qo_indptr: vec![0, 1],
            kv_indptr: vec![0, 3],
            kv_indices: vec![6, 7, 2],
            kv_last_page_lens: vec![1],
            page_size: 1,
        };
        let a = mla_decode_fwd(&q, &c, &p2, true, Some(1), 304, &params(2)).unwrap();
        let b = mla_decode_fwd(&q, &c, &p1, true, Some(1), 304, &params(2)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn aiter_paging_rejects_inconsistent_csr_arrays() {
        let c = cache();
        let ok = AiterPaging {
            qo_indptr: vec![0, 1],
            kv_indptr: vec![0, 2],
            kv_indices: vec![3, 1],
            kv_last_page_lens: vec![2],
            page_size: 2,
        };
        assert!(ok.validate(c.num_slots()).is_ok());
        let e = AiterPaging {
            kv_indptr: vec![0, 3],
            ..ok.clone()
        }
        .validate(8)
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("kv_indptr[batch_size] 3") && e.contains("2 entries"),
            "{e}"
        );
        let e = AiterPaging {
            kv_indices: vec![3, 4],
            ..ok.clone()
        }
        .validate(8)
        .unwrap_err()
        .to_string();
        assert!(e.contains("kv_indices[1] 4") && e.contains("[0, 4)"), "{e}");
        let e = AiterPaging {
            kv_last_page_lens: vec![3],
            ..ok.clone()
        }
        .validate(8)
        .unwrap_err()
        .to_string();
        assert!(e.contains("kv_last_page_lens[0] 3"), "{e}");
        let e = AiterPaging {
            kv_indptr: vec![0, 2, 1],
            qo_indptr: vec![0, 1, 1],
            kv_last_page_lens: vec![2, 1],
            ..ok.clone()
        }
        .validate(8)
        .unwrap_err()
        .to_string();
        assert!(e.contains("kv_indptr[2] 1"), "{e}");
        let e = AiterPaging { page_size: 3, ..ok }
            .validate(8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("page_size 3"), "{e}");
    }

    #[test]
    fn aiter_split_count_prefers_more_splits_for_small_batches_of_long_context() {
        assert_eq!(
            aiter_num_kv_splits(304, 304 * 4096, 304),
            1,
            "one request per CU needs no split"
        );
        assert_eq!(
            aiter_num_kv_splits(256, 256 * 4096, 304),
            7,
            "7 x 256 = 1792 of 1824 CU slots beats 256 of 304"
        );
        assert!(aiter_num_kv_splits(1, 8192, 304) > 8);
    }

    #[test]
    fn row_without_keys_is_zero_with_minus_inf_lse() {
        let c = cache();
        let rows = [KvRow {
            pages: &[],
            page_size: 2,
            kv_len: 0,
            split_len: 0,
        }];
        let o = decode_attention_fwd(
            &[0.5; 12],
            &rows,
            &c,
            KvSplits::Even { num_kv_splits: 3 },
            &params(2),
        )
        .unwrap();
        assert!(o.out.iter().all(|&x| x == 0.0));
        assert!(o.lse.iter().all(|&x| x == f32::NEG_INFINITY));
    }

    #[test]
    fn rejects_pages_outside_the_cache_and_short_page_lists() {
        let c = cache();
        let err = |pages: &[i32], q_len: usize, splits: usize| {
            let rows = [KvRow {
                pages,
                page_size: 2,
                kv_len: 3,
                split_len: 3,
            }];
            let s = KvSplits::Even {
                num_kv_splits: splits,
            };
            decode_attention_fwd(&vec![0.0; q_len], &rows, &c, s, &params(1))
                .unwrap_err()
                .to_string()
        };
        let e = err(&[0, 4], 6, 1);
        assert!(e.contains("row 0 page 1") && e.contains("[0, 4)"), "{e}");
        let e = err(&[0], 6, 1);
        assert!(e.contains("needs 2 pages"), "{e}");
        let e = err(&[0, 1], 5, 0);
        assert!(e.contains("num_kv_splits 0"), "{e}");
        let e = err(&[0, 1], 5, 1);
        assert!(e.contains("query length 5"), "{e}");
    }
}
