// paged_decode_tc.hip: sim/src/kernels/paged_decode_tc.rs, the tensor-core
// paged decode over the paged NHD cache (block tables as paged_decode reads
// them), bf16 or f16 (Q_DTYPE == KV_DTYPE), head size 64 or 128.
//
// Grid (ceil(max_splits / TC_WAVES), Hkv * head groups, num_reqs), TC_WAVES
// waves per block. Each wave owns one split of split_size keys of one
// (sequence, kv head, group of <= 16 query heads) and is independent of the
// other waves of its block (no shared memory, no barrier): the block only
// groups neighbouring splits. Per step of 16 keys, ascending:
//   S     = Q.K^T: C chained over dim chunks c = 0 .. D/16 ascending from +0,
//           one k=16 instruction per chunk; the chunk's k slots hold the dims
//           8*(part + 4*(c/2)) + 4*(c%2) + j that the lane part's 16-byte K
//           loads bring (part, j: the instruction's A/B lane layout);
//   s     = score(S) (scale*log2e once, soft-cap); -inf for keys past the split;
//   m_new = max(m, row max); m_ref = m_new > -inf ? m_new : 0; alpha = exp2c(m - m_ref);
//   p     = exp2c(s - m_ref); tile sum = each lane part's 0 + p + p + p + p
//           (its keys in order) then xor butterfly over the 4 parts (2, then 1);
//   l     = fmaf(l, alpha, tile sum);
//   acc   = MMA(round_q(p), V, acc * alpha) (keys 0..15 of the step as k, in order);
//   m     = m_new.
// The wave stores (m, l, acc) of its split (f32); paged_decode_tc_reduce
// then combines a sequence's splits in ascending order:
//   M = max m_s; w_s = exp2c(m_s - M); l = fmaf(l_s, w_s, l); acc = fmaf(acc_s, w_s, acc);
//   out = round_q(acc / l) (0 when the sequence has no key).
// Keys past the split end are not loaded: their K and V are zero.
//
// NVIDIA (wave 32): mma.sync m16n8k16, heads as the 16 rows (S: rows = heads,
// n = 8 keys; two n-tiles per step), the S accumulators become P's A
// fragments in place; V's B fragment: lane (g, t) reads keys 2t, 2t+1,
// 2t+8, 2t+9 as 16-byte vectors of dims 64h + 8g .. (n-tile v <-> dim
// 64*(v/8) + 8*col + v%8). Every K and V load is 16 bytes, a warp's loads
// cover whole 64/128-byte runs of each key row, and the next step's K and
// V are in flight while a step computes (TC_PIPE).
// CDNA3 (wave 64): v_mfma_f32_16x16x16, transposed (S^T = K.Q^T: keys as
// rows, heads as columns; O^T = V^T.P^T), so the S^T accumulators are P^T's
// B fragments in place.
// On the host device `host_target` picks the model (0 sm_90 at wave 32,
// 2 gfx942 at wave 64).
// Compile-time constants: Q_DTYPE, KV_DTYPE (equal; bf16 or f16).

typedef Storage<Q_DTYPE> Q;
typedef typename Q::T QT;
#define TC_FMT (Q_DTYPE == DT_BF16 ? MMA_BF16 : MMA_F16)
#define TC_STEP 16
#define TC_ROWS 16
#define TC_WAVES 4

struct TcArgs {
    i64 num_heads, num_kv_heads, head_size, block_size, max_blocks, split_size, max_splits;
    i32 qpk, host_target;
    float scale, scale_log2, softcap;
};

DEVICE u32x4 zero16() {
    u32x4 z;
    z.w[0] = z.w[1] = z.w[2] = z.w[3] = 0u;
    return z;
}

// Register arrays, element by element (constant indices keep them in registers).
template <typename T, int A, int B> DEVICE void copy_regs(T (&d)[A][B], const T (&s)[A][B]) {
#pragma unroll
    for (int i = 0; i < A; ++i)
#pragma unroll
        for (int j = 0; j < B; ++j) d[i][j] = s[i][j];
}

template <int HD, int PIPE>
DEVICE void tc_split(const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
                     const i32* __restrict__ block_table, const i32* __restrict__ qsl,
                     const i32* __restrict__ seq_lens, float* __restrict__ m_part, float* __restrict__ l_part,
                     float* __restrict__ acc_part, const TcArgs& a) {
    const int wave = (int)(threadIdx.x / WAVE_SIZE), lane = (int)(threadIdx.x % WAVE_SIZE);
    const i64 seq = blockIdx.z;
    const i64 split = (i64)blockIdx.x * TC_WAVES + wave;
    const int ngroups = (a.qpk + TC_ROWS - 1) / TC_ROWS;
    const i64 kvh = blockIdx.y / ngroups;
    const int grp = (int)(blockIdx.y % ngroups);
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const i64 L = seq_lens[seq], start = split * a.split_size;
    if (start >= L || split >= a.max_splits) return;
    const i64 end = min(start + a.split_size, L);
    const int rows = min(TC_ROWS, a.qpk - grp * TC_ROWS);
    const i64 hbase = kvh * a.qpk + grp * TC_ROWS;
    const QT* q = query + (qsl[seq] * a.num_heads + hbase) * HD;
    const i32* bt = block_table + seq * a.max_blocks;
    const i64 bs = a.block_size, kv_row = a.num_kv_heads * HD;
    const auto key_off = [&](i64 t) -> i64 { return ((i64)bt[t / bs] * bs + t % bs) * kv_row + kvh * HD; };
    const float neg_inf = f32_neg_inf();
    const i64 part = (seq * a.max_splits + split) * a.num_heads + hbase;  // row 0 of the group's partials
#if WAVE_SIZE == 32
    constexpr int NC = HD / 16, NKV = HD / 32, NVV = HD / 64, NT = HD / 8;
    const int g = lane >> 2, tq = lane & 3;
    u16 qa[NC][8];
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int r = g + 8 * ((i >> 1) & 1), j = (i & 1) + 2 * (i >> 2);
            const int dim = 8 * (tq + 4 * (c >> 1)) + 4 * (c & 1) + j;
            qa[c][i] = r < rows ? q[r * HD + dim] : (u16)0;
        }
    float m[2] = {neg_inf, neg_inf}, l[2] = {0.0f, 0.0f};
    float acc[NT][4];
#pragma unroll
    for (int v = 0; v < NT; ++v)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[v][e] = 0.0f;
    // K: lane (g, t) loads keys g and 8 + g, vectors t + 4i; V: keys 2t + (j&1) + 8(j>>1), dims 64h + 8g.
    const auto load = [&](i64 t0, u32x4 (&kr)[2][NKV], u32x4 (&vr)[4][NVV]) {
#pragma unroll
        for (int n = 0; n < 2; ++n) {
            const i64 t = t0 + 8 * n + g;
            const QT* p = t < end ? k_cache + key_off(t) : nullptr;
#pragma unroll
            for (int i = 0; i < NKV; ++i) kr[n][i] = p ? load16(p + 8 * (tq + 4 * i)) : zero16();
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 t = t0 + 2 * tq + (j & 1) + 8 * (j >> 1);
            const QT* p = t < end ? v_cache + key_off(t) : nullptr;
#pragma unroll
            for (int h = 0; h < NVV; ++h) vr[j][h] = p ? load16(p + 64 * h + 8 * g) : zero16();
        }
    };
    const auto step = [&](i64 t0, const u32x4 (&kr)[2][NKV], const u32x4 (&vr)[4][NVV]) {
        float s[2][4];
#pragma unroll
        for (int n = 0; n < 2; ++n) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
#pragma unroll
            for (int c = 0; c < NC; ++c) {
                u16 b[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) b[i] = Vec16Elem<u16>::at(kr[n][c >> 1], 4 * (c & 1) + i);
                mma_m16n8k16<TC_FMT>(qa[c], b, s[n], s[n], a.host_target);
            }
        }
        // s[n][e]: row g + 8 (e >> 1), key 8n + 2t + (e & 1)
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool valid = t0 + 8 * n + 2 * tq + (e & 1) < end;
                s[n][e] = valid ? score(s[n][e], a.scale, a.scale_log2, a.softcap, 0.0f) : neg_inf;
            }
        float alpha[2];
        u16 pa[8];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float mx = fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1]));
            mx = fmaxf(mx, SHFL_XOR(mx, 2));
            mx = fmaxf(mx, SHFL_XOR(mx, 1));
            const TileStats ts = tile_begin(m[r], mx);
            alpha[r] = ts.alpha;
            float sum = 0.0f;
#pragma unroll
            for (int n = 0; n < 2; ++n)
#pragma unroll
                for (int e = 2 * r; e < 2 * r + 2; ++e) {
                    s[n][e] = exp2c(s[n][e] - ts.m_ref);
                    sum = sum + s[n][e];
                }
            sum = sum + SHFL_XOR(sum, 2);
            sum = sum + SHFL_XOR(sum, 1);
            l[r] = fmaf(l[r], ts.alpha, sum);
            m[r] = ts.m_new;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) pa[i] = Q::store(s[i >> 2][(i & 1) + 2 * ((i >> 1) & 1)]);
#pragma unroll
        for (int v = 0; v < NT; ++v) {
            float c4[4];
            u16 b[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) c4[e] = acc[v][e] * alpha[e >> 1];
#pragma unroll
            for (int i = 0; i < 4; ++i) b[i] = Vec16Elem<u16>::at(vr[i][v >> 3], v & 7);
            mma_m16n8k16<TC_FMT>(pa, b, c4, acc[v], a.host_target);
        }
    };
#elif WAVE_SIZE == 64
    constexpr int NC = HD / 16, NKV = HD / 32, DPL = HD / 16;
    const int r16 = lane % 16, qd = lane / 16;
    u16 qb[NC][4];
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int dim = 8 * (qd + 4 * (c >> 1)) + 4 * (c & 1) + i;
            qb[c][i] = r16 < rows ? q[r16 * HD + dim] : (u16)0;
        }
    float m[1] = {neg_inf}, l[1] = {0.0f};
    float acc[DPL][4];
#pragma unroll
    for (int v = 0; v < DPL; ++v)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[v][e] = 0.0f;
    // K: lane (r16, q) loads key r16, vectors q + 4i; V: keys 4q + i, dims DPL*r16 ..
    const auto load = [&](i64 t0, u32x4 (&kr)[1][NKV], u16 (&vr)[4][DPL]) {
        const i64 t = t0 + r16;
        const QT* p = t < end ? k_cache + key_off(t) : nullptr;
#pragma unroll
        for (int i = 0; i < NKV; ++i) kr[0][i] = p ? load16(p + 8 * (qd + 4 * i)) : zero16();
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 tv = t0 + 4 * qd + j;
            const QT* pv = tv < end ? v_cache + key_off(tv) : nullptr;
#pragma unroll
            for (int e = 0; e < DPL; ++e) vr[j][e] = pv ? pv[DPL * r16 + e] : (u16)0;
        }
    };
    const auto step = [&](i64 t0, const u32x4 (&kr)[1][NKV], const u16 (&vr)[4][DPL]) {
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int c = 0; c < NC; ++c) {
            u16 ka[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) ka[i] = Vec16Elem<u16>::at(kr[0][c >> 1], 4 * (c & 1) + i);
            mfma<MFMA_16X16X16, TC_FMT>(ka, qb[c], s, s, a.host_target);
        }
        // s[i]: key 4q + i, head r16
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const bool valid = t0 + 4 * qd + i < end;
            s[i] = valid ? score(s[i], a.scale, a.scale_log2, a.softcap, 0.0f) : neg_inf;
        }
        float mx = fmaxf(fmaxf(s[0], s[1]), fmaxf(s[2], s[3]));
        mx = fmaxf(mx, SHFL_XOR(mx, 32));
        mx = fmaxf(mx, SHFL_XOR(mx, 16));
        const TileStats ts = tile_begin(m[0], mx);
        float sum = 0.0f;
        u16 pb[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            s[i] = exp2c(s[i] - ts.m_ref);
            sum = sum + s[i];
            pb[i] = Q::store(s[i]);
        }
        sum = sum + SHFL_XOR(sum, 32);
        sum = sum + SHFL_XOR(sum, 16);
        l[0] = fmaf(l[0], ts.alpha, sum);
        m[0] = ts.m_new;
#pragma unroll
        for (int v = 0; v < DPL; ++v) {
            float c4[4];
            u16 va[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) c4[e] = acc[v][e] * ts.alpha;
#pragma unroll
            for (int i = 0; i < 4; ++i) va[i] = vr[i][v];
            mfma<MFMA_16X16X16, TC_FMT>(va, pb, c4, acc[v], a.host_target);
        }
    };
    typedef u32x4 KRegs[1][NKV];
    typedef u16 VRegs[4][DPL];
#else
#error "paged_decode_tc: waves of 32 or 64 lanes"
#endif
#if WAVE_SIZE == 32
    typedef u32x4 KRegs[2][NKV];
    typedef u32x4 VRegs[4][NVV];
#endif
    KRegs kc;
    VRegs vc;
    load(start, kc, vc);
    for (i64 t0 = start; t0 < end; t0 += TC_STEP) {
        if constexpr (PIPE) {
            KRegs kn;
            VRegs vn;
            if (t0 + TC_STEP < end) load(t0 + TC_STEP, kn, vn);
            step(t0, kc, vc);
            if (t0 + TC_STEP < end) copy_regs(kc, kn), copy_regs(vc, vn);
        } else {
            step(t0, kc, vc);
            if (t0 + TC_STEP < end) load(t0 + TC_STEP, kc, vc);
        }
    }
    // The split's partials: m, l per head row, acc[row][dim].
#if WAVE_SIZE == 32
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int hr = g + 8 * r;
        if (hr >= rows) continue;
        const i64 idx = part + hr;
        if (tq == 0) m_part[idx] = m[r], l_part[idx] = l[r];
#pragma unroll
        for (int v = 0; v < NT; ++v)
#pragma unroll
            for (int e = 2 * r; e < 2 * r + 2; ++e)
                acc_part[idx * HD + 64 * (v >> 3) + 8 * (2 * tq + (e & 1)) + (v & 7)] = acc[v][e];
    }
#else
    if (r16 < rows) {
        const i64 idx = part + r16;
        if (qd == 0) m_part[idx] = m[0], l_part[idx] = l[0];
#pragma unroll
        for (int v = 0; v < DPL; ++v)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc_part[idx * HD + DPL * (4 * qd + i) + v] = acc[v][i];
    }
#endif
}

// The split kernel per head size (the unpipelined d128 entry for the bench).
extern "C" __global__ void __launch_bounds__(TC_WAVES * WAVE_SIZE) paged_decode_tc_d64(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, TcArgs a) {
    tc_split<64, 1>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, a);
}
extern "C" __global__ void __launch_bounds__(TC_WAVES * WAVE_SIZE) paged_decode_tc_d128(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, TcArgs a) {
    tc_split<128, 1>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, a);
}
extern "C" __global__ void __launch_bounds__(TC_WAVES * WAVE_SIZE) paged_decode_tc_d128_nopipe(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, TcArgs a) {
    tc_split<128, 0>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, a);
}

// Reduce, grid (Hq, num_reqs), one thread per dim (blockDim >= head_size):
// the sequence's splits in ascending order (the formula above).
extern "C" __global__ void paged_decode_tc_reduce(const float* __restrict__ m_part, const float* __restrict__ l_part,
                                                  const float* __restrict__ acc_part, const i32* __restrict__ qsl,
                                                  const i32* __restrict__ seq_lens, QT* __restrict__ out, TcArgs a) {
    const i64 h = blockIdx.x, seq = blockIdx.y, D = a.head_size;
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const i64 np = (seq_lens[seq] + a.split_size - 1) / a.split_size;
    const i64 base = seq * a.max_splits * a.num_heads + h;
    float mx = f32_neg_inf();
    for (i64 s = 0; s < np; ++s) mx = fmaxf(mx, m_part[base + s * a.num_heads]);
    for (i64 d = threadIdx.x; d < D; d += blockDim.x) {
        float l = 0.0f, acc = 0.0f;
        for (i64 s = 0; s < np; ++s) {
            const i64 idx = base + s * a.num_heads;
            const float w = exp2c(m_part[idx] - mx);
            l = fmaf(l_part[idx], w, l);
            acc = fmaf(acc_part[idx * D + d], w, acc);
        }
        out[(qsl[seq] * a.num_heads + h) * D + d] = Q::store(np == 0 ? 0.0f : acc / l);
    }
}
