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
//        l = fmaf(l, alpha, tile_sum), m = m_new (zero_masked_max, i.e.
//        AITER and seed-era vLLM: m = 0 where m_new is not > -inf)
//     C) one thread per (row, d): acc = acc * alpha, then for j ascending with
//        p_j != 0: acc = fmaf(round_Q(p_j), v_j[d], acc)
//     scores use score_f with the launch's soft-cap formula (a.softcap_formula)
//   2D epilogue: vLLM round(acc / l); AITER round(acc * (v_descale / l)); no
//   guard (l == 0 only after every P underflowed: NaN), NaN stored as f32_nan()
//   3D epilogue: f32 partials (acc [* v_scale, AITER fp8], m, l) per segment
// reduce_segments, grid (T, Hq), threads over d: written segments s < nact;
// valid = true (AllWritten) or l_s > 0 and m_s > -inf (ValidOnly);
// g = max of valid m_s; w = valid ? exp2c(m_s - g) : 0; for every written s
// ascending den = fmaf(l_s, w, den), num = fmaf(acc_s, w, num) (so a NaN
// partial poisons the row even with w = 0); out = round(num / den), 0 if
// den == 0, NaN stored as f32_nan().
// Phases A-C give each row exactly the sim's RowState::update sequence, so
// the result does not depend on the thread count or the wave width.
//
// unified_attention (the scalar port) is deliberately simple: K and V are
// re-read from global memory per row. It runs every launch the tiled kernel
// does not take (3D, odd shapes).
//
// unified_attention_tiled: the 2D kernel register-tiled as flash_varlen.hip
// (portable.h's tile helpers A tile_qk, B tile_softmax, C tile_pv): a
// program owns TILE_BM = 64 rows = UA_TQ = 64 / qpk query tokens x the qpk
// heads of one KV head (row r: token qlo + r / qpk, head r % qpk), whatever
// the launch's BLOCK_M, 256 threads, acc in registers; K/V are gathered
// through the block table with 8-element vector loads (one NHD key row holds
// D contiguous elements), converted as load_kv does, into shared memory once
// per program for its 64 rows. Keys go in staged blocks of UA_BN = 128 from
// a TILE_SIZE boundary, each holding 128 / TILE_SIZE of the sim's tiles:
// scores of the whole block first, then per tile ascending the statistics
// and the P V update, so every row sees exactly the sim's RowState sequence
// over the tiles that hold its visible keys. Why another row blocking gives
// the same bits: a tile (or part of one) fully masked for a row leaves its
// (m, l, acc) unchanged (alpha = exp2c(0) = 1, or 0 on a still-empty row
// whose acc is 0; tile_sum + 0 = tile_sum; every p == 0 skipped), so tiles
// the sim's program visits that the tiled one does not (and the reverse)
// change nothing, as long as each row's visited tiles are a superset of its
// visible ones (the bounds below are computed from the program's own rows).
// AITER's m = 0 on a row with no key yet breaks that for a leading masked
// tile, so the launcher gives AITER launches to this kernel only without a
// sliding window: causal rows then all see key 0 in tile 0 first.
// Compile-time constants: Q_DTYPE (query, output, P rounding), KV_DTYPE;
// tiled kernel: UA_D (head size), UA_TILE (TILE_SIZE), UA_QPK, UA_FLAVOR
// (the launcher passes them; the defaults are the bench's prefill shape).
// Needs UA_D % 16 == 0, TILE_SIZE % 8 == 0 dividing 128, 64 % qpk == 0.

typedef Storage<Q_DTYPE> Q;
typedef Storage<KV_DTYPE> KV;
#define KV_IS_FP8 (KV_DTYPE == DT_FP8_FNUZ || KV_DTYPE == DT_FP8_FN)
#define FLAVOR_VLLM 0
#define FLAVOR_AITER 1

struct UnifiedArgs {
    i64 num_reqs, num_heads, num_kv_heads, head_size, block_size, max_blocks;
    i64 block_m, block_q, tile, num_segments, window;
    i32 causal, flavor, is_3d, has_sinks, has_alibi;
    i32 softcap_formula, zero_masked_max;  // SOFTCAP_*, MaskedRowMax::KeepZero
    float scale, scale_log2, softcap, k_scale, v_scale;
};

// vLLM dequant then cast to the Q dtype (softmax.rs dequant_kv); AITER casts
// only. x is the cache element, exactly widened.
DEVICE float kv_to_q(float x, float scale, i32 flavor) {
    if (flavor == FLAVOR_VLLM && KV_IS_FP8) x = round_to<Q_DTYPE>(x * scale);
    return round_to<Q_DTYPE>(x);
}
DEVICE float load_kv(typename KV::T raw, float scale, i32 flavor) { return kv_to_q(KV::load(raw), scale, flavor); }

// 2D epilogue of one element: vLLM acc / l; AITER acc * (v_descale / l);
// unguarded as the kernels are (0 / 0 = NaN), NaN fresh.
DEVICE float out_2d(float acc, float l, i32 flavor, float v_scale) {
    if (flavor == FLAVOR_VLLM) return nan_fresh(acc / l);
    const float v_descale = KV_IS_FP8 ? v_scale : 1.0f;
    return nan_fresh(acc * (v_descale / l));
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
                s = score_f(dot, a.scale, a.scale_log2, a.softcap, alibi, a.softcap_formula);
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
            if (a.zero_masked_max) m_i[r] = keep_zero_max(m_i[r]);
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
            out[(token * a.num_heads + head) * D + d] = Q::store(out_2d(acc[idx], l, a.flavor, a.v_scale));
        }
    }
}

#ifndef UA_D
#define UA_D 128
#endif
#ifndef UA_TILE
#define UA_TILE 32
#endif
#ifndef UA_QPK
#define UA_QPK 4
#endif
#ifndef UA_FLAVOR
#define UA_FLAVOR FLAVOR_VLLM
#endif
#ifndef UA_ZERO_MAX
#define UA_ZERO_MAX 0  // MaskedRowMax::KeepZero (the launcher passes it)
#endif
#define UA_BN 128                            // keys per staged block: 128 / UA_TILE softmax tiles
#define UA_PS (UA_BN + 4)                    // P_s row stride (banks)
#define UA_TQ (TILE_BM / UA_QPK)             // query tokens per program
#define UA_KN (UA_BN / 16)
#define UA_KW TILE_VEC_WIDTH(UA_KN)
#define UA_VN (UA_D / 16)
#define UA_VW TILE_VEC_WIDTH(UA_VN)

#if UA_D % 16 != 0 || UA_TILE % TILE_VK != 0 || UA_BN % UA_TILE != 0 || TILE_BM % UA_QPK != 0
#error "unified_attention_tiled: UA_D % 16, UA_TILE % 8, 128 % UA_TILE and 64 % UA_QPK must be 0"
#endif

#if defined(ATTNLAB_CUDA)
#define UA_LAUNCH_BOUNDS __launch_bounds__(TILE_THREADS, 2)
#else
#define UA_LAUNCH_BOUNDS __launch_bounds__(TILE_THREADS)
#endif

// The register-tiled 2D kernel (see the header). Same arguments as
// unified_attention; a.block_q / a.block_m / a.tile / a.flavor / a.head_size
// are replaced by UA_TQ / TILE_BM / UA_TILE / UA_FLAVOR / UA_D.
extern "C" __global__ void UA_LAUNCH_BOUNDS unified_attention_tiled(
    const typename Q::T* __restrict__ query, const typename KV::T* __restrict__ k_cache,
    const typename KV::T* __restrict__ v_cache, const i32* __restrict__ block_table,
    const i32* __restrict__ qsl, const i32* __restrict__ seq_lens, const float* __restrict__ sinks,
    const float* __restrict__ alibi_slopes, typename Q::T* __restrict__ out, float* __restrict__ segm_acc,
    float* __restrict__ segm_m, float* __restrict__ segm_l, UnifiedArgs a) {
    extern __shared__ tile_f4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    // Last programs (the longest causal prefixes) first: bit-neutral.
    const i64 g = (i64)gridDim.x - 1 - blockIdx.x, kvh = blockIdx.y;
    const bool causal = a.causal != 0;
    const i64 seq = find_seq_idx(qsl, a.num_reqs, UA_TQ, g);
    const i64 q_start = qsl[seq];
    const i64 qblk = g - (q_start / UA_TQ + seq);
    const i64 q_len = qsl[seq + 1] - q_start, seq_len = seq_lens[seq];
    const i64 qlo = qblk * UA_TQ;
    if (qlo >= q_len) return;
    const i64 ctx = seq_len - q_len, qhi = min(qlo + UA_TQ - 1, q_len - 1);
    const int rows = (int)min((i64)TILE_BM, (q_len - qlo) * UA_QPK);  // row r: token qlo + r / qpk, head r % qpk

    // Keys [k_lo, k_hi): every key visible to a row of this program, from a
    // tile boundary (the sim's compute_tile_loop_bounds for these rows).
    i64 k_lo = 0, k_hi = causal ? min(ctx + qhi + 1, seq_len) : seq_len;
    if (a.window > 0) {
        const i64 first = ctx + qlo + 1 > a.window ? ctx + qlo + 1 - a.window : 0;
        const i64 last = min(ctx + qhi + (causal ? 0 : a.window - 1), seq_len - 1);
        k_lo = first / UA_TILE * UA_TILE;
        k_hi = min(k_hi, last + 1);
    }

    float* P_s = smem;                     // [TILE_BM][UA_PS]: scores, then p
    float* stage = P_s + TILE_BM * UA_PS;  // A: Q_s, K_s; C: V_s
    float* m_i = stage + TILE_STAGE(UA_BN, UA_D);
    float* l_i = m_i + TILE_BM;
    int* skip_i = reinterpret_cast<int*>(l_i + TILE_BM);
    float* alpha_i = l_i + 2 * TILE_BM;    // [UA_BN / UA_TILE][TILE_BM]
    for (int r = tid; r < TILE_BM; r += TILE_THREADS) {
        const i64 head = kvh * UA_QPK + r % UA_QPK;
        m_i[r] = a.has_sinks ? sinks[head] * LOG2E : f32_neg_inf();
        l_i[r] = a.has_sinks ? 1.0f : 0.0f;
        skip_i[r] = 0;
    }
    float acc[4][UA_VN];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < UA_VN; ++c) acc[i][c] = 0.0f;
    __syncthreads();

    const i64 Hq = a.num_heads;
    const typename Q::T* q_rows = query + ((q_start + qlo) * Hq + kvh * UA_QPK) * UA_D;
    const i32* bt = block_table + seq * a.max_blocks;
    const i32 bs = (i32)a.block_size;
    const i64 kv_stride = a.num_kv_heads * UA_D;  // NHD: [nb, bs, Hkv, D]
    auto kv_row = [&](i64 t) { return ((i64)bt[(i32)t / bs] * bs + (i32)t % bs) * kv_stride + kvh * UA_D; };
    for (i64 j0 = k_lo; j0 < k_hi; j0 += UA_BN) {
        const int len = (int)min((i64)UA_BN, k_hi - j0);

        // ---- A: S = Q K^T for the block's UA_BN keys.
#if Q_DTYPE == KV_DTYPE
        Pack8<Q> pq;  // one set of registers for the Q row or the K key of this thread
        Pack8<KV>& pk = pq;  // the same type: Q and KV share the dtype
#else
        Pack8<Q> pq;
        Pack8<KV> pk;
#endif
        // This thread's key of the block (A stages key tid - 64 every chunk).
        const typename KV::T* k_row = k_cache + (tid >= TILE_BM && tid - TILE_BM < len ? kv_row(j0 + tid - TILE_BM) : 0);
        float s[4][UA_KN];
        tile_qk<UA_D, UA_BN>(
            s, stage, rows, len,
            [&](int role, int idx, int d0) {
                pq.zero();
                pk.zero();
                if (role == 0) pq.load(q_rows + ((i64)(idx / UA_QPK) * Hq + idx % UA_QPK) * UA_D + d0);
                else if (role == 1) pk.load(k_row + d0);
            },
            [&](float* x) {
#pragma unroll
                for (int e = 0; e < 8; ++e) x[e] = tid < TILE_BM ? pq.get(e) : kv_to_q(pk.get(e), a.k_scale, UA_FLAVOR);
            });
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = 4 * tr + i;
            const i64 head = kvh * UA_QPK + r % UA_QPK, qabs = ctx + qlo + r / UA_QPK;
            const float slope = a.has_alibi ? alibi_slopes[head] : 0.0f;
            float sc[UA_KN];
#pragma unroll
            for (int c = 0; c < UA_KN; ++c) {
                const int j = tile_key<UA_KW>(c, tc);
                const i64 t = j0 + j;
                sc[c] = f32_neg_inf();
                if (r < rows && j < len && allowed(t, qabs, seq_len, causal, a.window)) {
                    const float alibi = a.has_alibi ? slope * (float)(t - ctx) : 0.0f;
                    sc[c] = score_f(s[i][c], a.scale, a.scale_log2, a.softcap, alibi, a.softcap_formula);
                }
            }
#pragma unroll
            for (int c = 0; c < UA_KN; c += UA_KW) tile_sts<UA_KW>(P_s + r * UA_PS + c * 16 + tc * UA_KW, sc + c);
        }
        __syncthreads();

        // ---- B: statistics of the block's UA_TILE-key tiles, ascending.
        tile_softmax<UA_BN, UA_PS, UA_TILE, Q_DTYPE, UA_ZERO_MAX != 0>(P_s, rows, len, m_i, l_i, alpha_i,
                                                                                skip_i);

        // ---- C: per tile acc = acc * alpha, then P V.
        Pack8<KV> pv;
        tile_pv<UA_D, UA_BN, UA_PS, UA_TILE>(
            acc, P_s, stage, alpha_i, skip_i, len,
            [&](int key, int col) {
                pv.zero();
                if (key >= 0) pv.load(v_cache + kv_row(j0 + key) + col);
            },
            [&](float* x) {
#pragma unroll
                for (int e = 0; e < 8; ++e) x[e] = kv_to_q(pv.get(e), a.v_scale, UA_FLAVOR);
            });
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = 4 * tr + i;
        if (r < rows) {
            const float l = l_i[r];
            const i64 token = q_start + qlo + r / UA_QPK, head = kvh * UA_QPK + r % UA_QPK;
            typename Q::T* orow = out + (token * Hq + head) * UA_D;
#pragma unroll
            for (int c = 0; c < UA_VN; ++c)
                orow[tile_key<UA_VW>(c, tc)] = Q::store(out_2d(acc[i][c], l, UA_FLAVOR, a.v_scale));
        }
    }
}

extern "C" __global__ void reduce_segments(
    const float* __restrict__ segm_acc, const float* __restrict__ segm_m, const float* __restrict__ segm_l,
    const i32* __restrict__ qsl, const i32* __restrict__ seq_lens, typename Q::T* __restrict__ out,
    i64 num_reqs, i64 num_heads, i64 head_size, i64 num_segments, i64 tile, i32 valid_only) {
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
    const i64 nact = min((seq_len + tps * tile - 1) / (tps * tile), S);
    const i64 base = th * S;
    auto valid = [&](i64 s) { return !valid_only || (segm_l[base + s] > 0.0f && segm_m[base + s] > f32_neg_inf()); };
    float gmax = f32_neg_inf();
    for (i64 s = 0; s < nact; ++s)
        if (valid(s)) gmax = fmaxf(gmax, segm_m[base + s]);
    for (i64 d = threadIdx.x; d < D; d += blockDim.x) {
        float num = 0.0f, den = 0.0f;
        for (i64 s = 0; s < nact; ++s) {
            const float w = valid(s) ? exp2c(nan_fresh(segm_m[base + s] - gmax)) : 0.0f;
            den = fmaf(segm_l[base + s], w, den);
            num = fmaf(segm_acc[(base + s) * D + d], w, num);
        }
        out[th * D + d] = Q::store(den != 0.0f ? nan_fresh(num / den) : 0.0f);
    }
}
