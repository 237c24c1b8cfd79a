// flex_attention.hip: sim/src/kernels/flex_attention.rs (PyTorch's compiled
// flex_attention as vLLM's FLEX_ATTENTION backend drives it), ported loop
// for loop over the same block-sparse BlockMask.
//
// The host builds the BlockMask with the sim's own BlockMask::build and
// evaluates the sim's mask_mod (FlexMask::keep) for the partial blocks into
// a byte mask, so the device reads exactly the sim's mask (Inductor inlines
// mask_mod into the kernel; here it is a table). Per sparse q block qb:
// kv_blocks[block_start[qb] .. block_start[qb + 1]] lists the partial blocks
// (the first num_partial[qb]) then the full ones, ascending physical id each.
// Grid (num_q_blocks, Hq); program (qb, head), rows r of the q block:
//   m_i = -inf, l_i = 0, acc = 0
//   for entry e in the list, for BLOCK_N tiles n0 of the cache block ascending:
//     A) per (row, key): dot = fmaf chain over d of q . k (cache dtype =
//        query dtype, read as stored); s = score(dot) (no soft-cap: vLLM's
//        FLEX_ATTENTION passes no score_mod); partial entries: -inf unless
//        keep[e][r][n0 + j]
//     B) per row: tile_max, tile_begin, p_j = exp2c(s_j - m_ref), tile_sum,
//        l = fmaf(l, alpha, tile_sum), m = m_new
//     C) per (row, d): acc = acc * alpha; fmaf(round_q(p_j), v_j[d], acc)
//   out = round_q(acc / l), 0 where l == 0.
// Compile-time constant: DTYPE (query, cache, output).

typedef Storage<DTYPE> S;

struct FlexArgs {
    i64 num_tokens, num_heads, num_kv_heads, head_size, block_size, block_n, q_block;
    float scale, scale_log2;
};

extern "C" __global__ void flex_attention(
    const typename S::T* __restrict__ query, const typename S::T* __restrict__ k_cache,
    const typename S::T* __restrict__ v_cache, const i32* __restrict__ kv_blocks, const i32* __restrict__ block_start,
    const i32* __restrict__ num_partial, const u8* __restrict__ keep, typename S::T* __restrict__ out, FlexArgs a) {
    extern __shared__ float smem[];
    const i64 qb = blockIdx.x, head = blockIdx.y, D = a.head_size, BN = a.block_n, bs = a.block_size;
    const i64 QB = a.q_block, row0 = qb * QB, n_rows = min(row0 + QB, a.num_tokens) - row0;
    const i64 kvh = head / (a.num_heads / a.num_kv_heads);
    const KvLayout L = {LAYOUT_NHD, bs, a.num_kv_heads, D, 16 / (i64)sizeof(typename S::T)};
    float* s_tile = smem;           // [QB][BLOCK_N]: scores, then p
    float* acc = s_tile + QB * BN;  // [QB][D]
    float* m_i = acc + QB * D;      // [QB]
    float* l_i = m_i + QB;
    float* alpha_i = l_i + QB;
    for (i64 r = threadIdx.x; r < n_rows; r += blockDim.x) {
        m_i[r] = f32_neg_inf();
        l_i[r] = 0.0f;
    }
    for (i64 i = threadIdx.x; i < n_rows * D; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    for (i64 e = block_start[qb]; e < block_start[qb + 1]; ++e) {
        const i64 blk = kv_blocks[e];
        const bool partial = e - block_start[qb] < num_partial[qb];
        for (i64 n0 = 0; n0 < bs; n0 += BN) {
            // A) scores
            for (i64 idx = threadIdx.x; idx < n_rows * BN; idx += blockDim.x) {
                const i64 r = idx / BN, j = idx % BN;
                const typename S::T* q = query + ((row0 + r) * a.num_heads + head) * D;
                float dot = 0.0f;
                for (i64 d = 0; d < D; ++d) dot = fmaf(S::load(q[d]), S::load(k_cache[k_offset(L, blk, n0 + j, kvh, d)]), dot);
                const bool kept = !partial || keep[(e * QB + r) * bs + n0 + j] != 0;
                s_tile[r * BN + j] = kept ? score(dot, a.scale, a.scale_log2, 0.0f, 0.0f) : f32_neg_inf();
            }
            __syncthreads();
            // B) row statistics
            for (i64 r = threadIdx.x; r < n_rows; r += blockDim.x) {
                float tile_max = f32_neg_inf();
                for (i64 j = 0; j < BN; ++j) tile_max = fmaxf(tile_max, s_tile[r * BN + j]);
                const TileStats ts = tile_begin(m_i[r], tile_max);
                float tile_sum = 0.0f;
                for (i64 j = 0; j < BN; ++j) {
                    const float p = exp2c(s_tile[r * BN + j] - ts.m_ref);
                    tile_sum = tile_sum + p;
                    s_tile[r * BN + j] = p;
                }
                l_i[r] = fmaf(l_i[r], ts.alpha, tile_sum);
                m_i[r] = ts.m_new;
                alpha_i[r] = ts.alpha;
            }
            __syncthreads();
            // C) acc = acc * alpha + P V
            for (i64 idx = threadIdx.x; idx < n_rows * D; idx += blockDim.x) {
                const i64 r = idx / D, d = idx % D;
                float acc_d = acc[idx] * alpha_i[r];
                for (i64 j = 0; j < BN; ++j) {
                    const float p = s_tile[r * BN + j];
                    if (p != 0.0f) acc_d = fmaf(round_to<DTYPE>(p), S::load(v_cache[v_offset(L, blk, n0 + j, kvh, d)]), acc_d);
                }
                acc[idx] = acc_d;
            }
            __syncthreads();
        }
    }
    for (i64 idx = threadIdx.x; idx < n_rows * D; idx += blockDim.x) {
        const i64 r = idx / D, d = idx % D;
        out[((row0 + r) * a.num_heads + head) * D + d] = S::store(row_out(acc[idx], l_i[r]));
    }
}
