// reshape_and_cache.hip: the KV-cache writers of sim/src/kernels/
// reshape_and_cache.rs (vLLM reshape_and_cache / reshape_and_cache_flash /
// triton_reshape_and_cache_flash, AITER reshape_and_cache_shuffle_triton) as
// one kernel; the destination layout is `kind` of KvLayout and the writer's
// fp8 conversion is `hip_writer`.
//
// Grid: one block per token t (blockIdx.x); slot = slot_mapping[t], slot < 0
// (PAD_SLOT_ID) returns. Threads stride over the num_kv_heads * head_size
// elements of the token; elements are independent, so the thread mapping
// does not change any bit. The host has checked every slot < num_slots and
// that no two tokens share a slot (the sim's later-token-wins order would
// otherwise be a race here, as in vLLM).
//
// Rounding point, one per element (CacheWriter::quantize):
//   cache not fp8: Storage<CACHE>::store(x)
//   fp8, HIP writer, f16 source: fp8(f16(x / scale))
//   fp8 otherwise: fp8(x / scale)
// Compile-time constants: SRC_DTYPE, CACHE_DTYPE (DT_* codes).

typedef Storage<SRC_DTYPE> Src;
typedef Storage<CACHE_DTYPE> Cache;

DEVICE typename Cache::T quantize(float x, float scale, i32 hip_writer) {
    if (CACHE_DTYPE != DT_FP8_FNUZ && CACHE_DTYPE != DT_FP8_FN) return Cache::store(x);
    float q = x / scale;
    if (hip_writer && SRC_DTYPE == DT_F16) q = round_to<DT_F16>(q);
    return Cache::store(q);
}

extern "C" __global__ void reshape_and_cache(
    const typename Src::T* __restrict__ key,    // [T, Hkv, D]
    const typename Src::T* __restrict__ value,  // [T, Hkv, D]
    typename Cache::T* __restrict__ k_cache,
    typename Cache::T* __restrict__ v_cache,
    const i64* __restrict__ slot_mapping,       // [T]
    i32 layout_kind, i64 block_size, i64 num_kv_heads, i64 head_size, i64 x,
    float k_scale, float v_scale, i32 hip_writer) {
    const i64 t = blockIdx.x;
    const i64 slot = slot_mapping[t];
    if (slot < 0) return;
    KvLayout L = {layout_kind, block_size, num_kv_heads, head_size, x};
    const i64 b = slot / block_size, n = slot % block_size;
    const i64 row = num_kv_heads * head_size;
    for (i64 e = threadIdx.x; e < row; e += blockDim.x) {
        const i64 h = e / head_size, d = e % head_size;
        k_cache[k_offset(L, b, n, h, d)] = quantize(Src::load(key[t * row + e]), k_scale, hip_writer);
        v_cache[v_offset(L, b, n, h, d)] = quantize(Src::load(value[t * row + e]), v_scale, hip_writer);
    }
}
