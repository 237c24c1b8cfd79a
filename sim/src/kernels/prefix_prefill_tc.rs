//! Prefix prefill on matrix cores: the tensor-core flavour of
//! [`super::prefix_prefill`] (vLLM's Triton `context_attention_fwd`:
//! `_fwd_kernel`, and `_fwd_kernel_alibi` with ALiBi, what ROCM_ATTN runs
//! for every request with query_len > 1). The same call ([`PrefixArgs`]:
//! the paged cache in any layout, ROCM_ATTN's x-packed K and transposed V
//! included, `skip_decode`, the variant's tiles), the same two phases,
//! masks, sinks, ALiBi, sliding window and soft-cap, with Q·Kᵀ and P·V
//! computed by the target's matrix instruction as [`crate::numerics::mma`]
//! models it: `mma.sync m16n8k16` on NVIDIA (sm_90, 32-lane waves),
//! `v_mfma_f32_16x16x16{bf16_1k,f16}` on CDNA (64-lane waves). What it
//! computes is per target (numerics.md §6): each target's bits are those of
//! `kernels/prefix_prefill_tc.hip` run there.
//!
//! ## Work (what fixes the numbers)
//! A program is vLLM's: `(request b, query head h, start_m)`, rows `i` in
//! `[start_m * BLOCK_M, min((start_m + 1) * BLOCK_M, q_len))` of one head
//! (GQA by `kv_head = h / qpk`, no head packing). A wave owns 16 of its
//! rows and runs the program's loop, nothing else, so which waves share a
//! workgroup changes no bit. Per row, with `p = ctx + i` (`ctx = seq_len -
//! q_len`) and `TILE` the phase's tile (CTX_TILE = 32 and BLOCK_N = 64 for
//! `_fwd_kernel`; 128 and 128 for `_fwd_kernel_alibi`):
//! ```text
//! m = sink * LOG2E or -inf; l = 1 or 0; acc[d] = 0
//! (A) keys t = s + j of the cached context, s = 0, CTX_TILE, .. < ctx, j < CTX_TILE
//! (B) keys t = ctx + s + j of the new tokens, s = 0, BLOCK_N, .. < min(upper, q_len),
//!     upper = causal ? (start_m + 1) * BLOCK_M : round_up(q_len, BLOCK_N)
//! per tile (keys past the phase's end: K = V = 0 and masked):
//!   K, V rows of key t through the block table in the cache's layout; an fp8
//!   cache value becomes round_q(f32(x) * scale) (vLLM's `.to(q.dtype)`)
//!   S[j] = c, where c = +0, then for dc = 0, 16, .., D - 16:
//!          c = MMA(q[dc..dc+16] . k_t[dc..dc+16] + c)                 // chained along d
//!   s[j] = key valid and visible(t, p, causal in (B) only, window)
//!          ? score(S[j], bias) : -inf   (the fma family's score; ALiBi: bias =
//!          slope * (t - p), -inf where bias > 0, no window)
//!   m_new = max(m, max s); m_ref = m_new, or 0 if -inf; alpha = exp2c(m - m_ref)
//!   p[j] = exp2c(s[j] - m_ref)
//!   tile_sum: each of the row's 4 lane parts sums its keys ascending from j = 0,
//!             then (part0 + part2) + (part1 + part3)   (flash_varlen_tc::tile_sum)
//!   l = fma(l, alpha, tile_sum); m = m_new
//!   acc[d] = acc[d] * alpha
//!   for kc = 0, 16, .., TILE - 16:                                  // chained along keys
//!     acc[d] = MMA(round_q(p[kc..kc+16]) . v[kc..kc+16][d] + acc[d])
//! out = round_q(acc / (l + L_EPS))   (1e-10; 0 for the alibi kernel; a NaN is the canonical one)
//! ```
//! `MMA(a . b + c)` is one element of one instruction: the target's
//! [`Model::dot`] over 16 products. Every key of a tile enters P·V: masked
//! keys with p = 0 and their cache V, keys past the phase's end with p = 0
//! and V = 0. P is rounded to the query dtype before P·V (vLLM's
//! `p.to(v.dtype)`); acc is rescaled by alpha before it enters the
//! instruction as C. The lane parts follow the instruction's accumulator
//! layout (sm_90: `(j mod 8) / 2`; CDNA, which computes Sᵀ = K·Qᵀ: `(j mod
//! 16) / 4`).
//!
//! Differences from the fma family: bf16 or f16 queries only (the cache in
//! the query dtype or fp8); head sizes multiples of 16 up to
//! [`MAX_HEAD_SIZE`], with one tile of K or V (`TILE x (D + 8)` 16-bit
//! elements, the kernel's staging) within [`STAGE_LIMIT`] bytes.

use super::flash_varlen_tc::{tile_sum, MMA_K};
use super::prefix_prefill::{PrefixArgs, PrefixVariant};
use super::softmax::{dequant_kv, visible, ScoreParams};
use super::unified_attention::nan_fresh;
use crate::cache::KvCache;
use crate::config::AttnConfig;
use crate::numerics::mma::{InFormat, MatrixTarget, Model};
use crate::numerics::{exp2c, LOG2E};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::metadata::AttentionMetadata;
use rayon::prelude::*;

/// Rows of one instruction tile (a wave's share of a program).
pub const WAVE_ROWS: usize = 16;
/// Largest head size.
pub const MAX_HEAD_SIZE: usize = 256;
/// Bytes one staged tile of K or V may take: an AMD workgroup's LDS (and
/// the host device's), so every device runs what the sim admits.
pub const STAGE_LIMIT: usize = 64 * 1024;

/// Bytes of the kernel's staging buffer: one tile of `tile` keys, rows of
/// `d` 16-bit elements padded by 8.
pub fn stage_bytes(d: usize, tile: usize) -> usize {
    tile * (d + 8) * 2
}

/// The instruction's input format: the query dtype, bf16 or f16, with the
/// cache in the same dtype or fp8 (dequantised to the query dtype on load).
pub fn tc_format(cfg: &AttnConfig) -> Result<InFormat> {
    let f = match cfg.dtype() {
        DType::Bf16 => InFormat::Bf16,
        DType::F16 => InFormat::F16,
        other => {
            return Err(Error::invalid(
                "prefix_prefill_tc dtype",
                other.name(),
                "bf16 or f16",
            ))
        }
    };
    if cfg.kv_dtype() != cfg.dtype() && !cfg.kv_dtype().is_fp8() {
        return Err(Error::invalid(
            "prefix_prefill_tc KV cache dtype",
            cfg.kv_dtype().name(),
            format!("the query dtype {} or an fp8 cache", cfg.dtype().name()),
        ));
    }
    Ok(f)
}

/// What the matrix tiles add to [`PrefixArgs`]' own checks: the dtypes,
/// the head size, and the staging of the variant's largest tile.
pub fn validate_config(cfg: &AttnConfig, variant: &PrefixVariant) -> Result<InFormat> {
    let fmt = tc_format(cfg)?;
    let d = cfg.head_size();
    if d == 0 || !d.is_multiple_of(MMA_K) || d > MAX_HEAD_SIZE {
        return Err(Error::invalid(
            "prefix_prefill_tc head_size",
            d,
            format!("a multiple of {MMA_K} from {MMA_K} to {MAX_HEAD_SIZE} (the matrix tiles)"),
        ));
    }
    let tile = variant.ctx_tile.max(variant.block_n);
    let bytes = stage_bytes(d, tile);
    if bytes > STAGE_LIMIT {
        return Err(Error::invalid(
            format!(
                "prefix_prefill_tc staging of one {}-key tile of {} (head size {d})",
                tile, variant.kernel
            ),
            bytes,
            format!("at most {STAGE_LIMIT} bytes: TILE x (head_size + 8) x 2"),
        ));
    }
    if !variant.block_m.is_multiple_of(WAVE_ROWS) {
        return Err(Error::invalid(
            "prefix_prefill_tc BLOCK_M",
            variant.block_m,
            format!("a multiple of {WAVE_ROWS}"),
        ));
    }
    Ok(fmt)
}

/// One program's key tile: its first key, the keys that exist, its size,
/// and whether the causal mask applies.
#[derive(Clone, Copy)]
struct TileKeys {
    t0: usize,
    n: usize,
    size: usize,
    causal: bool,
}

/// A row's state: (m, l, acc).
struct Row {
    m: f32,
    l: f32,
    acc: Vec<f32>,
}

struct Kernel<'a> {
    query: &'a [f32],
    cache: &'a KvCache,
    meta: &'a AttentionMetadata,
    cfg: &'a AttnConfig,
    variant: PrefixVariant,
    fmt: InFormat,
    model: Model,
    target: MatrixTarget,
    params: ScoreParams,
}

impl Kernel<'_> {
    /// The tiles of program `(b, start_m)`: phase (A), then phase (B).
    fn tiles(&self, b: usize, start_m: usize) -> Vec<TileKeys> {
        let v = &self.variant;
        let (ql, ctx) = (self.meta.query_len(b), self.meta.context_len(b));
        let mut tiles: Vec<TileKeys> = (0..ctx)
            .step_by(v.ctx_tile)
            .map(|s| TileKeys {
                t0: s,
                n: v.ctx_tile.min(ctx - s),
                size: v.ctx_tile,
                causal: false,
            })
            .collect();
        let causal = self.meta.causal();
        let upper = if causal {
            (start_m + 1) * v.block_m
        } else {
            ql.next_multiple_of(v.block_n)
        };
        tiles.extend((0..upper.min(ql)).step_by(v.block_n).map(|s| TileKeys {
            t0: ctx + s,
            n: v.block_n.min(ql - s),
            size: v.block_n,
            causal,
        }));
        tiles
    }

    /// Program `(b, head, start_m)`: (first token, head, rows x D output).
    fn program(&self, b: usize, head: usize, start_m: usize) -> (usize, usize, Vec<f32>) {
        let (meta, cfg, fmt, v) = (self.meta, self.cfg, self.fmt, &self.variant);
        let (hq, d) = (cfg.num_heads(), cfg.head_size());
        let (ql, ctx) = (meta.query_len(b), meta.context_len(b));
        let kv_head = head / cfg.queries_per_kv();
        let rows = start_m * v.block_m..((start_m + 1) * v.block_m).min(ql);
        let first_token = meta.query_range(b).start + rows.start;
        let slope = cfg.alibi_slopes().as_ref().map(|s| s[head]);
        // The alibi kernel applies no sliding window.
        let window = if slope.is_some() {
            None
        } else {
            cfg.sliding_window()
        };
        let sink = cfg.sinks().as_ref().map(|s| s[head]);
        let q: Vec<Vec<u16>> = (0..rows.len())
            .map(|r| {
                let t = first_token + r;
                self.query[(t * hq + head) * d..][..d]
                    .iter()
                    .map(|&x| fmt.from_f32(x))
                    .collect()
            })
            .collect();
        let mut states: Vec<Row> = rows
            .clone()
            .map(|_| match sink {
                Some(s) => Row {
                    m: s * LOG2E,
                    l: 1.0,
                    acc: vec![0.0; d],
                },
                None => Row {
                    m: f32::NEG_INFINITY,
                    l: 0.0,
                    acc: vec![0.0; d],
                },
            })
            .collect();
        let layout = &self.cache.layout;
        let cap = v.ctx_tile.max(v.block_n);
        // K tile [key][d] and V tile transposed [d][key], storage bits.
        let mut kt = vec![0u16; cap * d];
        let mut vt = vec![0u16; d * cap];
        let mut s = vec![0.0f32; cap];
        let mut pr = vec![0u16; cap];
        for tk in self.tiles(b, start_m) {
            let size = tk.size;
            kt[..size * d].fill(0);
            vt[..size * d].fill(0);
            for j in 0..tk.n {
                let (blk, r) = meta.kv_location(b, tk.t0 + j);
                for dd in 0..d {
                    let k = self.cache.k[layout.k_offset(blk, r, kv_head, dd)];
                    let x = self.cache.v[layout.v_offset(blk, r, kv_head, dd)];
                    kt[j * d + dd] =
                        fmt.from_f32(dequant_kv(k, cfg.k_scale(), cfg.kv_dtype(), cfg.dtype()));
                    vt[dd * size + j] =
                        fmt.from_f32(dequant_kv(x, cfg.v_scale(), cfg.kv_dtype(), cfg.dtype()));
                }
            }
            let s = &mut s[..size];
            let pr = &mut pr[..size];
            for (i, (qr, st)) in rows.clone().zip(q.iter().zip(states.iter_mut())) {
                let p = ctx + i;
                for (j, sj) in s.iter_mut().enumerate() {
                    let t = tk.t0 + j;
                    let bias = slope.map(|sl| sl * (t as f32 - p as f32));
                    // A masked key's S is computed by the GPU and then
                    // replaced: only visible keys need the chain here.
                    *sj = if j < tk.n
                        && visible(t, p, tk.causal, window)
                        && bias.is_none_or(|x| x <= 0.0)
                    {
                        let kr = &kt[j * d..(j + 1) * d];
                        let mut c = 0.0f32;
                        for dc in (0..d).step_by(MMA_K) {
                            c = self
                                .model
                                .dot(fmt, &qr[dc..dc + MMA_K], &kr[dc..dc + MMA_K], c);
                        }
                        self.params.score(c, bias.unwrap_or(0.0))
                    } else {
                        f32::NEG_INFINITY
                    };
                }
                let tile_max = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let m_new = st.m.max(tile_max);
                let m_ref = if m_new > f32::NEG_INFINITY {
                    m_new
                } else {
                    0.0
                };
                let alpha = exp2c(st.m - m_ref);
                for sj in s.iter_mut() {
                    *sj = exp2c(*sj - m_ref);
                }
                let sum = tile_sum(self.target, s);
                st.l = st.l.mul_add(alpha, sum);
                st.m = m_new;
                for (b, &x) in pr.iter_mut().zip(s.iter()) {
                    *b = fmt.from_f32(x);
                }
                for (c, a) in st.acc.iter_mut().enumerate() {
                    let mut z = *a * alpha;
                    for kc in (0..size).step_by(MMA_K) {
                        z = self.model.dot(
                            fmt,
                            &pr[kc..kc + MMA_K],
                            &vt[c * size + kc..c * size + kc + MMA_K],
                            z,
                        );
                    }
                    *a = z;
                }
            }
        }
        let mut data = Vec::with_capacity(rows.len() * d);
        for st in &states {
            let denom = st.l + v.l_eps;
            data.extend(
                st.acc
                    .iter()
                    .map(|a| cfg.dtype().round(nan_fresh(a / denom))),
            );
        }
        (first_token, head, data)
    }
}

/// `context_attention_fwd` on `target`'s matrix cores over validated
/// arguments: writes the output rows of every request the launch owns
/// (query_len > 1, and 1 too unless `skip_decode`) into `out` (`[T, Hq,
/// D]`, values exact in the query dtype); other rows are left untouched.
pub fn context_attention_tc(
    args: &PrefixArgs,
    target: MatrixTarget,
    out: &mut [f32],
) -> Result<()> {
    let inputs = args.inputs();
    inputs.check_out(out)?;
    let (query, cache, meta, cfg) = (inputs.query(), inputs.cache(), inputs.meta(), inputs.cfg());
    let variant = args.variant();
    let fmt = validate_config(cfg, &variant)?;
    let k = Kernel {
        query,
        cache,
        meta,
        cfg,
        variant,
        fmt,
        model: target.model(fmt),
        target,
        params: ScoreParams::new(cfg.scale(), cfg.softcap()),
    };
    let (hq, d) = (cfg.num_heads(), cfg.head_size());
    let skip_decode = args.skip_decode();
    let programs: Vec<(usize, usize, usize)> = (0..meta.num_reqs())
        .filter(|&b| meta.query_len(b) > 0 && !(skip_decode && meta.query_len(b) == 1))
        .flat_map(|b| {
            (0..meta.query_len(b).div_ceil(variant.block_m))
                .flat_map(move |m| (0..hq).map(move |h| (b, h, m)))
        })
        .collect();
    let results: Vec<(usize, usize, Vec<f32>)> = programs
        .par_iter()
        .map(|&(b, h, m)| k.program(b, h, m))
        .collect();
    for (first, h, data) in results {
        for (i, row) in data.chunks_exact(d).enumerate() {
            let base = ((first + i) * hq + h) * d;
            out[base..base + d].copy_from_slice(row);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::paged_decode::PagedInputs;
    use crate::kernels::prefix_prefill::context_attention;
    use attnlab_shared::layout::LayoutKind;
    use proptest::prelude::*;

    /// Requests `(ctx, q)` in reversed (non-contiguous) blocks of a cache in
    /// `kind`'s layout, deterministic data exact in the dtypes.
    fn batch(
        cfg: &AttnConfig,
        kind: LayoutKind,
        block_size: usize,
        reqs: &[(usize, usize)],
    ) -> (Vec<f32>, KvCache, AttentionMetadata) {
        crate::kernels::test_batch::reversed_blocks(
            cfg,
            kind,
            block_size,
            reqs,
            false,
            cfg.kv_dtype(),
        )
    }

    fn run(
        q: &[f32],
        cache: &KvCache,
        meta: &AttentionMetadata,
        cfg: &AttnConfig,
        skip_decode: bool,
        target: Option<MatrixTarget>,
        init: f32,
    ) -> Result<Vec<f32>> {
        let args = PrefixArgs::new(PagedInputs::new(q, cache, meta, cfg)?, skip_decode)?;
        let mut out = vec![init; q.len()];
        match target {
            Some(t) => context_attention_tc(&args, t, &mut out)?,
            None => context_attention(&args, &mut out)?,
        }
        Ok(out)
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn agrees_with_the_fma_kernel_within_rounding_in_both_variants_and_layouts() {
        let base = AttnConfig::new(4, 2, 64, DType::Bf16).unwrap();
        let configs = [
            crate::config::AttnConfigBuilder {
                sinks: Some(vec![0.5, -1.0, 0.25, 2.0]),
                sliding_window: Some(40),
                ..base.to_builder()
            }
            .build()
            .unwrap(),
            crate::config::AttnConfigBuilder {
                alibi_slopes: Some(vec![0.5, 0.25, 0.125, 0.0625]),
                ..base.to_builder()
            }
            .build()
            .unwrap(),
            crate::config::AttnConfigBuilder {
                softcap: Some(10.0),
                kv_dtype: DType::Fp8E4m3Fnuz,
                k_scale: 0.5,
                v_scale: 0.25,
                ..AttnConfig::builder(4, 2, 64, DType::F16)
            }
            .build()
            .unwrap(),
        ];
        for cfg in &configs {
            for kind in [LayoutKind::RocmPaged, LayoutKind::Nhd] {
                // context over several tiles, a query over two BLOCK_M programs
                let (q, cache, meta) = batch(cfg, kind, 16, &[(70, 140), (0, 9), (33, 1)]);
                let fma = run(&q, &cache, &meta, cfg, true, None, 0.0).unwrap();
                for t in MatrixTarget::ALL {
                    let tc = run(&q, &cache, &meta, cfg, true, Some(t), 0.0).unwrap();
                    crate::kernels::test_batch::assert_within_rounding(
                        &tc,
                        &fma,
                        &format!("{} {kind:?}", t.name()),
                    );
                }
            }
        }
    }

    #[test]
    fn a_single_visible_key_returns_its_value_on_every_target() {
        // One new token, no context: it sees only itself, so out = V[0]
        // (l = 1 + 1e-10 rounds to 1).
        let cfg = AttnConfig::new(2, 1, 16, DType::Bf16).unwrap();
        let (q, cache, meta) = batch(&cfg, LayoutKind::RocmPaged, 16, &[(0, 2)]);
        let v0: Vec<f32> = (0..16)
            .map(|dd| cache.v[cache.layout.v_offset(meta.kv_location(0, 0).0, 0, 0, dd)])
            .collect();
        for t in MatrixTarget::ALL {
            let out = run(&q, &cache, &meta, &cfg, true, Some(t), 0.0).unwrap();
            assert_eq!(&out[..16], &v0[..], "{}", t.name());
            assert_eq!(&out[16..32], &v0[..], "{}", t.name());
        }
    }

    #[test]
    fn skip_decode_leaves_decode_rows_untouched_and_the_layout_changes_no_bit() {
        let cfg = AttnConfig::new(2, 1, 32, DType::F16).unwrap();
        let reqs = [(20, 1), (45, 17)];
        let (q, paged, meta) = batch(&cfg, LayoutKind::RocmPaged, 16, &reqs);
        let (_, nhd, _) = batch(&cfg, LayoutKind::Nhd, 16, &reqs);
        // The same logical cache in two layouts (values by logical position).
        let mut nhd = nhd;
        for blk in 0..paged.layout.num_blocks {
            for r in 0..16 {
                for dd in 0..32 {
                    nhd.k[nhd.layout.k_offset(blk, r, 0, dd)] =
                        paged.k[paged.layout.k_offset(blk, r, 0, dd)];
                    nhd.v[nhd.layout.v_offset(blk, r, 0, dd)] =
                        paged.v[paged.layout.v_offset(blk, r, 0, dd)];
                }
            }
        }
        for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
            let a = run(&q, &paged, &meta, &cfg, true, Some(t), -7.0).unwrap();
            assert!(a[..64].iter().all(|&x| x == -7.0), "{}", t.name());
            assert!(a[64..].iter().all(|&x| x != -7.0), "{}", t.name());
            let b = run(&q, &nhd, &meta, &cfg, true, Some(t), -7.0).unwrap();
            assert_eq!(bits(&a), bits(&b), "{}", t.name());
            let c = run(&q, &paged, &meta, &cfg, false, Some(t), -7.0).unwrap();
            assert!(c.iter().all(|&x| x != -7.0), "{}", t.name());
        }
    }

    #[test]
    fn the_targets_differ_in_bits_but_each_is_deterministic() {
        let cfg = AttnConfig::new(4, 1, 64, DType::Bf16).unwrap();
        let (q, cache, meta) = batch(&cfg, LayoutKind::RocmPaged, 16, &[(90, 60)]);
        let go = |t| run(&q, &cache, &meta, &cfg, true, Some(t), 0.0).unwrap();
        let (a, b) = (go(MatrixTarget::Sm90), go(MatrixTarget::Gfx942));
        assert_eq!(bits(&a), bits(&go(MatrixTarget::Sm90)));
        assert_ne!(
            bits(&a),
            bits(&b),
            "sm_90 truncates, gfx942 rounds to nearest"
        );
    }

    #[test]
    fn rejects_what_the_matrix_tiles_cannot_take_naming_the_value() {
        let err = |cfg: &AttnConfig| {
            let (q, cache, meta) = batch(cfg, LayoutKind::RocmPaged, 16, &[(4, 4)]);
            run(&q, &cache, &meta, cfg, true, Some(MatrixTarget::Sm90), 0.0)
                .unwrap_err()
                .to_string()
        };
        let e = err(&AttnConfig::new(2, 1, 24, DType::Bf16).unwrap());
        assert!(e.contains("head_size") && e.contains("24"), "{e}");
        let e = err(&AttnConfig::new(2, 1, 32, DType::F32).unwrap());
        assert!(e.contains("float32") && e.contains("bf16 or f16"), "{e}");
        let e = err(&crate::config::AttnConfigBuilder {
            kv_dtype: DType::F16,
            ..AttnConfig::builder(2, 1, 32, DType::Bf16)
        }
        .build()
        .unwrap());
        assert!(
            e.contains("KV cache dtype") && e.contains(DType::F16.name()),
            "{e}"
        );
        // ALiBi's 128-key tiles at head size 256: 128 x 264 x 2 bytes.
        let e = err(&crate::config::AttnConfigBuilder {
            alibi_slopes: Some(vec![0.5, 0.25]),
            ..AttnConfig::builder(2, 1, 256, DType::Bf16)
        }
        .build()
        .unwrap());
        assert!(
            e.contains("67584") && e.contains("_fwd_kernel_alibi"),
            "{e}"
        );
    }

    proptest! {
            #![proptest_config(ProptestConfig::with_cases(8))]
            /// Rows are independent: a row's bits do not depend on which other
            /// rows share its program, so a request's output rows equal the
            /// same rows computed with the request alone in the batch.
            #[test]
            fn a_requests_rows_do_not_depend_on_the_rest_of_the_batch(ctx in 0usize..60, ql in 2usize..40, other in 2usize..30, window in 0usize..20) {
                let cfg = crate::config::AttnConfigBuilder {
                    sliding_window: (window > 0).then_some(window),
                    ..AttnConfig::builder(2, 1, 32, DType::Bf16)
                }
    .build()
    .unwrap();
                let (q1, c1, m1) = batch(&cfg, LayoutKind::RocmPaged, 16, &[(ctx, ql)]);
                let (q2, c2, m2) = batch(&cfg, LayoutKind::RocmPaged, 16, &[(ctx, ql), (7, other)]);
                // batch() reverses the block order, so copy the request's logical
                // cache and query into the two-request batch.
                let mut c2 = c2;
                for t in 0..ctx + ql {
                    let (b1, r1) = m1.kv_location(0, t);
                    let (b2, r2) = m2.kv_location(0, t);
                    for dd in 0..32 {
                        c2.k[c2.layout.k_offset(b2, r2, 0, dd)] = c1.k[c1.layout.k_offset(b1, r1, 0, dd)];
                        c2.v[c2.layout.v_offset(b2, r2, 0, dd)] = c1.v[c1.layout.v_offset(b1, r1, 0, dd)];
                    }
                }
                let mut q2 = q2;
                q2[..q1.len()].copy_from_slice(&q1);
                for t in [MatrixTarget::Sm90, MatrixTarget::Gfx942] {
                    let a = run(&q1, &c1, &m1, &cfg, true, Some(t), 0.0).unwrap();
                    let b = run(&q2, &c2, &m2, &cfg, true, Some(t), 0.0).unwrap();
                    prop_assert_eq!(bits(&a), bits(&b[..a.len()]));
                }
            }
        }
}
