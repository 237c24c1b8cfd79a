// paged_decode.hip: sim/src/kernels/paged_decode.rs, both decode kernels,
// reading K/V through any KvLayout (NHD, ROCm x-packed, AITER shuffled).
// Only sequences with query_len == 1 are processed; other rows of `out` are
// left as they were (the caller uploads them).
//
// paged_attention_2d (vLLM Triton kernel_paged_attention_2d), grid
// (num_reqs, Hkv), the qpk heads of one kv head for the sequence's query row:
//   for tile j ascending (keys j*TILE .. min((j+1)*TILE, seq_len)):
//     A) per (head, key): s = score(fmaf chain over d of q . dequant(k)), or
//        out of window: -10000 * LOG2E + bias * LOG2E (not -inf)
//     B) per head: RowState::update statistics (tile_begin, exp2c, tile_sum)
//     C) per (head, d): acc = acc * alpha; fmaf(round_q(p), dequant(v), acc)
//   out = round_q(acc / (l + 1e-10))
// With stage_kv (when shared memory allows), each tile's dequantized K
// (transposed, [D][TILE]) and V ([TILE][D]) are loaded once, coalesced, into
// shared memory and every head of the group reads them there: the same
// values in the same operations, so the bits do not change; only the
// global traffic does (once per kv head instead of once per query head).
//
// ll4mi (vLLM paged_attention_rocm): partition kernel, grid (num_reqs,
// max_num_partitions, Hkv); partition p = tokens [p*256, p*256 + 256) as 4
// waves of 64 token lanes. Per head of the group: s_t = score with
// scale * k_scale (fp8 K enters as stored), masked -FLT_MAX; per wave the
// 64-lane butterfly max and, of e_t = exp2c(s_t - wmax), the butterfly sum
// (emulated_butterfly: 64 lanes on every vendor, as the sim models it);
// pmax, psum = fmaf(wsum_w, exp2c(wmax_w - pmax), psum) over waves
// ascending; p_t = round_q((e_t * (1 / (psum + 1e-6))) * exp2c(wmax_w - pmax));
// tmp_out[d] = round_q([v_scale *] fmaf chain over t of p_t * v_t[d]).
// Reduce kernel, grid (Hq, num_reqs): w_p = exp_sums[p] * exp2c(ml_p - gmax);
// lane p % 64 accumulates w_p (p ascending), 64-lane butterfly sum = gsum;
// out[d] = round_q(fmaf chain over p of tmp_out[p][d] * w_p, * (1 / (gsum + 1e-6))).
// Compile-time constants: Q_DTYPE, KV_DTYPE.

typedef Storage<Q_DTYPE> Q;
typedef Storage<KV_DTYPE> KV;
#define KV_IS_FP8 (KV_DTYPE == DT_FP8_FNUZ || KV_DTYPE == DT_FP8_FN)
#define LL4MI_MASKED (-3.402823466e+38f)
#define LL4MI_WAVE 64

struct PagedArgs {
    i64 num_reqs, num_heads, num_kv_heads, head_size, block_size, max_blocks, num_kv_blocks;
    i64 tile, window, partition_size, max_partitions;
    i32 layout_kind, has_sinks, has_alibi, stage_kv;
    float scale, scale_log2, softcap, k_scale, v_scale;
};

DEVICE KvLayout layout_of(const PagedArgs& a) {
    KvLayout L = {a.layout_kind, a.block_size, a.num_kv_heads, a.head_size, 16 / (i64)sizeof(typename KV::T)};
    return L;
}

DEVICE float dequant(typename KV::T raw, float scale) { return dequant_kv<Q_DTYPE, KV_DTYPE>(raw, scale); }

extern "C" __global__ void paged_attention_2d(
    const typename Q::T* __restrict__ query, const typename KV::T* __restrict__ k_cache,
    const typename KV::T* __restrict__ v_cache, const i32* __restrict__ block_table, const i32* __restrict__ qsl,
    const i32* __restrict__ seq_lens, const float* __restrict__ sinks, const float* __restrict__ alibi_slopes,
    typename Q::T* __restrict__ out, PagedArgs a) {
    extern __shared__ float smem[];
    const i64 seq = blockIdx.x, kvh = blockIdx.y;
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const i64 qpk = a.num_heads / a.num_kv_heads, D = a.head_size, TILE = a.tile;
    const i64 row = qsl[seq], seq_len = seq_lens[seq], ctx = seq_len - 1;
    const KvLayout L = layout_of(a);
    const i32* bt = block_table + seq * a.max_blocks;
    float* s_tile = smem;                // [qpk][TILE]
    float* acc = s_tile + qpk * TILE;    // [qpk][D]
    float* m_i = acc + qpk * D;
    float* l_i = m_i + qpk;
    float* alpha_i = l_i + qpk;
    float* k_t = alpha_i + qpk;          // stage_kv: [D][TILE]
    float* v_t = k_t + D * TILE;         // stage_kv: [TILE][D]
    for (i64 r = threadIdx.x; r < qpk; r += blockDim.x) {
        m_i[r] = a.has_sinks ? sinks[kvh * qpk + r] * LOG2E : f32_neg_inf();
        l_i[r] = a.has_sinks ? 1.0f : 0.0f;
    }
    for (i64 i = threadIdx.x; i < qpk * D; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    const float window_masked2 = -10000.0f * LOG2E;
    for (i64 t0 = 0; t0 < seq_len; t0 += TILE) {
        const i64 n = min(t0 + TILE, seq_len) - t0;
        if (a.stage_kv) {
            for (i64 i = threadIdx.x; i < n * D; i += blockDim.x) {
                const i64 jj = i / D, d = i % D, t = t0 + jj;
                const i64 blk = bt[t / a.block_size], off = t % a.block_size;
                k_t[d * TILE + jj] = dequant(k_cache[k_offset(L, blk, off, kvh, d)], a.k_scale);
                v_t[jj * D + d] = dequant(v_cache[v_offset(L, blk, off, kvh, d)], a.v_scale);
            }
            __syncthreads();
        }
        for (i64 idx = threadIdx.x; idx < qpk * n; idx += blockDim.x) {
            const i64 r = idx / n, jj = idx % n, h = kvh * qpk + r, t = t0 + jj;
            const i64 blk = bt[t / a.block_size], off = t % a.block_size;
            const typename Q::T* q = query + (row * a.num_heads + h) * D;
            float dot = 0.0f;
            if (a.stage_kv) {
                for (i64 d = 0; d < D; ++d) dot = fmaf(Q::load(q[d]), k_t[d * TILE + jj], dot);
            } else {
                for (i64 d = 0; d < D; ++d) dot = fmaf(Q::load(q[d]), dequant(k_cache[k_offset(L, blk, off, kvh, d)], a.k_scale), dot);
            }
            const float bias = a.has_alibi ? alibi_slopes[h] * ((float)t - (float)ctx) : 0.0f;
            s_tile[r * TILE + jj] = visible(t, ctx, true, a.window) ? score(dot, a.scale, a.scale_log2, a.softcap, bias)
                                                                    : window_masked2 + bias * LOG2E;
        }
        __syncthreads();
        for (i64 r = threadIdx.x; r < qpk; r += blockDim.x) {
            float tile_max = f32_neg_inf();
            for (i64 jj = 0; jj < n; ++jj) tile_max = fmaxf(tile_max, s_tile[r * TILE + jj]);
            const TileStats ts = tile_begin(m_i[r], tile_max);
            float tile_sum = 0.0f;
            for (i64 jj = 0; jj < n; ++jj) {
                const float p = exp2c(s_tile[r * TILE + jj] - ts.m_ref);
                tile_sum = tile_sum + p;
                s_tile[r * TILE + jj] = p;
            }
            l_i[r] = fmaf(l_i[r], ts.alpha, tile_sum);
            m_i[r] = ts.m_new;
            alpha_i[r] = ts.alpha;
        }
        __syncthreads();
        for (i64 idx = threadIdx.x; idx < qpk * D; idx += blockDim.x) {
            const i64 r = idx / D, d = idx % D;
            float acc_d = acc[idx] * alpha_i[r];
            for (i64 jj = 0; jj < n; ++jj) {
                const float p = s_tile[r * TILE + jj];
                if (p != 0.0f) {
                    const i64 t = t0 + jj;
                    const i64 blk = bt[t / a.block_size], off = t % a.block_size;
                    const float v = a.stage_kv ? v_t[jj * D + d] : dequant(v_cache[v_offset(L, blk, off, kvh, d)], a.v_scale);
                    acc_d = fmaf(round_to<Q_DTYPE>(p), v, acc_d);
                }
            }
            acc[idx] = acc_d;
        }
        __syncthreads();
    }
    for (i64 idx = threadIdx.x; idx < qpk * D; idx += blockDim.x) {
        const i64 r = idx / D, d = idx % D;
        out[(row * a.num_heads + kvh * qpk + r) * D + d] = Q::store(acc[idx] / (l_i[r] + 1e-10f));
    }
}

extern "C" __global__ void paged_attention_ll4mi_partition(
    const typename Q::T* __restrict__ query, const typename KV::T* __restrict__ k_cache,
    const typename KV::T* __restrict__ v_cache, const i32* __restrict__ block_table, const i32* __restrict__ qsl,
    const i32* __restrict__ seq_lens, const float* __restrict__ alibi_slopes, float* __restrict__ max_logits,
    float* __restrict__ exp_sums, float* __restrict__ tmp_out, PagedArgs a) {
    extern __shared__ float smem[];
    const i64 seq = blockIdx.x, part = blockIdx.y, kvh = blockIdx.z;
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const i64 P = a.partition_size, D = a.head_size, qpk = a.num_heads / a.num_kv_heads;
    const i64 row = qsl[seq], seq_len = seq_lens[seq], start = part * P;
    if (start >= seq_len) return;
    const i64 n = min(start + P, seq_len) - start, warps = P / LL4MI_WAVE;
    const KvLayout L = layout_of(a);
    const i32* bt = block_table + seq * a.max_blocks;
    float* s = smem;             // [P] scores, then p
    float* e = s + P;            // [P]
    float* wmax = e + P;         // [warps]
    float* wscale = wmax + warps;
    float* lanes = wscale + warps;  // [64]
    float* stats = lanes + LL4MI_WAVE;  // pmax, inv
    for (i64 r = 0; r < qpk; ++r) {
        const i64 h = kvh * qpk + r;
        const typename Q::T* q = query + (row * a.num_heads + h) * D;
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) {
            const i64 t = start + j, blk = bt[t / a.block_size], off = t % a.block_size;
            float dot = 0.0f;
            for (i64 d = 0; d < D; ++d) dot = fmaf(Q::load(q[d]), KV::load(k_cache[k_offset(L, blk, off, kvh, d)]), dot);
            const float bias = a.has_alibi ? alibi_slopes[h] * ((float)t - (float)(seq_len - 1)) : 0.0f;
            s[j] = visible(t, seq_len - 1, true, a.window) ? score(dot, a.scale, a.scale_log2, a.softcap, bias) : LL4MI_MASKED;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float psum_parts[16];
            for (i64 w = 0; w < warps; ++w) {
                wmax[w] = LL4MI_MASKED;
                psum_parts[w] = 0.0f;
                if (w * LL4MI_WAVE >= n) continue;
                for (i64 l = 0; l < LL4MI_WAVE; ++l) lanes[l] = w * LL4MI_WAVE + l < n ? s[w * LL4MI_WAVE + l] : LL4MI_MASKED;
                wmax[w] = emulated_butterfly(lanes, LL4MI_WAVE, 1);
                for (i64 l = 0; l < LL4MI_WAVE; ++l) {
                    const i64 j = w * LL4MI_WAVE + l;
                    e[j] = j < n ? exp2c(s[j] - wmax[w]) : 0.0f;
                    lanes[l] = e[j];
                }
                psum_parts[w] = emulated_butterfly(lanes, LL4MI_WAVE, 0);
            }
            float pmax = LL4MI_MASKED;
            for (i64 w = 0; w < warps; ++w) pmax = fmaxf(pmax, wmax[w]);
            float psum = 0.0f;
            for (i64 w = 0; w < warps; ++w) psum = fmaf(psum_parts[w], exp2c(wmax[w] - pmax), psum);
            for (i64 w = 0; w < warps; ++w) wscale[w] = exp2c(wmax[w] - pmax);
            stats[0] = pmax;
            stats[1] = 1.0f / (psum + 1e-6f);
            const i64 o = (seq * a.num_heads + h) * a.max_partitions + part;
            max_logits[o] = pmax;
            exp_sums[o] = psum;
        }
        __syncthreads();
        for (i64 j = threadIdx.x; j < n; j += blockDim.x) s[j] = round_to<Q_DTYPE>((e[j] * stats[1]) * wscale[j / LL4MI_WAVE]);
        __syncthreads();
        for (i64 d = threadIdx.x; d < D; d += blockDim.x) {
            float acc = 0.0f;
            for (i64 j = 0; j < n; ++j) {
                if (s[j] != 0.0f) {
                    const i64 t = start + j, blk = bt[t / a.block_size], off = t % a.block_size;
                    acc = fmaf(s[j], KV::load(v_cache[v_offset(L, blk, off, kvh, d)]), acc);
                }
            }
            tmp_out[((seq * a.num_heads + h) * a.max_partitions + part) * D + d] = round_to<Q_DTYPE>(KV_IS_FP8 ? acc * a.v_scale : acc);
        }
        __syncthreads();
    }
}

extern "C" __global__ void paged_attention_ll4mi_reduce(
    const float* __restrict__ max_logits, const float* __restrict__ exp_sums, const float* __restrict__ tmp_out,
    const i32* __restrict__ qsl, const i32* __restrict__ seq_lens, typename Q::T* __restrict__ out, PagedArgs a) {
    __shared__ float lanes[LL4MI_WAVE];
    __shared__ float inv_s, gmax_s;
    const i64 h = blockIdx.x, seq = blockIdx.y, D = a.head_size, P = a.partition_size;
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const i64 seq_len = seq_lens[seq], np = (seq_len + P - 1) / P;
    const i64 base = (seq * a.num_heads + h) * a.max_partitions;
    if (threadIdx.x == 0) {
        float gmax = LL4MI_MASKED;
        for (i64 p = 0; p < np; ++p) gmax = fmaxf(gmax, max_logits[base + p]);
        for (i64 l = 0; l < LL4MI_WAVE; ++l) lanes[l] = 0.0f;
        for (i64 p = 0; p < np; ++p) lanes[p % LL4MI_WAVE] += exp_sums[base + p] * exp2c(max_logits[base + p] - gmax);
        const float gsum = emulated_butterfly(lanes, LL4MI_WAVE, 0);
        inv_s = 1.0f / (gsum + 1e-6f);
        gmax_s = gmax;
    }
    __syncthreads();
    const i64 row = qsl[seq];
    for (i64 d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (i64 p = 0; p < np; ++p) {
            const float w = exp_sums[base + p] * exp2c(max_logits[base + p] - gmax_s);
            acc = fmaf(tmp_out[(base + p) * D + d], w, acc);
        }
        out[(row * a.num_heads + h) * D + d] = Q::store(acc * inv_s);
    }
}
