// gather_cache.hip: sim/src/kernels/gather_cache.rs (vLLM's Triton
// cp_mha_gather_cache for ROCM_AITER_FA): copies a token range of each
// request's KV out of the paged cache into contiguous [tokens, Hkv, D].
// Grid (total_tokens, Hkv); threads stride over D. The cache is read with
// the kernel's CACHE_FORMAT formula (`format`: LAYOUT_NHD or
// LAYOUT_AITER_SHUFFLED), not the cache's own, as vLLM does.
//   b = token_to_batch[t]; pos = t - cu_seqlens[b] + seq_starts[b]
//   blk = block_table[b][pos / B]; slot = pos % B
//   dst[t, h, d] = round_dst(fp8 ? f32(src) * scale : f32(src))
// Compile-time constants: KV_DTYPE (cache), DST_DTYPE (workspace).

typedef Storage<KV_DTYPE> KV;
typedef Storage<DST_DTYPE> Dst;
#define KV_IS_FP8 (KV_DTYPE == DT_FP8_FNUZ || KV_DTYPE == DT_FP8_FN)

extern "C" __global__ void cp_mha_gather_cache(
    const typename KV::T* __restrict__ k_cache, const typename KV::T* __restrict__ v_cache,
    typename Dst::T* __restrict__ k_out, typename Dst::T* __restrict__ v_out, const i32* __restrict__ block_table,
    const i32* __restrict__ cu_seqlens, const i32* __restrict__ token_to_batch, const i64* __restrict__ seq_starts,
    i64 max_blocks, i32 format, i64 block_size, i64 num_kv_heads, i64 head_size, float k_scale, float v_scale) {
    const i64 t = blockIdx.x, h = blockIdx.y;
    const i64 b = token_to_batch[t];
    const i64 pos = t - cu_seqlens[b] + seq_starts[b];
    const i64 blk = block_table[b * max_blocks + pos / block_size], slot = pos % block_size;
    const KvLayout L = {format, block_size, num_kv_heads, head_size, 16 / (i64)sizeof(typename KV::T)};
    for (i64 d = threadIdx.x; d < head_size; d += blockDim.x) {
        const float k = KV::load(k_cache[k_offset(L, blk, slot, h, d)]);
        const float v = KV::load(v_cache[v_offset(L, blk, slot, h, d)]);
        const i64 o = (t * num_kv_heads + h) * head_size + d;
        k_out[o] = Dst::store(KV_IS_FP8 ? k * k_scale : k);
        v_out[o] = Dst::store(KV_IS_FP8 ? v * v_scale : v);
    }
}
