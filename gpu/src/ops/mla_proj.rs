//! Launchers for `kernels/mla_proj.hip`, mirroring
//! `attnlab_sim::kernels::mla_proj` (`up_project`, `absorb_query`,
//! `project_output`): each projection is the kernel's one strided batched
//! GEMM (`ProjGemm`), every output one fma chain over the reduction index
//! ascending from 0, rounded once to the activation dtype.
//!
//! Inputs travel in the activation dtype, so every input value must be exact
//! in it (the sim's contract: activations and `kv_b_proj` are stored
//! values); a value that is not is rejected, naming it.

use super::unified_attention::to_u32;
use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of};
use crate::runtime::params::{param_block, ParamBlock};
use crate::runtime::{Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_shared::model::MlaDims;
use attnlab_sim::kernels::mla_proj::{MlaWeights, ProjArgs, Projection};

param_block! {
    /// `ProjGemm` of `kernels/mla_proj.hip` (the kernel's own field names).
    #[allow(non_snake_case)]
    pub struct ProjParams as "ProjGemm" {
        M: i64,
        N: i64,
        K: i64,
        a_sh: i64,
        a_sm: i64,
        a_sk: i64,
        b_off: i64,
        b_sh: i64,
        b_sk: i64,
        b_sn: i64,
        o_sh: i64,
        o_sm: i64,
    }
}

/// Output tile edge of the kernel (`PROJ_TM` = `PROJ_TN`).
const TILE: usize = 64;
/// Threads per block (`PROJ_THREADS`).
const THREADS: u32 = 256;
/// CUDA's limit on grid.y / grid.z.
const GRID_YZ_MAX: usize = 65535;

/// `out[h, m, n] = round(sum_k A[h, m, k] * B[h, k, n])`, element strides
/// (B starts `b_off` elements into its buffer; out rows are contiguous in n).
#[derive(Debug, Clone, Copy)]
struct ProjGemm {
    h: usize,
    m: usize,
    n: usize,
    k: usize,
    a_sh: usize,
    a_sm: usize,
    a_sk: usize,
    b_off: usize,
    b_sh: usize,
    b_sk: usize,
    b_sn: usize,
    o_sh: usize,
    o_sm: usize,
}

impl ProjGemm {
    /// `kv_b_proj`: A = kv_c `[T, Lkv]`, `B[k, r] = W[r, k]`, out `[T, N(P+V)]`.
    fn kv_b_proj(d: MlaDims, heads: usize, t: usize) -> Self {
        let (lkv, rows) = (d.kv_lora_rank, heads * (d.qk_nope_head_dim + d.v_head_dim));
        ProjGemm {
            h: 1,
            m: t,
            n: rows,
            k: lkv,
            a_sh: 0,
            a_sm: lkv,
            a_sk: 1,
            b_off: 0,
            b_sh: 0,
            b_sk: 1,
            b_sn: lkv,
            o_sh: 0,
            o_sm: rows,
        }
    }

    /// W_UK absorption per head n: A = q_nope `[B, n, P]` (rows of P + R),
    /// `B[p, c] = W[n(P+V)+p, c]`, out ql_nope `[B, N, Lkv]`.
    fn absorb(d: MlaDims, heads: usize, b: usize) -> Self {
        let (lkv, pn, r, vd) = (
            d.kv_lora_rank,
            d.qk_nope_head_dim,
            d.qk_rope_head_dim,
            d.v_head_dim,
        );
        ProjGemm {
            h: heads,
            m: b,
            n: lkv,
            k: pn,
            a_sh: pn + r,
            a_sm: heads * (pn + r),
            a_sk: 1,
            b_off: 0,
            b_sh: (pn + vd) * lkv,
            b_sk: lkv,
            b_sn: 1,
            o_sh: lkv,
            o_sm: heads * lkv,
        }
    }

    /// W_UV per head n: A = o_latent `[B, n, Lkv]`, `B[c, i] = W[n(P+V)+P+i, c]`,
    /// out `[B, N, V]`.
    fn w_uv(d: MlaDims, heads: usize, b: usize) -> Self {
        let (lkv, pn, vd) = (d.kv_lora_rank, d.qk_nope_head_dim, d.v_head_dim);
        ProjGemm {
            h: heads,
            m: b,
            n: vd,
            k: lkv,
            a_sh: lkv,
            a_sm: heads * lkv,
            a_sk: 1,
            b_off: pn * lkv,
            b_sh: (pn + vd) * lkv,
            b_sk: 1,
            b_sn: lkv,
            o_sh: vd,
            o_sm: heads * vd,
        }
    }
}

/// Rejects a value that is not a stored value of `dtype`.
fn check_exact(what: &str, xs: &[f32], dtype: DType) -> Result<()> {
    if let Some((i, &x)) = xs
        .iter()
        .enumerate()
        .find(|(_, &x)| !x.is_nan() && dtype.round(x).to_bits() != x.to_bits())
    {
        return Err(Error::invalid(
            format!("{what}[{i}]"),
            x,
            format!("values exact in the activation dtype {dtype}"),
        )
        .into());
    }
    Ok(())
}

/// The device's own precondition on validated [`ProjArgs`] built for
/// `proj`: the weight and input are uploaded in the activation dtype's
/// storage format, so every value must be exact in it (the emulator reads
/// the f32 values as they are). Returns the dims.
fn check_upload(args: &ProjArgs, proj: Projection, what: &str) -> Result<MlaDims> {
    args.expect(proj)?;
    let (w, dtype) = (args.weights(), args.dtype());
    check_exact("kv_b_proj", w.kv_b_proj(), dtype)?;
    check_exact(what, args.x(), dtype)?;
    Ok(w.dims())
}

/// Uploads `a` and the weight, runs the GEMM, returns `out` bits (`len` elements).
fn gemm(
    gpu: &Gpu,
    a: &[f32],
    w: &MlaWeights,
    g: ProjGemm,
    dtype: DType,
    len: usize,
) -> Result<Vec<u32>> {
    if len == 0 || g.m == 0 {
        return Ok(vec![0; len]);
    }
    let (gy, gz) = (g.m.div_ceil(TILE), g.h);
    if gy > GRID_YZ_MAX || gz > GRID_YZ_MAX {
        return Err(Error::invalid(
            "projection rows / heads",
            format!("{} / {}", g.m, g.h),
            format!(
                "at most {} rows and {GRID_YZ_MAX} heads per launch",
                GRID_YZ_MAX * TILE
            ),
        )
        .into());
    }
    let dev = gpu.dev.as_ref();
    let a_b = Buffer::from_bytes(dev, &bytes_of(a, dtype))?;
    let w_b = Buffer::from_bytes(dev, &bytes_of(w.kv_b_proj(), dtype))?;
    let out = Buffer::zeroed(dev, len * dtype.size_bytes())?;
    let args = ProjParams {
        M: g.m as i64,
        N: g.n as i64,
        K: g.k as i64,
        a_sh: g.a_sh as i64,
        a_sm: g.a_sm as i64,
        a_sk: g.a_sk as i64,
        b_off: g.b_off as i64,
        b_sh: g.b_sh as i64,
        b_sk: g.b_sk as i64,
        b_sn: g.b_sn as i64,
        o_sh: g.o_sh as i64,
        o_sm: g.o_sm as i64,
    }
    .arg();
    let f = gpu.function("mla_proj", &[dtype_define("DTYPE", dtype)], "mla_proj_gemm")?;
    let dims = LaunchDims {
        grid: [
            to_u32(g.n.div_ceil(TILE), "projection columns")?,
            gy as u32,
            gz as u32,
        ],
        block: [THREADS, 1, 1],
        shared_bytes: 0,
    };
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe { dev.launch(f, dims, &[a_b.arg(), w_b.arg(), out.arg(), args]) }?;
    Ok(bits_from_bytes(&out.to_bytes()?, dtype))
}

/// `kv_b_proj(kv_c)`: `[T, Lkv]` -> (`k_nope [T, N, P]`, `v [T, N, V]`) bits
/// in `dtype`: the GEMM writes vLLM's `[T, N, P + V]` and the host splits it
/// (`kv.view(-1, N, P + V).split([P, V])`).
pub fn up_project(gpu: &Gpu, args: &ProjArgs) -> Result<(Vec<u32>, Vec<u32>)> {
    let d = check_upload(args, Projection::KvUp, "kv_c")?;
    let (kv_c, w, dtype) = (args.x(), args.weights(), args.dtype());
    let (lkv, pn, vd) = (d.kv_lora_rank, d.qk_nope_head_dim, d.v_head_dim);
    let t = kv_c.len() / lkv;
    let rows = w.num_heads() * (pn + vd);
    let g = ProjGemm::kv_b_proj(d, w.num_heads(), t);
    let kv = gemm(gpu, kv_c, w, g, dtype, t * rows)?;
    let (mut k_nope, mut v) = (
        Vec::with_capacity(t * w.num_heads() * pn),
        Vec::with_capacity(t * w.num_heads() * vd),
    );
    for head in kv.chunks_exact(pn + vd) {
        k_nope.extend_from_slice(&head[..pn]);
        v.extend_from_slice(&head[pn..]);
    }
    Ok((k_nope, v))
}

/// The absorbed decode query: `q [B, N, P + R]` -> `mqa_q [B, N, Lkv + R]`
/// bits = `[q_nope @ W_UK_T | q_pe]` (the bmm on the device, the
/// `torch.cat` with the untouched `q_pe` on the host).
pub fn absorb_query(gpu: &Gpu, args: &ProjArgs) -> Result<Vec<u32>> {
    let d = check_upload(args, Projection::AbsorbQuery, "query")?;
    let (q, w, dtype) = (args.x(), args.weights(), args.dtype());
    let (lkv, pn, r, n) = (
        d.kv_lora_rank,
        d.qk_nope_head_dim,
        d.qk_rope_head_dim,
        w.num_heads(),
    );
    let b = q.len() / (n * (pn + r));
    let g = ProjGemm::absorb(d, n, b);
    let ql = gemm(gpu, q, w, g, dtype, b * n * lkv)?;
    let mut out = Vec::with_capacity(b * n * (lkv + r));
    for (ql_nope, qh) in ql.chunks_exact(lkv).zip(q.chunks_exact(pn + r)) {
        out.extend_from_slice(ql_nope);
        out.extend(qh[pn..].iter().map(|&x| dtype.to_bits(x)));
    }
    Ok(out)
}

/// `out[b, n] = o_latent[b, n] @ W_UV[n]`: `[B, N, Lkv]` -> `[B, N, V]` bits.
pub fn project_output(gpu: &Gpu, args: &ProjArgs) -> Result<Vec<u32>> {
    let d = check_upload(args, Projection::Output, "latent attention output")?;
    let (o_latent, w, dtype) = (args.x(), args.weights(), args.dtype());
    let (lkv, vd, n) = (d.kv_lora_rank, d.v_head_dim, w.num_heads());
    let b = o_latent.len() / (n * lkv);
    let g = ProjGemm::w_uv(d, n, b);
    gemm(gpu, o_latent, w, g, dtype, b * n * vd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab_sim::kernels::mla_proj as sim;

    /// What `mla_proj_gemm` computes for `g`, element by element (the
    /// kernel's header contract), without a device.
    fn contract(g: &ProjGemm, a: &[f32], b: &[f32], dtype: DType) -> Vec<f32> {
        // Heads interleave within a row of `o_sm`: the launches here write `[M, ...]`.
        let mut out = vec![f32::NAN; g.m * g.o_sm];
        for h in 0..g.h {
            for m in 0..g.m {
                for n in 0..g.n {
                    let acc = (0..g.k).fold(0.0f32, |acc, k| {
                        let x = a[h * g.a_sh + m * g.a_sm + k * g.a_sk];
                        x.mul_add(b[g.b_off + h * g.b_sh + k * g.b_sk + n * g.b_sn], acc)
                    });
                    out[h * g.o_sh + m * g.o_sm + n] = dtype.round(acc);
                }
            }
        }
        out
    }

    #[test]
    fn each_projections_strides_reproduce_the_sims_chains_bit_for_bit() {
        let d = MlaDims {
            kv_lora_rank: 12,
            qk_rope_head_dim: 4,
            qk_nope_head_dim: 5,
            v_head_dim: 3,
        };
        let (heads, t, dt) = (3, 4, DType::Bf16);
        let w = MlaWeights::random(heads, d, dt, 3).unwrap();
        let vals = |n: usize, s: f32| -> Vec<f32> {
            (0..n)
                .map(|i| dt.round(((i * 37 % 23) as f32 - 11.0) * s))
                .collect()
        };
        let kv_c = vals(t * d.kv_lora_rank, 0.1);
        let (k_nope, v) = sim::up_project(&kv_c, &w, dt).unwrap();
        let kv = contract(&ProjGemm::kv_b_proj(d, heads, t), &kv_c, w.kv_b_proj(), dt);
        let split: Vec<(Vec<f32>, Vec<f32>)> = kv
            .chunks_exact(8)
            .map(|h| (h[..5].to_vec(), h[5..].to_vec()))
            .collect();
        assert_eq!(
            split.iter().flat_map(|s| s.0.clone()).collect::<Vec<_>>(),
            k_nope
        );
        assert_eq!(
            split.iter().flat_map(|s| s.1.clone()).collect::<Vec<_>>(),
            v
        );

        let q = vals(t * heads * 9, 0.07);
        let mqa_q = sim::absorb_query(&q, &w, dt).unwrap();
        let ql = contract(&ProjGemm::absorb(d, heads, t), &q, w.kv_b_proj(), dt);
        let ql_sim: Vec<f32> = mqa_q
            .chunks_exact(16)
            .flat_map(|r| r[..12].to_vec())
            .collect();
        assert_eq!(ql, ql_sim);

        let o = vals(t * heads * d.kv_lora_rank, 0.05);
        let out = sim::project_output(&o, &w, dt).unwrap();
        assert_eq!(
            contract(&ProjGemm::w_uv(d, heads, t), &o, w.kv_b_proj(), dt),
            out
        );
    }
}
