// mla_cache.hip: sim/src/kernels/mla_cache.rs (vLLM's concat_and_cache_mla):
// each new token's latent entry [c_kv (kv_lora_rank) | k_pe (rope_dim)] is
// stored at its slot of the [num_blocks, block_size, width] latent cache.
// Grid: one block per token; slot < 0 (PAD_SLOT_ID) returns; threads stride
// over the width. Elements are independent (the host rejects repeated slots).
//   store(x) = fp8 cache ? fp8(x / scale) : round_cache(x)
// Compile-time constants: SRC_DTYPE (kv_c, k_pe), CACHE_DTYPE.

typedef Storage<SRC_DTYPE> Src;
typedef Storage<CACHE_DTYPE> Cache;
#define CACHE_IS_FP8 (CACHE_DTYPE == DT_FP8_FNUZ || CACHE_DTYPE == DT_FP8_FN)

extern "C" __global__ void concat_and_cache_mla(
    const typename Src::T* __restrict__ kv_c, const typename Src::T* __restrict__ k_pe,
    typename Cache::T* __restrict__ cache, const i64* __restrict__ slot_mapping, i64 kv_lora_rank, i64 rope_dim,
    float scale) {
    const i64 t = blockIdx.x, slot = slot_mapping[t];
    if (slot < 0) return;
    const i64 width = kv_lora_rank + rope_dim, dst = slot * width;
    for (i64 c = threadIdx.x; c < width; c += blockDim.x) {
        const float x = c < kv_lora_rank ? Src::load(kv_c[t * kv_lora_rank + c]) : Src::load(k_pe[t * rope_dim + c - kv_lora_rank]);
        cache[dst + c] = Cache::store(CACHE_IS_FP8 ? x / scale : x);
    }
}
