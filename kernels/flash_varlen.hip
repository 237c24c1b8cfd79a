// flash_varlen.hip: sim/src/kernels/flash_varlen.rs (AITER's
// flash_attn_varlen_func with LSE), FA's bottom-right causal alignment.
// Grid (cdiv(max_seqlen_q, ROWS), batch, Hq); a program owns ROWS (16) query
// rows of one sequence and one head (the sim's BLOCK_M of 128 only groups
// rows; skipping fully masked tiles is bit-neutral, so the per-row results
// do not depend on it). Key tiles are the sim's block_n, starting at
// multiples of block_n, which the per-row results DO depend on.
//   offset = sk - sq; p_i = i + offset
//   for tile n in [n_min, n_max):
//     A) per (row, key): s = fmaf chain over d of q . k; -inf unless visible
//        (p_i < 0: visible iff non-causal), else score(s, -slope |p_i - t|)
//     B) per row: RowState::update statistics;  C) per (row, dv): acc update
//   out = round(acc / l) (0 if l == 0); lse = (m + log2c(l)) * LN2 (-inf if l == 0)
// Compile-time constant: DTYPE (q, k, v, out, P rounding).

typedef Storage<DTYPE> E;
#define FV_ROWS 16

struct VarlenArgs {
    i64 num_heads, num_kv_heads, head_size, head_size_v, block_n, window, total_q;
    i32 causal, has_sinks, has_alibi, pad;
    float scale, scale_log2, softcap, pad2;
};

extern "C" __global__ void flash_attn_varlen(
    const typename E::T* __restrict__ q, const typename E::T* __restrict__ k, const typename E::T* __restrict__ v,
    const i32* __restrict__ cu_q, const i32* __restrict__ cu_k, const float* __restrict__ sinks,
    const float* __restrict__ alibi_slopes, typename E::T* __restrict__ out, float* __restrict__ lse, VarlenArgs a) {
    extern __shared__ float smem[];
    const i64 mb = blockIdx.x, b = blockIdx.y, h = blockIdx.z;
    const i64 hq = a.num_heads, hk = a.num_kv_heads, D = a.head_size, DV = a.head_size_v, BN = a.block_n;
    const i64 g = h / (hq / hk);
    const i64 sq = cu_q[b + 1] - cu_q[b], sk = cu_k[b + 1] - cu_k[b], q0 = cu_q[b], k0 = cu_k[b];
    const i64 r0 = mb * FV_ROWS;
    if (r0 >= sq) return;
    const i64 r1 = min(r0 + FV_ROWS, sq), rows = r1 - r0, offset = sk - sq;
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
