// merge_attn_states.hip: sim/src/kernels/merge_attn_states.rs (vLLM's
// triton_merge_attn_states and csrc/attention/merge_attn_states.cu): two
// partial attentions over disjoint KV sets combined by their natural-log LSE.
//
// Grid (T, H): one block per (token, head); threads stride over head_size.
// Every thread recomputes the per-row scalars (same operations, same bits);
// thread 0 stores the merged lse. Per row, f32:
//   p, s = prefix_lse[h, t], suffix_lse[h, t]
//   Triton (hip_kernel 0): +inf -> -inf;  HIP (1): any ±inf -> -inf
//   m = max(p, s); HIP: m == -inf => out = prefix_out, out_lse = m
//   Triton: m == -inf => out, out_lse = the canonical NaN 0x7fc00000 (what
//   the arithmetic gives, with a payload that does not depend on the vendor)
//   p_se = expc(p - m); s_se = expc(s - m); out_se = p_se + s_se
//   out_lse = log2c(out_se) * LN2 + m
//   p_scale = p_se / out_se; s_scale = s_se / out_se
//   out[d] = round_out(fmaf(prefix[d], p_scale, suffix[d] * s_scale))
// Compile-time constant: OUT_DTYPE (storage of prefix, suffix and output).

typedef Storage<OUT_DTYPE> Out;

// The launch's scalars (gpu/src/ops/merge_attn_states.rs MergeParams, field
// for field; gpu/tests/param_layout.rs checks the layout).
struct MergeParams {
    i64 num_tokens, num_heads, head_size;
    i32 hip_kernel, pad;
};

extern "C" __global__ void merge_attn_states(
    typename Out::T* __restrict__ out, float* __restrict__ out_lse,
    const typename Out::T* __restrict__ prefix_out, const float* __restrict__ prefix_lse,
    const typename Out::T* __restrict__ suffix_out, const float* __restrict__ suffix_lse,
    MergeParams a) {
    const i64 num_tokens = a.num_tokens, num_heads = a.num_heads, head_size = a.head_size;
    const i32 hip_kernel = a.hip_kernel;
    const i64 t = blockIdx.x, h = blockIdx.y;
    float p = prefix_lse[h * num_tokens + t], s = suffix_lse[h * num_tokens + t];
    if (hip_kernel) {
        if (p == f32_inf() || p == f32_neg_inf()) p = f32_neg_inf();
        if (s == f32_inf() || s == f32_neg_inf()) s = f32_neg_inf();
    } else {
        if (p == f32_inf()) p = f32_neg_inf();
        if (s == f32_inf()) s = f32_neg_inf();
    }
    const float m = fmaxf(p, s);
    const i64 row = (t * num_heads + h) * head_size;
    if (m == f32_neg_inf()) {
        for (i64 d = threadIdx.x; d < head_size; d += blockDim.x)
            out[row + d] = hip_kernel ? prefix_out[row + d] : Out::store(f32_nan());
        if (threadIdx.x == 0) out_lse[h * num_tokens + t] = hip_kernel ? m : f32_nan();
        return;
    }
    const float p_se = expc(p - m);
    const float s_se = expc(s - m);
    const float out_se = p_se + s_se;
    const float p_scale = p_se / out_se;
    const float s_scale = s_se / out_se;
    for (i64 d = threadIdx.x; d < head_size; d += blockDim.x) {
        const float a = Out::load(prefix_out[row + d]), b = Out::load(suffix_out[row + d]);
        out[row + d] = Out::store(fmaf(a, p_scale, b * s_scale));
    }
    if (threadIdx.x == 0) out_lse[h * num_tokens + t] = log2c(out_se) * LN2 + m;
}
