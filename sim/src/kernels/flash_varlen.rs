//! Varlen flash attention with LSE: AITER's `flash_attn_varlen_func`
//! (aiter.md §3; CK `fmha_fwd` / asm "fmha v3" answer it on MI300), which
//! ROCM_AITER_FA calls for prefill, for the new tokens of an extend, for each
//! gathered context chunk, and for the sliding-window extend; the MLA
//! prefill reuses it with a different V head size.
//!
//! Grid `(cdiv(max_seqlen_q, BLOCK_M), batch, Hq)`; each program owns
//! BLOCK_M query rows of one sequence and one head, and walks key tiles of
//! BLOCK_N (CK's `bn0`: 64 for head 64, else 128) in ascending order:
//! ```text
//! offset = sk - sq                                 // bottom-right alignment
//! for each row i of the block:  p_i = i + offset   // the row's key-space position
//!     m_i = -inf (or sink * LOG2E), l_i = 0 (or 1), acc = 0
//! for n in n_min..n_max:                           // tiles fully masked for the
//!     K^T tile [Dqk][BLOCK_N], V tile [BLOCK_N][Dv] //  whole block are skipped
//!     for each row i:
//!         s_j = fma-chain(q_i . k_j) over d ascending, from 0
//!         s_j = ScoreParams::score(s_j, alibi)    // base 2; softcap on the natural score
//!         s_j = -inf unless visible(j, p_i)        // causal j <= p_i, window p_i - j < W
//!         RowState::update(s, V tile, P -> dtype)  // online softmax, softmax.rs
//! out_i = round(acc / l_i), lse_i = (m_i + log2c(l_i)) * LN2    // [Hq, total_q], natural
//! ```
//! Masking is FA's bottom-right rule (aiter.md §3.3): query i of a sequence
//! sees key j iff `j <= i + sk - sq` (causal) and `i + sk - sq - j < W`
//! (window `(W-1, 0)`: its right bound 0 makes a windowed call causal even
//! with `causal=False`); a row with no visible key returns 0 and lse -inf.
//! ALiBi is FA's symmetric `-slope * |i + sk - sq - j|`. A sink joins the
//! denominator of every row (so of every partial this kernel returns).
//!
//! Rounding points: Q/K/V are exact in `dtype`; S and the online softmax in
//! f32; P rounded to `dtype` (the V dtype) before the PV fma; `acc / l` then
//! rounded to `dtype`; lse stays f32.
//!
//! Deliberate differences: exp is the contract's exp2c with `scale * LOG2E`
//! folded once; MFMA accumulation order inside a tile is replaced by the
//! contract's ascending fma chain. Skipping fully masked tiles (as FA does)
//! is bit-neutral: such a tile leaves (m, l, acc) unchanged. Rows are grouped
//! per KV head so one K^T tile serves all GQA heads: also bit-neutral.
//! `min_seqlen_q` (vLLM passes 1; its prefill/extend rows all have q > 1),
//! dropout and `return_attn_probs` are not modelled.

use super::simd::{self, SimdPath};
use super::softmax::{visible, OutLse, RowState, ScoreParams};
use crate::numerics::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
use rayon::prelude::*;

/// Query rows per program (CK `bm0` for every head size ROCm uses).
pub const BLOCK_M: usize = 128;

/// Query rows of one head stepped through a tile together (a program's
/// rows in chunks: their scores stay in L1; any chunking gives the same bits).
const CHUNK: usize = 32;

/// Keys per tile: CK fmha_fwd's `bn0` (64 for head size <= 64, else 128).
pub fn ck_block_n(head_size: usize) -> usize {
    if head_size <= 64 {
        64
    } else {
        128
    }
}

/// The fields of a [`VarlenParams`], not yet checked: set what differs from
/// [`VarlenParamsBuilder::new`]'s defaults (struct-update syntax works), then
/// [`VarlenParamsBuilder::build`] checks them.
#[derive(Debug, Clone, PartialEq)]
pub struct VarlenParamsBuilder<'a> {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Q/K head size.
    pub head_size: usize,
    /// V and output head size (MLA prefill: 128 against Q/K 192).
    pub head_size_v: usize,
    /// Dtype of q, k, v and out; P is rounded to it before PV.
    pub dtype: DType,
    /// `softmax_scale` and `logits_soft_cap` (None = 0.0).
    pub score: ScoreParams,
    pub causal: bool,
    /// Window W in tokens, vLLM's `window_size = (W - 1, 0)` (right bound 0:
    /// keys past the diagonal are masked even when `causal` is false).
    pub window: Option<usize>,
    pub alibi_slopes: Option<&'a [f32]>,
    /// `sink_ptr`: per-q-head sink logits (natural log).
    pub sinks: Option<&'a [f32]>,
    /// Keys per tile; [`ck_block_n`] by default.
    pub block_n: usize,
    /// Real bugs re-injected (`attnlab zoo`); empty unless a zoo run sets it.
    pub faults: FaultSet,
}

impl<'a> VarlenParamsBuilder<'a> {
    /// Causal, no window/alibi/sinks/softcap, equal Q/V head sizes, CK tiles.
    pub fn new(
        num_heads: usize,
        num_kv_heads: usize,
        head_size: usize,
        dtype: DType,
        scale: f32,
    ) -> Self {
        VarlenParamsBuilder {
            num_heads,
            num_kv_heads,
            head_size,
            head_size_v: head_size,
            dtype,
            score: ScoreParams::new(scale, None),
            causal: true,
            window: None,
            alibi_slopes: None,
            sinks: None,
            block_n: ck_block_n(head_size),
            faults: FaultSet::NONE,
        }
    }

    /// Checks the invariants of [`VarlenParams`]; the error names the first
    /// bad field, its value and what it must be.
    pub fn build(self) -> Result<VarlenParams<'a>> {
        self.validate()?;
        Ok(VarlenParams(self))
    }

    fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_size", self.head_size),
            ("head_size_v", self.head_size_v),
            ("block_n", self.block_n),
        ] {
            if v == 0 {
                return Err(Error::invalid(what, 0, "must be >= 1"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::invalid(
                "num_kv_heads",
                self.num_kv_heads,
                format!("must divide num_heads = {}", self.num_heads),
            ));
        }
        if self.window == Some(0) {
            return Err(Error::invalid("window", 0, "must be >= 1 or absent"));
        }
        for (what, v) in [("alibi_slopes", self.alibi_slopes), ("sinks", self.sinks)] {
            if let Some(v) = v {
                if v.len() != self.num_heads {
                    return Err(Error::invalid(
                        format!("{what} length"),
                        v.len(),
                        format!("must be num_heads = {}", self.num_heads),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Everything `flash_attn_varlen_func` takes besides the tensors, checked
/// once by [`VarlenParamsBuilder::build`] (which [`VarlenParams::new`] goes
/// through).
///
/// # Invariants
///
/// Its fields (a [`VarlenParamsBuilder`]) are private, so every value keeps
/// what `build` checked and neither the kernels nor the GPU launchers check
/// it again:
/// - `num_heads`, `num_kv_heads`, `head_size`, `head_size_v` and `block_n`
///   are `>= 1`, and `num_kv_heads` divides `num_heads`;
/// - `window`, when set, is `>= 1`;
/// - `alibi_slopes` and `sinks`, when set, hold one value per query head.
#[derive(Debug, Clone, PartialEq)]
pub struct VarlenParams<'a>(VarlenParamsBuilder<'a>);

impl<'a> VarlenParams<'a> {
    /// Causal, no window/alibi/sinks/softcap, equal Q/V head sizes, CK
    /// tiles; checked.
    pub fn new(
        num_heads: usize,
        num_kv_heads: usize,
        head_size: usize,
        dtype: DType,
        scale: f32,
    ) -> Result<Self> {
        VarlenParamsBuilder::new(num_heads, num_kv_heads, head_size, dtype, scale).build()
    }

    /// [`VarlenParamsBuilder::new`]: the defaults, to change and build.
    pub fn builder(
        num_heads: usize,
        num_kv_heads: usize,
        head_size: usize,
        dtype: DType,
        scale: f32,
    ) -> VarlenParamsBuilder<'a> {
        VarlenParamsBuilder::new(num_heads, num_kv_heads, head_size, dtype, scale)
    }

    /// These parameters' fields, to change and build again.
    pub fn to_builder(&self) -> VarlenParamsBuilder<'a> {
        self.0.clone()
    }

    /// The same parameters with these faults re-injected (no invariant
    /// depends on them).
    pub fn with_faults(mut self, faults: FaultSet) -> Self {
        self.0.faults = faults;
        self
    }

    pub fn num_heads(&self) -> usize {
        self.0.num_heads
    }
    pub fn num_kv_heads(&self) -> usize {
        self.0.num_kv_heads
    }
    /// Q/K head size.
    pub fn head_size(&self) -> usize {
        self.0.head_size
    }
    /// V and output head size (MLA prefill: 128 against Q/K 192).
    pub fn head_size_v(&self) -> usize {
        self.0.head_size_v
    }
    /// Dtype of q, k, v and out; P is rounded to it before PV.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    /// `softmax_scale` and `logits_soft_cap`.
    pub fn score(&self) -> ScoreParams {
        self.0.score
    }
    pub fn causal(&self) -> bool {
        self.0.causal
    }
    /// Window W in tokens, vLLM's `window_size = (W - 1, 0)`.
    pub fn window(&self) -> Option<usize> {
        self.0.window
    }
    pub fn alibi_slopes(&self) -> Option<&'a [f32]> {
        self.0.alibi_slopes
    }
    /// `sink_ptr`: per-q-head sink logits (natural log).
    pub fn sinks(&self) -> Option<&'a [f32]> {
        self.0.sinks
    }
    /// Keys per tile.
    pub fn block_n(&self) -> usize {
        self.0.block_n
    }
    /// Real bugs re-injected (`attnlab zoo`); empty unless a zoo run sets it.
    pub fn faults(&self) -> FaultSet {
        self.0.faults
    }
}

/// The varlen call's shape checks: `cu_seqlens_q` and `cu_seqlens_k` of one
/// batch, and `q`, `k`, `v` as long as they and the head sizes say; returns
/// `(total_q, total_k)`. Shared by every kernel of the `flash_attn_varlen`
/// interface (the fma and the tensor-core flavour).
pub(crate) fn check_inputs(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu_seqlens_q: &[i32],
    cu_seqlens_k: &[i32],
    p: &VarlenParams,
) -> Result<(usize, usize)> {
    if cu_seqlens_q.len() != cu_seqlens_k.len() {
        return Err(Error::invalid(
            "cu_seqlens_k length",
            cu_seqlens_k.len(),
            format!(
                "must equal cu_seqlens_q length {} (batch + 1)",
                cu_seqlens_q.len()
            ),
        ));
    }
    let total_q = check_cu("cu_seqlens_q", cu_seqlens_q)?;
    let total_k = check_cu("cu_seqlens_k", cu_seqlens_k)?;
    let (hq, hk, d, dv) = (
        p.num_heads(),
        p.num_kv_heads(),
        p.head_size(),
        p.head_size_v(),
    );
    for (what, len, want) in [
        ("q", q.len(), total_q * hq * d),
        ("k", k.len(), total_k * hk * d),
        ("v", v.len(), total_k * hk * dv),
    ] {
        if len != want {
            return Err(Error::invalid(
                format!("{what} length"),
                len,
                format!("cu_seqlens and head sizes need {want}"),
            ));
        }
    }
    Ok((total_q, total_k))
}

/// One `flash_attn_varlen` call, validated once: the parameters
/// ([`VarlenParams`]' own checks) and the tensors and `cu_seqlens` they
/// describe (lengths, monotone offsets from 0). The emulator ([`varlen`]),
/// both kernel executors and the GPU launcher take it; everything is
/// borrowed, so nothing changes after the check.
#[derive(Debug, Clone, Copy)]
pub struct VarlenArgs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    cu_seqlens_q: &'a [i32],
    cu_seqlens_k: &'a [i32],
    p: &'a VarlenParams<'a>,
    total_q: usize,
    total_k: usize,
}

impl<'a> VarlenArgs<'a> {
    /// q `[total_q, Hq, D]`, k `[total_k, Hkv, D]`, v `[total_k, Hkv, Dv]`.
    pub fn new(
        q: &'a [f32],
        k: &'a [f32],
        v: &'a [f32],
        cu_seqlens_q: &'a [i32],
        cu_seqlens_k: &'a [i32],
        p: &'a VarlenParams<'a>,
    ) -> Result<Self> {
        let (total_q, total_k) = check_inputs(q, k, v, cu_seqlens_q, cu_seqlens_k, p)?;
        Ok(VarlenArgs {
            q,
            k,
            v,
            cu_seqlens_q,
            cu_seqlens_k,
            p,
            total_q,
            total_k,
        })
    }
    pub fn q(&self) -> &'a [f32] {
        self.q
    }
    pub fn k(&self) -> &'a [f32] {
        self.k
    }
    pub fn v(&self) -> &'a [f32] {
        self.v
    }
    pub fn cu_seqlens_q(&self) -> &'a [i32] {
        self.cu_seqlens_q
    }
    pub fn cu_seqlens_k(&self) -> &'a [i32] {
        self.cu_seqlens_k
    }
    pub fn params(&self) -> &'a VarlenParams<'a> {
        self.p
    }
    /// Query rows of the whole batch (`cu_seqlens_q`'s last entry).
    pub fn total_q(&self) -> usize {
        self.total_q
    }
    /// Key rows of the whole batch (`cu_seqlens_k`'s last entry).
    pub fn total_k(&self) -> usize {
        self.total_k
    }
}

/// Checks a `cu_seqlens` array (starts at 0, non-decreasing) and returns its total.
pub(crate) fn check_cu(what: &str, cu: &[i32]) -> Result<usize> {
    if cu.first() != Some(&0) {
        return Err(Error::invalid(
            format!("{what}[0]"),
            cu.first().map_or("missing".into(), |v| v.to_string()),
            "must be 0",
        ));
    }
    for i in 1..cu.len() {
        if cu[i] < cu[i - 1] {
            return Err(Error::invalid(
                format!("{what}[{i}]"),
                cu[i],
                format!("must be >= {what}[{}] = {}", i - 1, cu[i - 1]),
            ));
        }
    }
    Ok(*cu.last().unwrap_or(&0) as usize)
}

/// `flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, ...,
/// return_lse=True)`: q `[total_q, Hq, D]`, k `[total_k, Hkv, D]`, v
/// `[total_k, Hkv, Dv]`, all exact in `p.dtype`. Returns out `[total_q, Hq,
/// Dv]` and lse `[Hq, total_q]`.
/// The natural-log LSE a row stores ([`RowState::lse`]), as a kernel with
/// `faults` returns it: [`Fault::EmptyRowPlusInfLse`] gives a row with no
/// key +inf; [`Fault::ChunkedPrefillLse`] returns the base-2 running value.
#[inline]
fn row_lse(st: &RowState, faults: FaultSet) -> f32 {
    if faults.is_empty() {
        return st.lse();
    }
    if faults.has(Fault::EmptyRowPlusInfLse) && st.l == 0.0 {
        return f32::INFINITY;
    }
    if faults.has(Fault::ChunkedPrefillLse) {
        return st.lse2();
    }
    st.lse()
}

pub fn flash_attn_varlen(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu_seqlens_q: &[i32],
    cu_seqlens_k: &[i32],
    p: &VarlenParams,
) -> Result<OutLse> {
    Ok(varlen(&VarlenArgs::new(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        p,
    )?))
}

/// [`flash_attn_varlen`] over validated arguments (it cannot fail).
pub fn varlen(args: &VarlenArgs) -> OutLse {
    let VarlenArgs {
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        p,
        total_q,
        ..
    } = *args;
    let (hq, hk, dv) = (p.num_heads(), p.num_kv_heads(), p.head_size_v());
    let qpk = hq / hk;
    let batch = cu_seqlens_q.len().saturating_sub(1);
    // One task per (sequence, row block, kv head): a program's kv-head
    // groups are independent (each its own rows, tiles and states), so
    // running them as separate tasks changes no bit and gives the cores
    // enough tasks to balance the causal triangle.
    let programs: Vec<(usize, usize, usize)> = (0..batch)
        .flat_map(|b| {
            (0..seq_len(cu_seqlens_q, b).div_ceil(BLOCK_M))
                .flat_map(move |mb| (0..hk).map(move |g| (b, mb, g)))
        })
        .collect();
    // K^T and V of every tile of a (sequence, kv head) whose tiles several
    // row blocks read: laid out once (padded tiles), shared by its
    // programs (copies: the same values each program would lay out itself).
    let kt: Vec<Option<(Vec<f32>, Vec<f32>)>> = (0..batch)
        .flat_map(|b| (0..hk).map(move |g| (b, g)))
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&(b, g)| {
            (seq_len(cu_seqlens_q, b) > BLOCK_M).then(|| {
                let (d, bn) = (p.head_size(), p.block_n());
                let ld = padded(bn);
                let sk = seq_len(cu_seqlens_k, b);
                let k0 = cu_seqlens_k[b] as usize;
                let dims: Vec<usize> = (0..d).collect();
                let mut all = vec![0.0f32; sk.div_ceil(bn) * d * ld];
                for (n, tile) in all.chunks_exact_mut(d * ld).enumerate() {
                    let len = bn.min(sk - n * bn);
                    transpose_k_tile(k, (k0 + n * bn) * hk + g, hk * d, len, d, ld, &dims, tile);
                }
                let (dv, ld_v) = (p.head_size_v(), padded(p.head_size_v()));
                let mut vs = vec![0.0f32; sk.div_ceil(bn) * bn * ld_v];
                for (j, row) in vs.chunks_exact_mut(ld_v).take(sk).enumerate() {
                    row[..dv].copy_from_slice(&v[((k0 + j) * hk + g) * dv..][..dv]);
                }
                (all, vs)
            })
        })
        .collect();
    let mut res = OutLse::empty(total_q, hq, dv);
    // Each program's output rows, handed to it as disjoint slices of
    // `res.out`: token t's heads of kv head g (`qpk * Dv` contiguous values)
    // belong to program (b, t's row block, g), which writes them in place.
    let first_program: Vec<usize> = (0..batch)
        .scan(0, |n, b| {
            let first = *n;
            *n += seq_len(cu_seqlens_q, b).div_ceil(BLOCK_M) * hk;
            Some(first)
        })
        .collect();
    let task = |t: usize, g: usize| -> usize {
        // programs are (b, mb, g) in order: b's first program index, then
        // mb * hk + g.
        let b = cu_seqlens_q[1..].partition_point(|&x| x as usize <= t);
        let mb = (t - cu_seqlens_q[b] as usize) / BLOCK_M;
        first_program[b] + mb * hk + g
    };
    let mut outs: Vec<Vec<&mut [f32]>> = programs.iter().map(|_| Vec::new()).collect();
    for (i, chunk) in res.out_mut().chunks_exact_mut(qpk * dv).enumerate() {
        outs[task(i / hk, i % hk)].push(chunk);
    }
    let lses: Vec<(usize, usize, Vec<f32>)> = programs
        .par_iter()
        .zip(outs.into_par_iter())
        .map(|(&(b, mb, g), mut out)| {
            let kt_seq = kt[b * hk + g]
                .as_ref()
                .map(|(k, v)| (k.as_slice(), v.as_slice()));
            let lse = program(
                q,
                k,
                v,
                cu_seqlens_q,
                cu_seqlens_k,
                b,
                mb,
                g,
                p,
                kt_seq,
                &mut out,
            );
            (cu_seqlens_q[b] as usize + mb * BLOCK_M, g, lse)
        })
        .collect();
    for (t0, g, lse) in lses {
        let rows = lse.len() / qpk;
        // lse [qpk, rows] into [Hq, total_q].
        for hh in 0..qpk {
            let h = g * qpk + hh;
            res.lse_mut()[h * total_q + t0..h * total_q + t0 + rows]
                .copy_from_slice(&lse[hh * rows..(hh + 1) * rows]);
        }
    }
    res
}

pub(crate) fn seq_len(cu: &[i32], b: usize) -> usize {
    (cu[b + 1] - cu[b]) as usize
}

/// One (sequence b, row block mb) for the query heads of kv head `g`:
/// writes row i's `[qpk, Dv]` outputs into `out[i]` and returns lse
/// `[qpk, rows]`.
#[allow(clippy::too_many_arguments)]
fn program(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cu_q: &[i32],
    cu_k: &[i32],
    b: usize,
    mb: usize,
    g: usize,
    p: &VarlenParams,
    kt_seq: Option<(&[f32], &[f32])>,
    out: &mut [&mut [f32]],
) -> Vec<f32> {
    let (hq, hk, d, dv, bn) = (
        p.num_heads(),
        p.num_kv_heads(),
        p.head_size(),
        p.head_size_v(),
        p.block_n(),
    );
    let qpk = hq / hk;
    let (sq, sk) = (seq_len(cu_q, b), seq_len(cu_k, b));
    let (q0, k0) = (cu_q[b] as usize, cu_k[b] as usize);
    let (r0, r1) = (mb * BLOCK_M, ((mb + 1) * BLOCK_M).min(sq));
    let rows = r1 - r0;
    let offset = sk as i64 - sq as i64;
    let pos = |i: usize| i as i64 + offset;
    let causal = p.causal() || p.window().is_some(); // window_size's right bound is 0

    // Tile range [n_min, n_max) that can hold a visible key for some row.
    let last_key = if causal {
        (pos(r1 - 1) + 1).clamp(0, sk as i64) as usize
    } else {
        sk
    };
    let first_key = match p.window() {
        Some(w) => (pos(r0) - w as i64 + 1).clamp(0, sk as i64) as usize,
        None => 0,
    };
    let (n_min, n_max) = (first_key / bn, last_key.div_ceil(bn));

    let heads = g * qpk..(g + 1) * qpk;
    // states[(h - g * qpk) * rows + (i - r0)]: a head's rows are consecutive.
    let mut states: Vec<RowState> = heads
        .clone()
        .flat_map(|h| (0..rows).map(move |_| h))
        .map(|h| RowState::new(dv, p.sinks().map(|s| s[h])))
        .collect();
    // Own K^T / V tile buffers rather than softmax::KvTile: V's head size may
    // differ from Q/K's here (MLA prefill, 192 / 128). Same layout and QK order.
    // Leading dimensions padded off a multiple of 4 KiB (see `padded`).
    let (ld_k, ld_v) = (padded(bn), padded(dv));
    // Only a program whose sequence has no shared copy lays out its own.
    let own = kt_seq.is_none();
    let mut k_t = vec![0.0f32; if own { d * ld_k } else { 0 }];
    let mut v_tile = vec![0.0f32; if own { bn * ld_v } else { 0 }];
    let path = SimdPath::active();
    let dims: Vec<usize> = (0..d).collect();
    // A chunk of one head's rows against the tile at a time: its scores
    // (CHUNK x BLOCK_N) stay in L1 from the dot products to the PV.
    let mut dots = vec![0.0f32; CHUNK * bn];
    let qs: Vec<&[f32]> = heads
        .clone()
        .flat_map(|h| (r0..r1).map(move |i| &q[((q0 + i) * hq + h) * d..][..d]))
        .collect();
    for n in n_min..n_max {
        let (j0, len) = (n * bn, bn.min(sk - n * bn));
        // K^T of the tile: the sequence's shared copy, else our own.
        let (k_t, v_t): (&[f32], &[f32]) = match kt_seq {
            Some((all_k, all_v)) => (
                &all_k[n * d * ld_k..(n + 1) * d * ld_k],
                &all_v[n * bn * ld_v..(n + 1) * bn * ld_v],
            ),
            None => {
                transpose_k_tile(k, (k0 + j0) * hk + g, hk * d, len, d, ld_k, &dims, &mut k_t);
                for j in 0..len {
                    v_tile[j * ld_v..j * ld_v + dv]
                        .copy_from_slice(&v[((k0 + j0 + j) * hk + g) * dv..][..dv]);
                }
                (&k_t, &v_tile)
            }
        };
        // S_ij in place over the dot products, then the chunk's rows step
        // together (update_rows: every row its own step).
        for (hh, h) in heads.clone().enumerate() {
            let slope = p.alibi_slopes().map(|a| a[h]);
            for c0 in (r0..r1).step_by(CHUNK) {
                let c1 = (c0 + CHUNK).min(r1);
                // Causal: keys past the chunk's last row's position are
                // masked for every row of the chunk; leaving them out is
                // bit-neutral (a -inf score adds P = +0 to a sum that is
                // never -0, and no PV fma), as skipping a masked tile is.
                let n_keys = match causal {
                    true => (pos(c1 - 1) + 1 - j0 as i64).clamp(0, len as i64) as usize,
                    false => len,
                };
                let block = &mut dots[..(c1 - c0) * bn];
                let q_rows = &qs[hh * rows + (c0 - r0)..hh * rows + (c1 - r0)];
                simd::dots_rows(path, q_rows, k_t, ld_k, 0, n_keys, block, bn);
                for (i, s) in (c0..c1).zip(block.chunks_exact_mut(bn)) {
                    score_row(
                        &mut s[..n_keys],
                        j0,
                        pos(i),
                        causal,
                        p.window(),
                        &p.score(),
                        slope,
                    );
                }
                let st = hh * rows + (c0 - r0);
                RowState::update_rows(
                    &mut states[st..st + (c1 - c0)],
                    block,
                    bn,
                    n_keys,
                    |j| &v_t[j * ld_v..j * ld_v + dv],
                    p.dtype(),
                );
            }
        }
    }

    let mut lse = vec![0.0f32; qpk * rows];
    for hh in 0..qpk {
        for i in 0..rows {
            let st = &states[hh * rows + i];
            let o = &mut out[i][hh * dv..(hh + 1) * dv];
            st.normalized_into(o);
            simd::round_slice(p.dtype(), o);
            lse[hh * rows + i] = row_lse(st, p.faults());
        }
    }
    lse
}

/// A tile's leading dimension for `n` f32 columns: `n`, plus 16 when `n *
/// 4` bytes is a multiple of 512, so the rows of a tile (a 128-key K^T
/// row, a 128-dim V row) do not all fall into the same few L1 sets. Only
/// where the values sit changes, not one value.
pub(crate) fn padded(n: usize) -> usize {
    if n.is_multiple_of(128) {
        n + 16
    } else {
        n
    }
}

/// `dst[dd * bn + j] = k[first * d + j * key_stride + dd]` for `j < len`,
/// `dd < d` (`first`: the tile's first key row, in rows of `d`): K^T of one tile, eight keys at a time through register transposes
/// (a copy); columns `len..bn` are left as they are.
#[allow(clippy::too_many_arguments)]
fn transpose_k_tile(
    k: &[f32],
    first: usize,
    key_stride: usize,
    len: usize,
    d: usize,
    bn: usize,
    dims: &[usize],
    dst: &mut [f32],
) {
    let path = SimdPath::active();
    let row = |j: usize| first * d + j * key_stride;
    let mut j8 = 0;
    while j8 + 8 <= len {
        let bases: [usize; 8] = std::array::from_fn(|i| row(j8 + i));
        let done = simd::gather_kt8(path, k, &bases, dims, dst, bn, j8);
        for (i, &b) in bases.iter().enumerate() {
            for dd in done..d {
                dst[dd * bn + j8 + i] = k[b + dd];
            }
        }
        j8 += 8;
    }
    for j in j8..len {
        let kr = &k[row(j)..][..d];
        for (dd, &x) in kr.iter().enumerate() {
            dst[dd * bn + j] = x;
        }
    }
}

/// One row's scores of a tile whose first key is `j0`, in place over its
/// dot products: `S = score(dot, bias)` for the keys the row at key-space
/// position `pi` sees, -inf for the others. FA's mask is one interval of
/// keys ([`visible`]: causal `t <= pi`, window `pi - t < W`; a row before
/// the first key sees nothing when causal, everything otherwise); the
/// bias is ALiBi's `-slope * |pi - t|`, else 0.
fn score_row(
    s: &mut [f32],
    j0: usize,
    pi: i64,
    causal: bool,
    window: Option<usize>,
    score: &ScoreParams,
    slope: Option<f32>,
) {
    let n = s.len() as i64;
    // Visible keys j0 + [va, vb).
    let (lo, hi) = if pi < 0 {
        match causal {
            true => (0, 0),
            false => (j0 as i64, j0 as i64 + n),
        }
    } else {
        let lo = window.map_or(0, |w| pi + 1 - w as i64);
        let hi = if causal { pi + 1 } else { j0 as i64 + n };
        (lo, hi)
    };
    let va = (lo - j0 as i64).clamp(0, n) as usize;
    let vb = (hi - j0 as i64).clamp(va as i64, n) as usize;
    debug_assert!((0..s.len()).all(|j| {
        let t = j0 + j;
        let vis = if pi < 0 {
            !causal
        } else {
            visible(t, pi as usize, causal, window)
        };
        vis == (va..vb).contains(&j)
    }));
    s[..va].fill(f32::NEG_INFINITY);
    s[vb..].fill(f32::NEG_INFINITY);
    match slope {
        None => s[va..vb].iter_mut().for_each(|x| *x = score.score(*x, 0.0)),
        Some(a) => {
            for (j, x) in s.iter_mut().enumerate().take(vb).skip(va) {
                let t = (j0 + j) as i64;
                *x = score.score(*x, -(a * (pi - t).abs() as f32));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q/K/V of `n` tokens, one head, head size 2, values exact in f16.
    fn qkv(n: usize) -> Vec<f32> {
        (0..n * 2)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.125)
            .collect()
    }

    #[test]
    fn single_key_returns_its_value_and_its_score_as_lse() {
        let (q, k, v) = (vec![1.0, 0.5], vec![0.5, 2.0], vec![0.25, -3.0]);
        let p = VarlenParams::new(1, 1, 2, DType::F32, 1.0).unwrap();
        let r = flash_attn_varlen(&q, &k, &v, &[0, 1], &[0, 1], &p).unwrap();
        assert_eq!(r.out(), vec![0.25, -3.0]);
        assert!((r.lse()[0] - 1.5).abs() < 1e-6, "{}", r.lse()[0]);
    }

    #[test]
    fn causal_is_bottom_right_aligned() {
        // sq = 2, sk = 3: row 0 sees keys 0..=1, row 1 sees all three.
        let x = qkv(3);
        let p = VarlenParams::new(1, 1, 2, DType::F32, 0.5).unwrap();
        let r = flash_attn_varlen(&x[2..], &x, &x, &[0, 2], &[0, 3], &p).unwrap();
        let only_two = flash_attn_varlen(
            &x[2..4],
            &x[..4],
            &x[..4],
            &[0, 1],
            &[0, 2],
            &super::VarlenParamsBuilder {
                causal: false,
                ..p.to_builder()
            }
            .build()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(&r.out()[..2], only_two.out());
        assert_eq!(r.lse()[0], only_two.lse()[0]);
    }

    #[test]
    fn rows_with_no_visible_key_give_zero_and_minus_inf() {
        // sq = 3 > sk = 1, causal: rows 0 and 1 sit before the first key.
        let x = qkv(3);
        let p = VarlenParams::new(1, 1, 2, DType::F16, 0.5).unwrap();
        let r = flash_attn_varlen(&x, &x[..2], &x[..2], &[0, 3], &[0, 1], &p).unwrap();
        assert_eq!(&r.out()[..4], &[0.0; 4]);
        assert_eq!(&r.lse()[..2], &[f32::NEG_INFINITY; 2]);
        assert!(r.lse()[2].is_finite());
    }

    #[test]
    fn tile_size_changes_only_rounding() {
        let x = qkv(300);
        let p = VarlenParams::new(1, 1, 2, DType::F32, 0.5).unwrap();
        let a = flash_attn_varlen(&x, &x, &x, &[0, 300], &[0, 300], &p).unwrap();
        let b = flash_attn_varlen(
            &x,
            &x,
            &x,
            &[0, 300],
            &[0, 300],
            &super::VarlenParamsBuilder {
                block_n: 7,
                ..p.to_builder()
            }
            .build()
            .unwrap(),
        )
        .unwrap();
        for (x, y) in a.out().iter().zip(b.out()) {
            approx::assert_abs_diff_eq!(x, y, epsilon = 1e-5);
        }
    }

    #[test]
    fn rejects_bad_cu_seqlens_naming_the_entry() {
        let x = qkv(2);
        let p = VarlenParams::new(1, 1, 2, DType::F32, 1.0).unwrap();
        let e = flash_attn_varlen(&x, &x, &x, &[0, 2, 1], &[0, 1, 2], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cu_seqlens_q[2]"), "{e}");
        let e = flash_attn_varlen(&x, &x, &x, &[0, 3], &[0, 2], &p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("q length"), "{e}");
        // Parameters that do not fit the heads never reach the kernel.
        let e = super::VarlenParamsBuilder {
            sinks: Some(&[0.0, 1.0]),
            ..p.to_builder()
        }
        .build()
        .unwrap_err()
        .to_string();
        assert!(e.contains("sinks length"), "{e}");
    }
}
