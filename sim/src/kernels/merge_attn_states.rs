//! `merge_attn_states`: combines two partial attentions over disjoint KV sets
//! by their log-sum-exp (vllm-backends.md §12, arXiv 2501.01005 §2.2).
//!
//! Mirrors vLLM's `triton_merge_attn_states.py` (`merge_attn_states_kernel`,
//! the seed-era commit 01ac819c the merge fixtures were captured with) and
//! `csrc/attention/merge_attn_states.cu` (the HIP kernel vLLM 0.33 dispatches
//! on CDNA3+ for f32/f16/bf16 with `D % pack == 0`). Grid `(T, H)`: one
//! program per (token, head); no reduction across programs.
//!
//! Per (t, h), all in f32, natural log at the interface:
//! ```text
//! p, s   = prefix_lse[h, t], suffix_lse[h, t]
//! Triton: +inf -> -inf            HIP: any ±inf -> -inf
//! m      = max(p, s)
//! HIP only: m == -inf  =>  out = prefix_output (copied), out_lse = m; done
//! p_se   = expc(p - m);  s_se = expc(s - m);  out_se = p_se + s_se
//! out_lse = log2c(out_se) * LN2 + m
//! p_scale = p_se / out_se;  s_scale = s_se / out_se     // scales first, as both kernels do
//! out[d]  = round_out(fma(prefix[d], p_scale, suffix[d] * s_scale))
//! ```
//! Deliberate differences: `exp`/`log` are the contract's `expc` (= exp2c(x *
//! LOG2E)) and `log2c * LN2`, not `tl.exp`/`expf`; the sum `a*b + c*d` is
//! pinned as `fma(a, b, c*d)` (what both compilers contract it to).
//! With the Triton kernel, both sides empty (`m = -inf`) gives `-inf - -inf =
//! NaN`, so output and lse are NaN: the fixture MANIFEST notes exactly that.
//! Both sides write that NaN explicitly as the canonical `0x7fc00000`
//! (rounded to the output dtype), so its payload does not depend on the
//! hardware's default NaN.
//! The HIP kernel guards it and copies the prefix (zeros when the prefix is an
//! empty FA result), lse -inf. `prefill_tokens_with_context` and fp8 output
//! quantization are not modelled (no ROCm MHA backend passes them).

use super::softmax::OutLse;
use crate::numerics::{expc, log2c, DType, LN2};
use attnlab_shared::error::{Error, Result};
use attnlab_shared::fault::{Fault, FaultSet};
use rayon::prelude::*;

/// Which of vLLM's two merge kernels runs (they differ only on infinities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MergeKernel {
    /// `triton_merge_attn_states` (seed era on ROCm; the merge fixtures):
    /// only +inf is mapped to -inf; both sides -inf gives NaN.
    Triton,
    /// `merge_attn_states.cu` (vLLM 0.33 on CDNA3+): any ±inf maps to -inf;
    /// both sides -inf copies the prefix output and returns lse -inf.
    Hip,
}

/// One `merge_attn_states` launch, validated once: two partial results of
/// the same shape (`[T, H, D]` outputs, `[H, T]` lse; [`OutLse`] keeps its
/// lengths matching its shape), the output dtype and the kernel. The emulator ([`merge`]), both kernel
/// executors and the GPU launcher take this type, so none checks again: the
/// results are borrowed, so they cannot change after the check.
#[derive(Debug, Clone, Copy)]
pub struct MergeArgs<'a> {
    prefix: &'a OutLse,
    suffix: &'a OutLse,
    out_dtype: DType,
    kernel: MergeKernel,
}

impl<'a> MergeArgs<'a> {
    /// Checks that `suffix` has `prefix`'s shape; the error names both.
    pub fn new(
        prefix: &'a OutLse,
        suffix: &'a OutLse,
        out_dtype: DType,
        kernel: MergeKernel,
    ) -> Result<Self> {
        let shape = |o: &OutLse| (o.num_tokens(), o.num_heads(), o.head_size());
        if shape(prefix) != shape(suffix) {
            return Err(Error::invalid(
                "suffix shape [tokens, heads, head_size]",
                format!("{:?}", shape(suffix)),
                format!("must equal the prefix shape {:?}", shape(prefix)),
            ));
        }
        Ok(MergeArgs {
            prefix,
            suffix,
            out_dtype,
            kernel,
        })
    }

    /// The earlier partial result (its output is copied where both are empty,
    /// by the HIP kernel).
    pub fn prefix(&self) -> &'a OutLse {
        self.prefix
    }
    pub fn suffix(&self) -> &'a OutLse {
        self.suffix
    }
    /// The storage dtype of both inputs' outputs and of the merged output.
    pub fn out_dtype(&self) -> DType {
        self.out_dtype
    }
    pub fn kernel(&self) -> MergeKernel {
        self.kernel
    }
    /// `(num_tokens, num_heads, head_size)`, shared by both sides.
    pub fn shape(&self) -> (usize, usize, usize) {
        let p = self.prefix;
        (p.num_tokens(), p.num_heads(), p.head_size())
    }
}

/// Merges `prefix` and `suffix` (same shape) into one result in `out_dtype`.
/// The merged lse is always returned (`output_lse` is optional in vLLM; it
/// does not influence the output).
pub fn merge_attn_states(
    prefix: &OutLse,
    suffix: &OutLse,
    out_dtype: DType,
    kernel: MergeKernel,
) -> Result<OutLse> {
    merge_attn_states_with(prefix, suffix, out_dtype, kernel, FaultSet::NONE)
}

/// [`merge_attn_states`] with `faults` ([`Fault::MergeNegInfNan`]: the HIP
/// kernel without its both-empty guard, so `-inf - -inf` = NaN).
pub fn merge_attn_states_with(
    prefix: &OutLse,
    suffix: &OutLse,
    out_dtype: DType,
    kernel: MergeKernel,
    faults: FaultSet,
) -> Result<OutLse> {
    Ok(merge(
        &MergeArgs::new(prefix, suffix, out_dtype, kernel)?,
        faults,
    ))
}

/// The emulated kernel over validated arguments (it cannot fail).
pub fn merge(args: &MergeArgs, faults: FaultSet) -> OutLse {
    let kernel = match args.kernel {
        MergeKernel::Hip if faults.has(Fault::MergeNegInfNan) => MergeKernel::Triton,
        k => k,
    };
    let (prefix, suffix, out_dtype) = (args.prefix, args.suffix, args.out_dtype);
    let (t_n, h_n, d_n) = args.shape();
    let mut merged = OutLse::empty(t_n, h_n, d_n);
    let out = merged.out_mut();
    // Per token: H merged lse values, gathered into [H, T] afterwards.
    let mut lse_th = vec![0.0f32; t_n * h_n];
    if d_n > 0 {
        out.par_chunks_mut(h_n * d_n)
            .zip(lse_th.par_chunks_mut(h_n))
            .enumerate()
            .for_each(|(t, (out_t, lse_t))| {
                for h in 0..h_n {
                    let row = (t * h_n + h) * d_n..(t * h_n + h + 1) * d_n;
                    lse_t[h] = merge_row(
                        &prefix.out()[row.clone()],
                        prefix.lse()[h * t_n + t],
                        &suffix.out()[row],
                        suffix.lse()[h * t_n + t],
                        &mut out_t[h * d_n..(h + 1) * d_n],
                        out_dtype,
                        kernel,
                    );
                }
            });
    }
    let lse = merged.lse_mut();
    for t in 0..t_n {
        for h in 0..h_n {
            lse[h * t_n + t] = lse_th[t * h_n + h];
        }
    }
    merged
}

/// One (token, head) program; returns the merged natural-log lse.
#[inline]
fn merge_row(
    p_out: &[f32],
    p_lse: f32,
    s_out: &[f32],
    s_lse: f32,
    out: &mut [f32],
    out_dtype: DType,
    kernel: MergeKernel,
) -> f32 {
    let fix = |x: f32| match kernel {
        MergeKernel::Triton if x == f32::INFINITY => f32::NEG_INFINITY,
        MergeKernel::Hip if x.is_infinite() => f32::NEG_INFINITY,
        _ => x,
    };
    let (p, s) = (fix(p_lse), fix(s_lse));
    let m = p.max(s);
    if m == f32::NEG_INFINITY {
        return match kernel {
            MergeKernel::Hip => {
                out.copy_from_slice(p_out); // already exact in the output dtype
                m
            }
            // vLLM's arithmetic gives NaN here (`-inf - -inf`); the NaN is
            // written as the canonical 0x7fc00000 because an invalid
            // operation's payload is the hardware's (x86 0xffc00000, NVIDIA
            // 0x7fffffff) and numerics.md §5 compares payloads too.
            MergeKernel::Triton => {
                out.fill(out_dtype.round(f32::NAN));
                f32::NAN
            }
        };
    }
    let p_se = expc(p - m);
    let s_se = expc(s - m);
    let out_se = p_se + s_se;
    let out_lse = log2c(out_se) * LN2 + m;
    let p_scale = p_se / out_se;
    let s_scale = s_se / out_se;
    for ((o, &a), &b) in out.iter_mut().zip(p_out).zip(s_out) {
        *o = out_dtype.round(a.mul_add(p_scale, b * s_scale));
    }
    out_lse
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(out: Vec<f32>, lse: f32) -> OutLse {
        let d = out.len();
        OutLse::new(1, 1, d, out, vec![lse]).unwrap()
    }

    #[test]
    fn equal_lse_averages_the_two_outputs() {
        let m = merge_attn_states(
            &one(vec![1.0, 2.0], 0.5),
            &one(vec![3.0, 4.0], 0.5),
            DType::F32,
            MergeKernel::Triton,
        )
        .unwrap();
        assert_eq!(m.out(), vec![2.0, 3.0]);
        // ln(2) + 0.5 within the contract's log accuracy.
        assert!(
            (m.lse()[0] - (0.5 + std::f32::consts::LN_2)).abs() < 1e-6,
            "{}",
            m.lse()[0]
        );
    }

    #[test]
    fn plus_inf_lse_is_treated_as_empty_by_both_kernels() {
        for k in [MergeKernel::Triton, MergeKernel::Hip] {
            let m = merge_attn_states(
                &one(vec![9.0], f32::INFINITY),
                &one(vec![0.25], 1.5),
                DType::F32,
                k,
            )
            .unwrap();
            assert_eq!((m.out()[0], m.lse()[0]), (0.25, 1.5), "{k:?}");
        }
    }

    #[test]
    fn triton_keeps_minus_inf_lse_only_the_hip_kernel_rewrites_both() {
        // -inf on one side: both give the other side; differences only appear
        // when both are non-finite.
        let t = merge_attn_states(
            &one(vec![0.0], f32::NEG_INFINITY),
            &one(vec![0.0], f32::INFINITY),
            DType::F32,
            MergeKernel::Triton,
        )
        .unwrap();
        assert!(t.out()[0].is_nan() && t.lse()[0].is_nan());
        let h = merge_attn_states(
            &one(vec![0.0], f32::NEG_INFINITY),
            &one(vec![0.0], f32::INFINITY),
            DType::F32,
            MergeKernel::Hip,
        )
        .unwrap();
        assert_eq!((h.out()[0], h.lse()[0]), (0.0, f32::NEG_INFINITY));
    }

    #[test]
    fn rejects_mismatched_shapes_naming_both() {
        let e = merge_attn_states(
            &one(vec![1.0, 2.0], 0.0),
            &one(vec![1.0], 0.0),
            DType::F32,
            MergeKernel::Hip,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("(1, 1, 1)") && e.contains("(1, 1, 2)"), "{e}");
    }
}
