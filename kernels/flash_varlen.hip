// flash_varlen.hip: sim/src/kernels/flash_varlen.rs (AITER's
// flash_attn_varlen_func with LSE), FA's bottom-right causal alignment.
// Per-row contract (what every entry below keeps, element for element):
//   offset = sk - sq; p_i = i + offset
//   for key tile n in [n_min, n_max), keys j0 = n * block_n .. + len:
//     A) per (row, key): s = fmaf chain over d ascending from 0 of q[d] * k[d];
//        -inf unless visible (p_i < 0: visible iff non-causal), else
//        score(s, -slope |p_i - t|)
//     B) per row: tile_max (any order), tile_begin, p_j = exp2c(s_j - m_ref),
//        tile_sum = ((0 + p_0) + p_1) + ... in ascending j (unrounded p),
//        l = fmaf(l, alpha, tile_sum), m = m_new
//     C) per (row, dv): acc = acc * alpha, then fmaf(round(p_j), v_j[dv], acc)
//        for j ascending, skipping keys whose unrounded p_j == 0
//   out = round(acc / l) (0 if l == 0); lse = (m + log2c(l)) * LN2 (-inf if l == 0)
// Key tiles start at multiples of the sim's block_n, which the per-row
// results depend on (B's statistics are per tile). The row block does not
// matter: a tile fully masked for a row leaves (m, l, acc) unchanged
// (alpha = 1, or 0 on a still-empty row whose acc is 0; tile_sum = 0; every
// p skipped), so programs of any BLOCK_M
// that skip the tiles masked for all their rows give the sim's bits.
//
// flash_attn_varlen (the tiled kernel, SGEMM-style): a program owns
// TILE_BM = 64 rows of one sequence and one head, 256 threads, acc in
// registers; phases A (tile_qk), B (tile_softmax) and C (tile_pv) are
// portable.h's tile helpers (shared with unified_attention.hip), with one
// softmax tile per staged block of FV_BN keys. Between A and B each thread
// masks / scores its 4 x FV_BN/16 chains into P_s[64][FV_BN + 4].
// Compile-time constants: DTYPE (q, k, v, out, P rounding); FV_D, FV_DV,
// FV_BN (head sizes and block_n; the launcher passes them, the defaults are
// the bench's shape). Needs FV_D % 8 == 0, FV_DV % 16 == 0, FV_BN % 16 == 0,
// FV_BN <= 128; other shapes use flash_attn_varlen_scalar.
//
// flash_attn_varlen_scalar: the straightforward port (one thread per
// (row, key) dot from global memory), kept for the shapes above that the
// tiled kernel does not take. Grid (cdiv(max_seqlen_q, 16), batch, Hq).

typedef Storage<DTYPE> E;

struct VarlenArgs {
    i64 num_heads, num_kv_heads, head_size, head_size_v, block_n, window, total_q;
    i32 causal, has_sinks, has_alibi, pad;
    float scale, scale_log2, softcap, pad2;
};

#ifndef FV_D
#define FV_D 128
#endif
#ifndef FV_DV
#define FV_DV FV_D
#endif
#ifndef FV_BN
#define FV_BN 128
#endif
#define FV_SCALAR_ROWS 16
#define FV_PS (FV_BN + 4)                    // P_s row stride (banks)
#define FV_KN (FV_BN / 16)                   // keys per thread in A
#define FV_KW TILE_VEC_WIDTH(FV_KN)          // their vector width
#define FV_VN (FV_DV / 16)                   // dims per thread in C
#define FV_VW TILE_VEC_WIDTH(FV_VN)

#if FV_D % 8 != 0 || FV_DV % 16 != 0 || FV_BN % 16 != 0 || FV_BN > 128
#error "flash_attn_varlen: FV_D % 8, FV_DV % 16, FV_BN % 16 must be 0 and FV_BN <= 128"
#endif

#if defined(ATTNLAB_CUDA)
#define FV_LAUNCH_BOUNDS __launch_bounds__(TILE_THREADS, 2)
#else
#define FV_LAUNCH_BOUNDS __launch_bounds__(TILE_THREADS)
#endif

extern "C" __global__ void FV_LAUNCH_BOUNDS flash_attn_varlen(
    const typename E::T* __restrict__ q, const typename E::T* __restrict__ k, const typename E::T* __restrict__ v,
    const i32* __restrict__ cu_q, const i32* __restrict__ cu_k, const float* __restrict__ sinks,
    const float* __restrict__ alibi_slopes, typename E::T* __restrict__ out, float* __restrict__ lse, VarlenArgs a) {
    extern __shared__ tile_f4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    // Heaviest (last, under causal masking) row blocks first: bit-neutral.
    const i64 mb = (i64)gridDim.x - 1 - blockIdx.x, b = blockIdx.y, h = blockIdx.z;
    const i64 hq = a.num_heads, hk = a.num_kv_heads;
    const i64 g = h / (hq / hk);
    const i64 sq = cu_q[b + 1] - cu_q[b], sk = cu_k[b + 1] - cu_k[b], q0 = cu_q[b], k0 = cu_k[b];
    const i64 r0 = mb * TILE_BM;
    if (r0 >= sq) return;
    const i64 r1 = min(r0 + TILE_BM, sq), offset = sk - sq;
    const int rows = (int)(r1 - r0);
    const bool causal = a.causal || a.window > 0;
    i64 last_key = sk;
    if (causal) last_key = min(max(r1 - 1 + offset + 1, (i64)0), sk);
    i64 first_key = 0;
    if (a.window > 0) first_key = min(max(r0 + offset - a.window + 1, (i64)0), sk);
    const i64 n_min = first_key / FV_BN, n_max = (last_key + FV_BN - 1) / FV_BN;

    float* P_s = smem;                       // [TILE_BM][FV_PS]: scores, then p
    float* stage = P_s + TILE_BM * FV_PS;    // A: Q_s[2][DK][BM], K_s[2][DK][BN]; C: V_s[2][VK][DV]
    float* m_i = stage + TILE_STAGE(FV_BN, FV_DV);
    float* l_i = m_i + TILE_BM;
    float* alpha_i = l_i + TILE_BM;
    int* skip_i = reinterpret_cast<int*>(alpha_i + TILE_BM);
    for (int r = tid; r < TILE_BM; r += TILE_THREADS) {
        m_i[r] = a.has_sinks ? sinks[h] * LOG2E : f32_neg_inf();
        l_i[r] = a.has_sinks ? 1.0f : 0.0f;
        alpha_i[r] = 1.0f;
        skip_i[r] = 0;
    }
    float acc[4][FV_VN];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < FV_VN; ++c) acc[i][c] = 0.0f;
    __syncthreads();

    const float slope = a.has_alibi ? alibi_slopes[h] : 0.0f;
    const typename E::T* q_rows = q + (q0 + r0) * hq * FV_D + h * FV_D;   // + r * hq * FV_D
    for (i64 n = n_min; n < n_max; ++n) {
        const i64 j0 = n * FV_BN;
        const int len = (int)min((i64)FV_BN, sk - j0);
        const typename E::T* k_keys = k + (k0 + j0) * hk * FV_D + g * FV_D;  // + j * hk * FV_D
        const typename E::T* v_keys = v + (k0 + j0) * hk * FV_DV + g * FV_DV;

        // ---- A: S = Q K^T (one tile of FV_BN keys).
        Pack8<E> pk;
        float s[4][FV_KN];
        tile_qk<FV_D, FV_BN>(
            s, stage, rows, len,
            [&](int role, int idx, int d0) {
                pk.zero();
                if (role == 0) pk.load(q_rows + (i64)idx * hq * FV_D + d0);
                else if (role == 1) pk.load(k_keys + (i64)idx * hk * FV_D + d0);
            },
            [&](float* x) {
#pragma unroll
                for (int e = 0; e < 8; ++e) x[e] = pk.get(e);
            });
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = 4 * tr + i;
            const i64 pi = r0 + r + offset;
            float sc[FV_KN];
#pragma unroll
            for (int c = 0; c < FV_KN; ++c) {
                const int j = tile_key<FV_KW>(c, tc);
                const i64 t = j0 + j;
                const bool vis = j < len && (pi < 0 ? !causal : visible(t, pi, causal, a.window));
                sc[c] = f32_neg_inf();
                if (vis) {
                    const i64 dist = pi - t < 0 ? t - pi : pi - t;
                    const float bias = a.has_alibi ? -(slope * (float)dist) : 0.0f;
                    sc[c] = score(s[i][c], a.scale, a.scale_log2, a.softcap, bias);
                }
            }
#pragma unroll
            for (int c = 0; c < FV_KN; c += FV_KW) tile_sts<FV_KW>(P_s + r * FV_PS + c * 16 + tc * FV_KW, sc + c);
        }
        __syncthreads();

        // ---- B: row statistics of the one tile.
        tile_softmax<FV_BN, FV_PS, FV_BN, DTYPE, false>(P_s, rows, len, m_i, l_i, alpha_i, skip_i);

        // ---- C: acc = acc * alpha, then P V.
        Pack8<E> pv;
        tile_pv<FV_DV, FV_BN, FV_PS, FV_BN>(
            acc, P_s, stage, alpha_i, skip_i, len,
            [&](int key, int col) {
                pv.zero();
                if (key >= 0) pv.load(v_keys + (i64)key * hk * FV_DV + col);
            },
            [&](float* x) {
#pragma unroll
                for (int e = 0; e < 8; ++e) x[e] = pv.get(e);
            });
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = 4 * tr + i;
        if (r < rows) {
            const float l = l_i[r];
            typename E::T* orow = out + ((q0 + r0 + r) * hq + h) * FV_DV;
#pragma unroll
            for (int c = 0; c < FV_VN; ++c) orow[tile_key<FV_VW>(c, tc)] = E::store(row_out(acc[i][c], l));
        }
    }
    for (int r = tid; r < rows; r += TILE_THREADS) lse[h * a.total_q + q0 + r0 + r] = row_lse2(m_i[r], l_i[r]) * LN2;
}

extern "C" __global__ void flash_attn_varlen_scalar(
    const typename E::T* __restrict__ q, const typename E::T* __restrict__ k, const typename E::T* __restrict__ v,
    const i32* __restrict__ cu_q, const i32* __restrict__ cu_k, const float* __restrict__ sinks,
    const float* __restrict__ alibi_slopes, typename E::T* __restrict__ out, float* __restrict__ lse, VarlenArgs a) {
    extern __shared__ float smem[];
    const i64 mb = blockIdx.x, b = blockIdx.y, h = blockIdx.z;
    const i64 hq = a.num_heads, hk = a.num_kv_heads, D = a.head_size, DV = a.head_size_v, BN = a.block_n;
    const i64 g = h / (hq / hk);
    const i64 sq = cu_q[b + 1] - cu_q[b], sk = cu_k[b + 1] - cu_k[b], q0 = cu_q[b], k0 = cu_k[b];
    const i64 r0 = mb * FV_SCALAR_ROWS;
    if (r0 >= sq) return;
    const i64 r1 = min(r0 + FV_SCALAR_ROWS, sq), rows = r1 - r0, offset = sk - sq;
    const bool causal = a.causal || a.window > 0;
    i64 last_key = sk;
    if (causal) last_key = min(max(r1 - 1 + offset + 1, (i64)0), sk);
    i64 first_key = 0;
    if (a.window > 0) first_key = min(max(r0 + offset - a.window + 1, (i64)0), sk);
    const i64 n_min = first_key / BN, n_max = (last_key + BN - 1) / BN;

    float* s_tile = smem;             // [rows][BN]
    float* acc = s_tile + rows * BN;  // [rows][DV]
    float* m_i = acc + rows * DV;
    float* l_i = m_i + rows;
    float* alpha_i = l_i + rows;
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
        m_i[r] = a.has_sinks ? sinks[h] * LOG2E : f32_neg_inf();
        l_i[r] = a.has_sinks ? 1.0f : 0.0f;
    }
    for (i64 i = threadIdx.x; i < rows * DV; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    for (i64 n = n_min; n < n_max; ++n) {
        const i64 j0 = n * BN, len = min(BN, sk - j0);
        for (i64 idx = threadIdx.x; idx < rows * len; idx += blockDim.x) {
            const i64 r = idx / len, j = idx % len, i = r0 + r, t = j0 + j, pi = i + offset;
            const bool vis = pi < 0 ? !causal : visible(t, pi, causal, a.window);
            float s = f32_neg_inf();
            if (vis) {
                float dot = 0.0f;
                const typename E::T* qr = q + ((q0 + i) * hq + h) * D;
                const typename E::T* kr = k + ((k0 + t) * hk + g) * D;
                for (i64 d = 0; d < D; ++d) dot = fmaf(E::load(qr[d]), E::load(kr[d]), dot);
                const i64 dist = pi - t < 0 ? t - pi : pi - t;
                const float bias = a.has_alibi ? -(alibi_slopes[h] * (float)dist) : 0.0f;
                s = score(dot, a.scale, a.scale_log2, a.softcap, bias);
            }
            s_tile[r * BN + j] = s;
        }
        __syncthreads();
        for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
            float tile_max = f32_neg_inf();
            for (i64 j = 0; j < len; ++j) tile_max = fmaxf(tile_max, s_tile[r * BN + j]);
            const TileStats ts = tile_begin(m_i[r], tile_max);
            float tile_sum = 0.0f;
            for (i64 j = 0; j < len; ++j) {
                const float p = exp2c(s_tile[r * BN + j] - ts.m_ref);
                tile_sum = tile_sum + p;
                s_tile[r * BN + j] = p;
            }
            l_i[r] = fmaf(l_i[r], ts.alpha, tile_sum);
            m_i[r] = ts.m_new;
            alpha_i[r] = ts.alpha;
        }
        __syncthreads();
        for (i64 idx = threadIdx.x; idx < rows * DV; idx += blockDim.x) {
            const i64 r = idx / DV, d = idx % DV;
            float acc_d = acc[idx] * alpha_i[r];
            for (i64 j = 0; j < len; ++j) {
                const float p = s_tile[r * BN + j];
                if (p != 0.0f) acc_d = fmaf(round_to<DTYPE>(p), E::load(v[((k0 + j0 + j) * hk + g) * DV + d]), acc_d);
            }
            acc[idx] = acc_d;
        }
        __syncthreads();
    }
    for (i64 idx = threadIdx.x; idx < rows * DV; idx += blockDim.x) {
        const i64 r = idx / DV, d = idx % DV;
        out[((q0 + r0 + r) * hq + h) * DV + d] = E::store(row_out(acc[idx], l_i[r]));
    }
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) lse[h * a.total_q + q0 + r0 + r] = row_lse2(m_i[r], l_i[r]) * LN2;
}
