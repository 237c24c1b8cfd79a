//! The MLA projections around the attention kernels (vllm-backends.md §13.3-§13.5):
//! `kv_b_proj` up-projects the latent to per-head `k_nope` and `v` for the
//! non-absorbed prefill; its two halves `W_UK` / `W_UV` absorb the query into
//! latent space and project the latent attention output back for the absorbed
//! decode. On the GPU these are hipBLASLt GEMMs (`torch.bmm`, `nn.Linear`).
//!
//! Weight: `kv_b_proj [N * (P + V), Lkv]` (nn.Linear: out x in), head-major:
//! rows `n*(P+V) .. n*(P+V)+P` are head n's `W_UK` (vLLM's `W_UK[:, n, :]`
//! transposed), the next V rows its `W_UV`.
//!
//! ```text
//! kv_b_proj:  k_nope[t,n,i] = round(sum_c kv_c[t,c] * W[n(P+V)+i, c])       c ascending
//!             v[t,n,i]      = round(sum_c kv_c[t,c] * W[n(P+V)+P+i, c])
//! absorb:     ql_nope[b,n,c] = round(sum_p q_nope[b,n,p] * W[n(P+V)+p, c])  p ascending
//!             mqa_q[b,n] = [ql_nope[b,n] | q_pe[b,n]]                        (torch.cat)
//! W_UV:       out[b,n,i] = round(sum_c o_latent[b,n,c] * W[n(P+V)+P+i, c])   c ascending
//! ```
//! Each sum is one f32 fma chain from 0, rounded once to the activation dtype
//! (a GEMM's internal order is the library's; ours is fixed and documented).
//! Why the absorption is exact in real arithmetic: `q_nope . (W_UK c) =
//! (W_UK^T q_nope) . c`, so scoring the latent with the absorbed query equals
//! scoring the up-projected key; likewise `sum_t p_t (W_UV c_t) = W_UV sum_t p_t c_t`.

use attnlab_shared::dtype::DType;
use attnlab_shared::error::{Error, Result};
use attnlab_shared::model::MlaDims;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The GEMM micro-kernel of every MLA projection and of the decode QK is
/// the attention kernels' [`lane_dots`]: one f32 lane per output column,
/// an fma chain from 0 over the reduction index ascending.
use super::softmax::lane_dots;

/// The `kv_b_proj` weight of one layer, for `num_heads` heads (one TP rank's
/// heads after [`MlaWeights::shard`]).
///
/// # Invariants
///
/// The fields are private and [`MlaWeights::new`] checks them, so a
/// projection or GPU launch reads the weight without checking it again:
/// `num_heads`, `kv_lora_rank`, `qk_nope_head_dim` and `v_head_dim` are all
/// `>= 1`, and `kv_b_proj` holds exactly `[num_heads * (P + V), Lkv]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MlaWeights {
    num_heads: usize,
    dims: MlaDims,
    /// `[num_heads * (P + V), Lkv]`, exact in the activation dtype.
    kv_b_proj: Vec<f32>,
}

impl MlaWeights {
    /// Checks the invariants in the type's doc; the error names the bad
    /// dimension or length and what it must be.
    pub fn new(num_heads: usize, dims: MlaDims, kv_b_proj: Vec<f32>) -> Result<Self> {
        Self::check_shape(num_heads, dims)?;
        let rows = num_heads * (dims.qk_nope_head_dim + dims.v_head_dim);
        if kv_b_proj.len() != rows * dims.kv_lora_rank {
            return Err(Error::invalid(
                "kv_b_proj length",
                kv_b_proj.len(),
                format!(
                    "[{rows}, {}] needs {}",
                    dims.kv_lora_rank,
                    rows * dims.kv_lora_rank
                ),
            ));
        }
        Ok(MlaWeights {
            num_heads,
            dims,
            kv_b_proj,
        })
    }

    fn check_shape(num_heads: usize, dims: MlaDims) -> Result<()> {
        for (what, v) in [
            ("num_heads", num_heads),
            ("kv_lora_rank", dims.kv_lora_rank),
            ("qk_nope_head_dim", dims.qk_nope_head_dim),
            ("v_head_dim", dims.v_head_dim),
        ] {
            if v == 0 {
                return Err(Error::invalid(
                    format!("MLA weight {what}"),
                    0,
                    "heads, kv_lora_rank, qk_nope_head_dim and v_head_dim must be >= 1",
                ));
            }
        }
        Ok(())
    }

    /// Heads this weight holds.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }
    /// The MLA dimensions (Lkv, R, P, V).
    pub fn dims(&self) -> MlaDims {
        self.dims
    }
    /// `[num_heads * (P + V), Lkv]`, exact in the activation dtype.
    pub fn kv_b_proj(&self) -> &[f32] {
        &self.kv_b_proj
    }

    /// A deterministic random weight, `U(-1, 1) / sqrt(Lkv)` rounded to `dtype`
    /// (keeps projected values O(1) for O(1) latents).
    /// Refuses the shapes [`MlaWeights::new`] refuses.
    pub fn random(num_heads: usize, dims: MlaDims, dtype: DType, seed: u64) -> Result<Self> {
        Self::check_shape(num_heads, dims)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let amp = 1.0 / (dims.kv_lora_rank as f32).sqrt();
        let n = num_heads * (dims.qk_nope_head_dim + dims.v_head_dim) * dims.kv_lora_rank;
        let kv_b_proj = (0..n)
            .map(|_| dtype.round(rng.gen_range(-1.0f32..1.0) * amp))
            .collect();
        Ok(MlaWeights {
            num_heads,
            dims,
            kv_b_proj,
        })
    }

    /// The heads tensor-parallel rank `rank` of `tp` holds: `num_heads / tp`
    /// consecutive heads (vLLM's ColumnParallelLinear split of kv_b_proj).
    pub fn shard(&self, rank: usize, tp: usize) -> Result<Self> {
        if tp == 0 || !self.num_heads.is_multiple_of(tp) {
            return Err(Error::invalid(
                "tensor_parallel_size",
                tp,
                format!("must divide the {} heads", self.num_heads),
            ));
        }
        if rank >= tp {
            return Err(Error::invalid(
                "rank",
                rank,
                format!("allowed range is [0, {tp})"),
            ));
        }
        let per = self.num_heads / tp;
        let rows = per * self.head_rows() * self.dims.kv_lora_rank;
        Ok(MlaWeights {
            num_heads: per,
            dims: self.dims,
            kv_b_proj: self.kv_b_proj[rank * rows..(rank + 1) * rows].to_vec(),
        })
    }

    fn head_rows(&self) -> usize {
        self.dims.qk_nope_head_dim + self.dims.v_head_dim
    }

    /// `kv_b_proj^T`: `[Lkv, N * (P + V)]`, so a GEMM's output channels are
    /// contiguous lanes.
    pub fn transposed(&self) -> Vec<f32> {
        let (lkv, rows) = (self.dims.kv_lora_rank, self.num_heads * self.head_rows());
        let mut t = vec![0.0f32; lkv * rows];
        // In 32 x 32 blocks: a block's rows and columns stay in cache (a
        // plain column walk touches a new line, often a new page, per element).
        const B: usize = 32;
        for r0 in (0..rows).step_by(B) {
            for c0 in (0..lkv).step_by(B) {
                for r in r0..(r0 + B).min(rows) {
                    let row = &self.kv_b_proj[r * lkv..(r + 1) * lkv];
                    for c in c0..(c0 + B).min(lkv) {
                        t[c * rows + r] = row[c];
                    }
                }
            }
        }
        t
    }

    /// Row `i` of head `n` (i < P: W_UK, else W_UV), `Lkv` long (tests read weights by row).
    #[cfg(test)]
    #[inline]
    fn row(&self, n: usize, i: usize) -> &[f32] {
        let lkv = self.dims.kv_lora_rank;
        let r = n * self.head_rows() + i;
        &self.kv_b_proj[r * lkv..(r + 1) * lkv]
    }
}

fn check_len(what: &str, len: usize, shape: &[usize]) -> Result<()> {
    let n: usize = shape.iter().product();
    if len != n {
        return Err(Error::invalid(
            format!("{what} length"),
            len,
            format!("{shape:?} needs {n}"),
        ));
    }
    Ok(())
}

/// Which MLA projection a launch computes (they share the weight and the GEMM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    /// [`up_project`]: `kv_c [T, Lkv]`.
    KvUp,
    /// [`absorb_query`]: `q [B, N, P + R]`.
    AbsorbQuery,
    /// [`project_output`]: `o_latent [B, N, Lkv]`.
    Output,
}

/// One projection launch, validated once: a [`MlaWeights`] (which keeps its
/// own invariants) and an input of whole rows of the projection's shape. The emulator, both executors and the GPU launcher
/// take it; everything is borrowed.
#[derive(Debug, Clone, Copy)]
pub struct ProjArgs<'a> {
    proj: Projection,
    x: &'a [f32],
    w: &'a MlaWeights,
    dtype: DType,
}

impl<'a> ProjArgs<'a> {
    pub fn new(proj: Projection, x: &'a [f32], w: &'a MlaWeights, dtype: DType) -> Result<Self> {
        let d = w.dims;
        let (n, lkv) = (w.num_heads, d.kv_lora_rank);
        let (pn, r) = (d.qk_nope_head_dim, d.qk_rope_head_dim);
        match proj {
            Projection::KvUp => check_len("kv_c", x.len(), &[x.len() / lkv, lkv])?,
            Projection::AbsorbQuery => {
                let b = x.len() / (n * (pn + r));
                check_len("query", x.len(), &[b, n, pn + r])?
            }
            Projection::Output => {
                let b = x.len() / (n * lkv);
                check_len("latent attention output", x.len(), &[b, n, lkv])?
            }
        }
        Ok(ProjArgs { proj, x, w, dtype })
    }
    pub fn projection(&self) -> Projection {
        self.proj
    }
    /// The input rows.
    pub fn x(&self) -> &'a [f32] {
        self.x
    }
    pub fn weights(&self) -> &'a MlaWeights {
        self.w
    }
    /// The activation dtype (inputs, weight and outputs are exact in it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Refuses arguments built for another projection.
    pub fn expect(&self, proj: Projection) -> Result<()> {
        if self.proj != proj {
            return Err(Error::invalid(
                "projection",
                format!("{:?}", self.proj),
                format!("{proj:?} (the launch these arguments were built for)"),
            ));
        }
        Ok(())
    }
}

/// `kv_b_proj(kv_c)`: latent rows `[T, Lkv]` -> (`k_nope [T, N, P]`, `v [T, N, V]`).
/// One f32 lane per output channel over the transposed weight, so the lanes
/// run side by side; each lane's chain is `dot(kv_c[t], W[row])`'s.
pub fn up_project(kv_c: &[f32], w: &MlaWeights, dtype: DType) -> Result<(Vec<f32>, Vec<f32>)> {
    up(&ProjArgs::new(Projection::KvUp, kv_c, w, dtype)?)
}

/// [`up_project`] over validated arguments.
pub fn up(args: &ProjArgs) -> Result<(Vec<f32>, Vec<f32>)> {
    args.expect(Projection::KvUp)?;
    let (kv_c, w, dtype) = (args.x, args.w, args.dtype);
    let MlaDims {
        kv_lora_rank: lkv,
        qk_nope_head_dim: pn,
        v_head_dim: vd,
        ..
    } = w.dims;
    let t = kv_c.len() / lkv;
    let (rows, wt) = (w.num_heads * (pn + vd), w.transposed());
    let mut k_nope = Vec::with_capacity(t * w.num_heads * pn);
    let mut v = Vec::with_capacity(t * w.num_heads * vd);
    let mut acc = vec![0.0f32; rows];
    for c in kv_c.chunks_exact(lkv) {
        lane_dots(c, &wt, rows, 0, &mut acc);
        for head in acc.chunks_exact(pn + vd) {
            k_nope.extend(head[..pn].iter().map(|&a| dtype.round(a)));
            v.extend(head[pn..].iter().map(|&a| dtype.round(a)));
        }
    }
    Ok((k_nope, v))
}

/// The absorbed decode query: `q [B, N, P + R]` -> `mqa_q [B, N, Lkv + R]` =
/// `[q_nope @ W_UK_T | q_pe]` (vLLM: torch.bmm then the kernel's torch.cat).
pub fn absorb_query(q: &[f32], w: &MlaWeights, dtype: DType) -> Result<Vec<f32>> {
    absorb(&ProjArgs::new(Projection::AbsorbQuery, q, w, dtype)?)
}

/// [`absorb_query`] over validated arguments.
pub fn absorb(args: &ProjArgs) -> Result<Vec<f32>> {
    args.expect(Projection::AbsorbQuery)?;
    let (q, w, dtype) = (args.x, args.w, args.dtype);
    let MlaDims {
        kv_lora_rank: lkv,
        qk_nope_head_dim: pn,
        qk_rope_head_dim: r,
        ..
    } = w.dims;
    let b = q.len() / (w.num_heads * (pn + r));
    let mut out = Vec::with_capacity(b * w.num_heads * (lkv + r));
    let mut acc = vec![0.0f32; lkv];
    for (i, qh) in q.chunks_exact(pn + r).enumerate() {
        let w_uk = &w.kv_b_proj[(i % w.num_heads) * w.head_rows() * lkv..];
        lane_dots(&qh[..pn], w_uk, lkv, 0, &mut acc);
        out.extend(acc.iter().map(|&a| dtype.round(a)));
        out.extend_from_slice(&qh[pn..]);
    }
    Ok(out)
}

/// `out[b, n] = o_latent[b, n] @ W_UV[n]`: `[B, N, Lkv]` -> `[B, N, V]`,
/// one lane per output channel, latent channels ascending.
pub fn project_output(o_latent: &[f32], w: &MlaWeights, dtype: DType) -> Result<Vec<f32>> {
    output(&ProjArgs::new(Projection::Output, o_latent, w, dtype)?)
}

/// [`project_output`] over validated arguments.
pub fn output(args: &ProjArgs) -> Result<Vec<f32>> {
    args.expect(Projection::Output)?;
    let (o_latent, w, dtype) = (args.x, args.w, args.dtype);
    let MlaDims {
        kv_lora_rank: lkv,
        qk_nope_head_dim: pn,
        v_head_dim: vd,
        ..
    } = w.dims;
    let b = o_latent.len() / (w.num_heads * lkv);
    let (rows, wt) = (w.num_heads * (pn + vd), w.transposed());
    let mut out = Vec::with_capacity(b * w.num_heads * vd);
    let mut acc = vec![0.0f32; vd];
    for (i, o) in o_latent.chunks_exact(lkv).enumerate() {
        let col = (i % w.num_heads) * (pn + vd) + pn;
        lane_dots(o, &wt, rows, col, &mut acc);
        out.extend(acc.iter().map(|&a| dtype.round(a)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::softmax::dot;

    const DIMS: MlaDims = MlaDims {
        kv_lora_rank: 4,
        qk_rope_head_dim: 2,
        qk_nope_head_dim: 3,
        v_head_dim: 2,
    };

    #[test]
    fn absorbed_score_equals_up_projected_score_in_f32() {
        let w = MlaWeights::random(2, DIMS, DType::F32, 7).unwrap();
        let c = [0.5f32, -1.0, 0.25, 2.0];
        let q = [1.0f32, -0.5, 0.75, 9.0, 9.0, 0.0, 2.0, 1.0, 9.0, 9.0]; // [1 token, 2 heads, P+R]
        let (k_nope, _) = up_project(&c, &w, DType::F32).unwrap();
        let mqa_q = absorb_query(&q, &w, DType::F32).unwrap();
        for n in 0..2 {
            let direct = dot(&q[n * 5..n * 5 + 3], &k_nope[n * 3..n * 3 + 3]);
            let absorbed = dot(&mqa_q[n * 6..n * 6 + 4], &c);
            approx::assert_relative_eq!(direct, absorbed, max_relative = 1e-5);
            assert_eq!(
                &mqa_q[n * 6 + 4..n * 6 + 6],
                &q[n * 5 + 3..n * 5 + 5],
                "q_pe passes through"
            );
        }
    }

    #[test]
    fn shards_are_consecutive_heads() {
        let w = MlaWeights::random(4, DIMS, DType::Bf16, 1).unwrap();
        let s = w.shard(1, 2).unwrap();
        assert_eq!(s.num_heads, 2);
        assert_eq!(s.row(0, 0), w.row(2, 0));
        assert_eq!(s.row(1, 4), w.row(3, 4));
        let e = w.shard(0, 3).unwrap_err().to_string();
        assert!(
            e.contains("tensor_parallel_size 3") && e.contains("4 heads"),
            "{e}"
        );
    }

    #[test]
    fn rejects_misshapen_inputs() {
        let w = MlaWeights::random(2, DIMS, DType::F32, 1).unwrap();
        assert!(up_project(&[0.0; 5], &w, DType::F32)
            .unwrap_err()
            .to_string()
            .contains("kv_c length 5"));
        assert!(absorb_query(&[0.0; 7], &w, DType::F32).is_err());
        assert!(project_output(&[0.0; 7], &w, DType::F32).is_err());
        assert!(MlaWeights::new(2, DIMS, vec![0.0; 3]).is_err());
    }
}
