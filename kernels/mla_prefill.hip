// mla_prefill.hip: sim/src/kernels/mla_prefill.rs gather_and_maybe_dequant_cache
// (vLLM csrc/cache_kernels.cu): one context chunk's latent rows, copied from
// the paged [num_blocks, block_size, width] cache into the contiguous
// workspace [toks, width] in part order, fp8 dequantized to the workspace dtype.
//
//   part p = (req, start, len) at workspace rows cu[p] .. cu[p+1]
//   row cu[p] + i <- cache[block_table[req][(start+i) / bs] * bs + (start+i) % bs]
//   element: fp8 cache ? round_DST(x * k_scale) : x      (softmax.rs dequant_kv /
//                                                          mla_cache.rs load_latent)
// Grid (cdiv(max part len, GATHER_TOKS), num_parts); threads stride over the
// width. Every element is one independent load + at most one rounding, so
// any mapping gives the sim's bits. The host validated every block id.
// Compile-time constants: KV_DTYPE (cache), DST_DTYPE (workspace: the query
// dtype for an fp8 cache, else the cache dtype itself).

typedef Storage<KV_DTYPE> Kv;
typedef Storage<DST_DTYPE> Dst;

#define GATHER_TOKS 4

extern "C" __global__ void gather_and_maybe_dequant_cache(
    const Kv::T* __restrict__ cache, Dst::T* __restrict__ out, const i32* __restrict__ block_table,
    const i32* __restrict__ part_req, const i64* __restrict__ part_start, const i64* __restrict__ cu,
    i64 max_blocks, i64 block_size, i64 width, float k_scale) {
    const i64 p = blockIdx.y, len = cu[p + 1] - cu[p];
    const i64 first = (i64)blockIdx.x * GATHER_TOKS;
    const i32* row = block_table + (i64)part_req[p] * max_blocks;
    for (i64 i = first; i < len && i < first + GATHER_TOKS; ++i) {
        const i64 t = part_start[p] + i;
        const i64 src = ((i64)row[t / block_size] * block_size + t % block_size) * width;
        const i64 dst = (cu[p] + i) * width;
        for (i64 c = threadIdx.x; c < width; c += blockDim.x)
            out[dst + c] = Dst::store(dequant_kv<DST_DTYPE, KV_DTYPE>(cache[src + c], k_scale));
    }
}
