// unified_attention.hip: sim/src/kernels/unified_attention.rs (vLLM's Triton
// kernel_unified_attention_2d / _3d + reduce_segments, and AITER's copy),
// ported loop for loop. One launch covers the whole batch; every key is read
// from the paged NHD cache through the block table.
//
// Grid (total_q_blocks, Hkv, NUM_SEGMENTS) (2D: NUM_SEGMENTS = 1, whose one
// segment spans every tile). Program (g, kvh, s):
//   seq = find_seq_idx(g); qblk = g - (qsl[seq] / BLOCK_Q + seq); exit if
//   qblk * BLOCK_Q >= q_len. Rows r < BLOCK_Q * qpk: token qblk * BLOCK_Q +
//   r / qpk, head kvh * qpk + r % qpk, skipped past q_len.
//   compute_tile_loop_bounds -> tiles [lo, hi) of this segment.
//   for each tile j ascending (keys t0 .. min(t0 + TILE, max_prefix)):
//     A) one thread per (row, key): dot = fmaf chain over d ascending, then
//        score() or -inf where masked  -> s[r][j] in shared memory
//     B) one thread per row: tile_max, tile_begin (m_new, m_ref, alpha),
//        p_j = exp2c(s_j - m_ref) and tile_sum in ascending j,
//        l = fmaf(l, alpha, tile_sum), m = m_new (AITER: -inf -> 0)
//     C) one thread per (row, d): acc = acc * alpha, then for j ascending with
//        p_j != 0: acc = fmaf(round_Q(p_j), v_j[d], acc)
//   2D epilogue: vLLM round(acc / l); AITER round(acc * (v_descale / l)); 0 if l == 0
//   3D epilogue: f32 partials (acc [* v_scale, AITER fp8], m, l) per segment
// reduce_segments, grid (T, Hq), threads over d: valid segments s < nact
// with l_s > 0 and m_s > -inf; g = max m_s; w = exp2c(m_s - g);
// den = fmaf(l_s, w, den), num = fmaf(acc_s, w, num), s ascending;
// out = round(num / den), 0 if den == 0.
// Phases A-C give each row exactly the sim's RowState::update sequence, so
// the result does not depend on the thread count or the wave width.
// Deliberately slow and simple: K and V are re-read from global memory per
// row; this kernel is the bit-exact oracle, not a performance kernel.
// Compile-time constants: Q_DTYPE (query, output, P rounding), KV_DTYPE.

typedef Storage<Q_DTYPE> Q;
typedef Storage<KV_DTYPE> KV;
#define KV_IS_FP8 (KV_DTYPE == DT_FP8_FNUZ || KV_DTYPE == DT_FP8_FN)
#define FLAVOR_VLLM 0
#define FLAVOR_AITER 1

struct UnifiedArgs {
    i64 num_reqs, num_heads, num_kv_heads, head_size, block_size, max_blocks;
    i64 block_m, block_q, tile, num_segments, window;
    i32 causal, flavor, is_3d, has_sinks, has_alibi;
    float scale, scale_log2, softcap, k_scale, v_scale;
};

// vLLM dequant then cast to the Q dtype (softmax.rs dequant_kv); AITER casts only.
DEVICE float load_kv(typename KV::T raw, float scale, i32 flavor) {
    float x = KV::load(raw);
    if (flavor == FLAVOR_VLLM && KV_IS_FP8) x = round_to<Q_DTYPE>(x * scale);
    return round_to<Q_DTYPE>(x);
}

DEVICE i64 find_seq_idx(const i32* qsl, i64 num_reqs, i64 block_q, i64 g) {
    i64 lo = 0, hi = num_reqs;
    while (lo < hi) {
        i64 mid = (lo + hi) / 2;
        if ((i64)qsl[mid] / block_q + mid <= g) lo = mid + 1;
        else hi = mid;
    }
    return lo > 0 ? lo - 1 : 0;
}

DEVICE bool allowed(i64 t, i64 qabs, i64 seq_len, bool causal, i64 window) {
    return t < seq_len && visible(t, qabs, causal, window) && (causal || window == 0 || t < qabs + window);
}

extern "C" __global__ void unified_attention(
    const typename Q::T* __restrict__ query, const typename KV::T* __restrict__ k_cache,
    const typename KV::T* __restrict__ v_cache, const i32* __restrict__ block_table,
    const i32* __restrict__ qsl, const i32* __restrict__ seq_lens, const float* __restrict__ sinks,
    const float* __restrict__ alibi_slopes, typename Q::T* __restrict__ out, float* __restrict__ segm_acc,
    float* __restrict__ segm_m, float* __restrict__ segm_l, UnifiedArgs a) {
    extern __shared__ float smem[];
    const i64 g = blockIdx.x, kvh = blockIdx.y, seg = blockIdx.z;
    const i64 qpk = a.num_heads / a.num_kv_heads, D = a.head_size, TILE = a.tile;
    const i64 BQ = a.block_q, BM = a.block_m, S = a.num_segments;
    const bool causal = a.causal != 0;
    const i64 seq = find_seq_idx(qsl, a.num_reqs, BQ, g);
    const i64 q_start = qsl[seq];
    const i64 qblk = g - (q_start / BQ + seq);
    const i64 q_len = qsl[seq + 1] - q_start, seq_len = seq_lens[seq];
    if (qblk * BQ >= q_len) return;
    const i64 ctx = seq_len - q_len;

    // compute_tile_loop_bounds
    i64 max_prefix = seq_len;
    if (causal) max_prefix = min(ctx + qblk * BQ + (BM - 1) / qpk + 1, seq_len);
    const i64 num_tiles = (max_prefix + TILE - 1) / TILE;
    i64 tile_start = 0, tile_end = num_tiles;
    if (a.window > 0) {
        const i64 qlo = qblk * BQ;
        const i64 qhi = min(qlo + (BM - 1) / qpk, q_len - 1);
        const i64 first = ctx + qlo + 1 > a.window ? ctx + qlo + 1 - a.window : 0;
        const i64 last = min(ctx + qhi + (causal ? 0 : a.window - 1), seq_len - 1);
        tile_start = first / TILE;
        tile_end = min(last / TILE + 1, num_tiles);
    }
    const i64 tps = (seq_len + S * TILE - 1) / (S * TILE);
    if (seg * tps * TILE >= seq_len) return;
    const i64 lo = max(seg * tps, tile_start), hi = min((seg + 1) * tps, tile_end);

    const i64 n_rows = BQ * qpk;
    float* s_tile = smem;                 // [n_rows][TILE]: scores, then p
    float* acc = s_tile + n_rows * TILE;  // [n_rows][D]
    float* m_i = acc + n_rows * D;        // [n_rows]
    float* l_i = m_i + n_rows;
    float* alpha_i = l_i + n_rows;
    for (i64 r = threadIdx.x; r < n_rows; r += blockDim.x) {
        const i64 head = kvh * qpk + r % qpk;
        const bool sink = a.has_sinks && seg == 0;
        m_i[r] = sink ? sinks[head] * LOG2E : f32_neg_inf();
        l_i[r] = sink ? 1.0f : 0.0f;
    }
    for (i64 i = threadIdx.x; i < n_rows * D; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();

    const i32* bt = block_table + seq * a.max_blocks;
    const i64 kv_stride = a.num_kv_heads * D;  // NHD: [nb, bs, Hkv, D]
    for (i64 j = lo; j < hi; ++j) {
        const i64 t0 = j * TILE, n = min((j + 1) * TILE, max_prefix) - t0;
        // A) scores
        for (i64 idx = threadIdx.x; idx < n_rows * n; idx += blockDim.x) {
            const i64 r = idx / n, jj = idx % n, q_local = qblk * BQ + r / qpk;
            if (q_local >= q_len) continue;
            const i64 head = kvh * qpk + r % qpk, token = q_start + q_local, t = t0 + jj;
            const i64 qabs = ctx + q_local;
            float s = f32_neg_inf();
            if (allowed(t, qabs, seq_len, causal, a.window)) {
                const typename Q::T* q = query + (token * a.num_heads + head) * D;
                const i64 base = ((i64)bt[t / a.block_size] * a.block_size + t % a.block_size) * kv_stride + kvh * D;
                float dot = 0.0f;
                for (i64 d = 0; d < D; ++d) dot = fmaf(Q::load(q[d]), load_kv(k_cache[base + d], a.k_scale, a.flavor), dot);
                const float alibi = a.has_alibi ? alibi_slopes[head] * (float)(t - ctx) : 0.0f;
                s = score(dot, a.scale, a.scale_log2, a.softcap, alibi);
            }
            s_tile[r * TILE + jj] = s;
        }
        __syncthreads();
        // B) row statistics
        for (i64 r = threadIdx.x; r < n_rows; r += blockDim.x) {
            if (qblk * BQ + r / qpk >= q_len) continue;
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
            if (a.flavor == FLAVOR_AITER && m_i[r] == f32_neg_inf()) m_i[r] = 0.0f;
            alpha_i[r] = ts.alpha;
        }
        __syncthreads();
        // C) acc = acc * alpha + P V
        for (i64 idx = threadIdx.x; idx < n_rows * D; idx += blockDim.x) {
            const i64 r = idx / D, d = idx % D;
            if (qblk * BQ + r / qpk >= q_len) continue;
            float acc_d = acc[idx] * alpha_i[r];
            for (i64 jj = 0; jj < n; ++jj) {
                const float p = s_tile[r * TILE + jj];
                if (p != 0.0f) {
                    const i64 t = t0 + jj;
                    const i64 base = ((i64)bt[t / a.block_size] * a.block_size + t % a.block_size) * kv_stride + kvh * D;
                    acc_d = fmaf(round_to<Q_DTYPE>(p), load_kv(v_cache[base + d], a.v_scale, a.flavor), acc_d);
                }
            }
            acc[idx] = acc_d;
        }
        __syncthreads();
    }

    for (i64 idx = threadIdx.x; idx < n_rows * D; idx += blockDim.x) {
        const i64 r = idx / D, d = idx % D, q_local = qblk * BQ + r / qpk;
        if (q_local >= q_len) continue;
        const i64 head = kvh * qpk + r % qpk, token = q_start + q_local;
        const float l = l_i[r];
        if (a.is_3d) {
            const i64 row = (token * a.num_heads + head) * S + seg;
            const bool v_fold = a.flavor == FLAVOR_AITER && KV_IS_FP8;
            segm_acc[row * D + d] = v_fold ? acc[idx] * a.v_scale : acc[idx];
            if (d == 0) {
                segm_m[row] = m_i[r];
                segm_l[row] = l;
            }
        } else {
            float o = 0.0f;
            if (l != 0.0f) {
                if (a.flavor == FLAVOR_VLLM) {
                    o = acc[idx] / l;
                } else {
                    const float v_descale = KV_IS_FP8 ? a.v_scale : 1.0f;
                    o = acc[idx] * (v_descale / l);
                }
            }
            out[(token * a.num_heads + head) * D + d] = Q::store(o);
        }
    }
}

extern "C" __global__ void reduce_segments(
    const float* __restrict__ segm_acc, const float* __restrict__ segm_m, const float* __restrict__ segm_l,
    const i32* __restrict__ qsl, const i32* __restrict__ seq_lens, typename Q::T* __restrict__ out,
    i64 num_reqs, i64 num_heads, i64 head_size, i64 num_segments, i64 tile) {
    const i64 token = blockIdx.x, head = blockIdx.y, D = head_size, S = num_segments;
    i64 seq = 0;  // partition_point(qsl[1..], x <= token)
    while (seq < num_reqs && qsl[seq + 1] <= token) ++seq;
    const i64 seq_len = seq_lens[seq];
    const i64 th = token * num_heads + head;
    if (seq_len == 0) {
        for (i64 d = threadIdx.x; d < D; d += blockDim.x) out[th * D + d] = Q::store(0.0f);
        return;
    }
    const i64 tps = (seq_len + S * tile - 1) / (S * tile);
    const i64 nact = (seq_len + tps * tile - 1) / (tps * tile);
    const i64 base = th * S;
    float gmax = f32_neg_inf();
    for (i64 s = 0; s < S; ++s)
        if (s < nact && segm_l[base + s] > 0.0f && segm_m[base + s] > f32_neg_inf()) gmax = fmaxf(gmax, segm_m[base + s]);
    for (i64 d = threadIdx.x; d < D; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (i64 s = 0; s < S; ++s) {
            if (!(s < nact && segm_l[base + s] > 0.0f && segm_m[base + s] > f32_neg_inf())) continue;
            const float w = exp2c(segm_m[base + s] - gmax);
            den = fmaf(segm_l[base + s], w, den);
            num = fmaf(segm_acc[(base + s) * D + d], w, num);
        }
        out[th * D + d] = Q::store(den != 0.0f ? num / den : 0.0f);
    }
}
