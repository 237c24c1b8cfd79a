// paged_decode_tc.hip: sim/src/kernels/paged_decode_tc.rs, the tensor-core
// paged decode over the paged NHD cache (block tables as paged_decode reads
// them), bf16 or f16 (Q_DTYPE == KV_DTYPE), head size 64 or 128.
//
// Grid (ceil(Hkv * head groups * max_splits / TC_WAVES), num_reqs), TC_WAVES
// waves per block. Wave w of a sequence owns split w % max_splits of
// program w / max_splits (kv head, group of <= 16 query heads), and is
// independent of the other waves of its block (no shared memory, no
// barrier): the block only packs neighbouring waves, so no wave idles. Per step of 16 keys, ascending:
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
// The wave stores (m, l, acc) of its split (f32); the reduce then combines
// a sequence's splits in ascending order:
//   M = max m_s; w_s = exp2c(m_s - M); l = fmaf(l_s, w_s, l); acc = fmaf(acc_s, w_s, acc);
//   out = round_q(acc / l) (0 when the sequence has no key).
// The reduce runs either as a second launch (paged_decode_tc_reduce) or,
// with TcArgs.fuse, in the split kernel: each split's wave counts its
// arrival at its (sequence, kv head, head group) in `counters` (after its
// partials are stored and fenced); the wave that arrives last runs the
// same formula in the same order (tc_wave_reduce) and resets the counter
// to 0, so the next launch needs no memset. A sequence of one split skips
// the partials: its wave applies the formula to its registers and writes
// `out`; with no key, split 0's wave writes the zeros.
// Keys past the split end are read as the split's last key (K unused: score -inf; V with p = 0).
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
// Resident blocks per multiprocessor the register allocation must allow
// (__launch_bounds__'s second argument; 0: the compiler's choice).
#ifndef TC_MIN_BLOCKS
#define TC_MIN_BLOCKS 0
#endif
#if TC_MIN_BLOCKS > 0
#define TC_BOUNDS __launch_bounds__(TC_WAVES * WAVE_SIZE, TC_MIN_BLOCKS)
#else
#define TC_BOUNDS __launch_bounds__(TC_WAVES * WAVE_SIZE)
#endif

struct TcArgs {
    i64 num_heads, num_kv_heads, head_size, block_size, max_blocks, split_size, max_splits;
    i32 qpk, host_target, fuse;
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

// R16: the group may have more than 8 heads (rows 8..15 of the tile live);
// without it those rows are compile-time zero and their statistics skipped.
// L2D > 0: at each step, L2 prefetch hints (no registers, no values) for
// the K and V rows of the step L2D steps ahead.
DEVICE void tc_prefetch_l2(const void* p) {
#if defined(ATTNLAB_CUDA) && defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
    (void)p;
#endif
}

// The fused reduce (TcArgs.fuse), run by the wave that arrives last at a
// (sequence, kv head, head group): the same formula and order as
// paged_decode_tc_reduce for the group's `rows` heads. Lane l owns dims
// RD*l .. RD*l + RD - 1; M is a max over lane-strided splits then a
// butterfly (exact in any order); every lane runs the ascending chain
// l = fma(l_s, w_s, l) (the same bits in each lane) and acc = fma(acc_s[d],
// w_s, acc) for its dims. TC_FUSE_ROWS heads x TC_FUSE_AHEAD splits of
// partials are loaded before their fmas. `base`: split 0's row of head 0.
#define TC_FUSE_ROWS 2
#define TC_FUSE_AHEAD 4
template <int HD>
DEVICE void tc_wave_reduce(const float* m_part, const float* l_part, const float* acc_part, QT* out,
                           const TcArgs& a, i64 base, i64 np, int rows, i64 orow, int lane) {
    constexpr int RD = HD / WAVE_SIZE, R = TC_FUSE_ROWS, B = TC_FUSE_AHEAD;
    const i64 stride = a.num_heads;
    for (int r0 = 0; r0 < rows; r0 += R) {
        float mx[R], l[R], acc[R][RD];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            mx[r] = f32_neg_inf();
            l[r] = 0.0f;
#pragma unroll
            for (int i = 0; i < RD; ++i) acc[r][i] = 0.0f;
            if (r0 + r >= rows) continue;
            for (i64 s = lane; s < np; s += WAVE_SIZE)
                mx[r] = fmaxf(mx[r], load_l2_f32(m_part + base + s * stride + r0 + r));
#pragma unroll
            for (int off = WAVE_SIZE / 2; off >= 1; off >>= 1) mx[r] = fmaxf(mx[r], SHFL_XOR(mx[r], off));
        }
        for (i64 s0 = 0; s0 < np; s0 += B) {
            float ms[R][B], ls[R][B], v[R][B][RD];
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int j = 0; j < B; ++j) {
                    if (r0 + r >= rows || s0 + j >= np) continue;
                    const i64 idx = base + (s0 + j) * stride + r0 + r;
                    ms[r][j] = load_l2_f32(m_part + idx);
                    ls[r][j] = load_l2_f32(l_part + idx);
                    load_l2_f32n<RD>(acc_part + idx * HD + RD * lane, v[r][j]);
                }
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int j = 0; j < B; ++j) {
                    if (r0 + r >= rows || s0 + j >= np) continue;
                    const float w = exp2c(ms[r][j] - mx[r]);
                    l[r] = fmaf(ls[r][j], w, l[r]);
#pragma unroll
                    for (int i = 0; i < RD; ++i) acc[r][i] = fmaf(v[r][j][i], w, acc[r][i]);
                }
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r0 + r >= rows) continue;
#pragma unroll
            for (int i = 0; i < RD; ++i) out[(orow + r0 + r) * HD + RD * lane + i] = Q::store(acc[r][i] / l[r]);
        }
    }
}

template <int HD, int PIPE, int R16, int L2D = 0>
DEVICE void tc_split(const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
                     const i32* __restrict__ block_table, const i32* __restrict__ qsl,
                     const i32* __restrict__ seq_lens, float* __restrict__ m_part, float* __restrict__ l_part,
                     float* __restrict__ acc_part, QT* __restrict__ out, u32* __restrict__ counters,
                     const TcArgs& a) {
    const int wave = (int)(threadIdx.x / WAVE_SIZE), lane = (int)(threadIdx.x % WAVE_SIZE);
    const i64 seq = blockIdx.y;
    // Waves of the sequence, split fastest: (kv head, head group, split).
    const i64 w = (i64)blockIdx.x * TC_WAVES + wave;
    const i64 split = w % a.max_splits, prog = w / a.max_splits;
    const int ngroups = (a.qpk + TC_ROWS - 1) / TC_ROWS;
    if (prog >= a.num_kv_heads * ngroups) return;
    const i64 kvh = prog / ngroups;
    const int grp = (int)(prog % ngroups);
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const i64 L = seq_lens[seq], start = split * a.split_size;
    const int rows = min(TC_ROWS, a.qpk - grp * TC_ROWS);
    const i64 hbase = kvh * a.qpk + grp * TC_ROWS;
    const i64 orow = qsl[seq] * a.num_heads + hbase;  // output row of the group's first head
    if (a.fuse && L == 0 && split == 0) {
        // No key: the reduce's output (0), written by split 0's wave.
        for (int i = lane; i < rows * HD; i += WAVE_SIZE) out[orow * HD + i] = Q::store(0.0f);
        return;
    }
    if (start >= L || split >= a.max_splits) return;
    const i64 end = min(start + a.split_size, L);
    const QT* q = query + (qsl[seq] * a.num_heads + hbase) * HD;
    const i32* bt = block_table + seq * a.max_blocks;
    const i64 bs = a.block_size, kv_row = a.num_kv_heads * HD;
    // Token t's K/V row (32-bit block arithmetic: positions stay below 2^31).
    const auto key_off = [&](i64 t) -> i64 {
        const u32 tt = (u32)t, b = (u32)bs;
        return ((i64)bt[tt / b] * bs + (i64)(tt % b)) * kv_row + kvh * HD;
    };
    // Blocks of a multiple of 16 keys hold whole steps (splits start on a
    // step): one block-table read per step, then rows kv_row apart. Keys
    // past `end` read the last valid key's row (in bounds, cached; no branch
    // around the loads): their scores are -inf and p = 0, so its K is
    // never seen and its V enters P.V with p = 0 (the sim does the same).
    const bool one_block = bs % TC_STEP == 0;
    const auto step_base = [&](i64 t0) -> i64 { return one_block ? key_off(t0) : 0; };
    const auto row_off = [&](i64 base, i64 t0, int k) -> i64 {
        const int kk = t0 + k < end ? k : (int)(end - 1 - t0);
        return one_block ? base + kk * kv_row : key_off(t0 + kk);
    };

    const float neg_inf = f32_neg_inf();
    const i64 part = (seq * a.max_splits + split) * a.num_heads + hbase;  // row 0 of the group's partials
#if WAVE_SIZE == 32
    // Fragments travel packed, two storage elements per register, as the
    // instruction reads them (mma_m16n8k16_packed).
    constexpr int NC = HD / 16, NKV = HD / 32, NVV = HD / 64, NT = HD / 8;
    constexpr int NR = R16 ? 2 : 1;  // live row halves of the lane (g, g + 8)
    const int g = lane >> 2, tq = lane & 3;
    // qa[c][w]: w = 0 row g slots (2t, 2t+1), 1 row g+8 same, 2 row g slots
    // (2t+8, 2t+9), 3 row g+8 same: dims 8(t + 4(c/2)) + 4(c%2) + (0,1 | 2,3).
    u32 qa[NC][4];
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            const int r = g + 8 * (w & 1), dim = 8 * (tq + 4 * (c >> 1)) + 4 * (c & 1) + 2 * (w >> 1);
            const QT* src = q + r * HD + dim;
            qa[c][w] = (w & 1) && !R16 ? 0u : r < rows ? ((u32)src[0] | ((u32)src[1] << 16)) : 0u;
        }
    float m[2] = {neg_inf, neg_inf}, l[2] = {0.0f, 0.0f};
    float acc[NT][2 * NR];
#pragma unroll
    for (int v = 0; v < NT; ++v)
#pragma unroll
        for (int e = 0; e < 2 * NR; ++e) acc[v][e] = 0.0f;
    // K: lane (g, t) loads keys g and 8 + g, vectors t + 4i; V: keys 2t + (j&1) + 8(j>>1), dims 64h + 8g.
    const auto load = [&](i64 t0, u32x4 (&kr)[2][NKV], u32x4 (&vr)[4][NVV]) {
        const i64 base = step_base(t0);
#pragma unroll
        for (int n = 0; n < 2; ++n) {
            const QT* p = k_cache + row_off(base, t0, 8 * n + g);
#pragma unroll
            for (int i = 0; i < NKV; ++i) kr[n][i] = load16(p + 8 * (tq + 4 * i));
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int k = 2 * tq + (j & 1) + 8 * (j >> 1);
            const QT* p = v_cache + row_off(base, t0, k);
#pragma unroll
            for (int h = 0; h < NVV; ++h) vr[j][h] = load16(p + 64 * h + 8 * g);
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
                // slots (2t, 2t+1) and (2t+8, 2t+9): elements 4(c%2) + (0,1 | 2,3) of the K vector
                const u32 b[2] = {kr[n][c >> 1].w[2 * (c & 1)], kr[n][c >> 1].w[2 * (c & 1) + 1]};
                mma_m16n8k16_packed<TC_FMT>(qa[c], b, s[n], s[n], a.host_target);
            }
        }
        // s[n][e]: row g + 8 (e >> 1), key 8n + 2t + (e & 1)
#pragma unroll
        for (int n = 0; n < 2; ++n)
#pragma unroll
            for (int e = 0; e < 2 * NR; ++e) {
                const bool valid = t0 + 8 * n + 2 * tq + (e & 1) < end;
                s[n][e] = valid ? score(s[n][e], a.scale, a.scale_log2, a.softcap, 0.0f) : neg_inf;
            }
        float alpha[2] = {0.0f, 0.0f};
#pragma unroll
        for (int r = 0; r < NR; ++r) {
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
        // P's A fragment: pa[w] = p of row g + 8 (w & 1), keys 8 (w >> 1) + 2t, +1 (the S layout).
        u32 pa[4];
#pragma unroll
        for (int w = 0; w < 4; ++w)
            pa[w] = (w & 1) && !R16 ? 0u
                                    : (u32)Q::store(s[w >> 1][2 * (w & 1)]) |
                                          ((u32)Q::store(s[w >> 1][2 * (w & 1) + 1]) << 16);
#pragma unroll
        for (int v = 0; v < NT; ++v) {
            float c4[4], d4[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) c4[e] = e < 2 * NR ? acc[v][e] * alpha[e >> 1] : 0.0f;
            // keys (2t, 2t+1) and (2t+8, 2t+9) of dim 64 (v / 8) + 8g + v % 8
            const int wi = (v & 7) >> 1, hi = v & 1;
            const u32 x0 = vr[0][v >> 3].w[wi], x1 = vr[1][v >> 3].w[wi];
            const u32 x2 = vr[2][v >> 3].w[wi], x3 = vr[3][v >> 3].w[wi];
            const u32 b[2] = {hi ? (x0 >> 16) | (x1 & 0xffff0000u) : (x0 & 0xffffu) | (x1 << 16),
                              hi ? (x2 >> 16) | (x3 & 0xffff0000u) : (x2 & 0xffffu) | (x3 << 16)};
            mma_m16n8k16_packed<TC_FMT>(pa, b, c4, d4, a.host_target);
#pragma unroll
            for (int e = 0; e < 2 * NR; ++e) acc[v][e] = d4[e];
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
        const i64 base = step_base(t0);
        const QT* p = k_cache + row_off(base, t0, r16);
#pragma unroll
        for (int i = 0; i < NKV; ++i) kr[0][i] = load16(p + 8 * (qd + 4 * i));
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const QT* pv = v_cache + row_off(base, t0, 4 * qd + j);
#pragma unroll
            for (int e = 0; e < DPL; ++e) vr[j][e] = pv[DPL * r16 + e];
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
        if constexpr (L2D > 0) {
            // lane l: key l % 16 of that step, K (l < 16) or V, both 128-byte lines of its row
            const i64 tp = t0 + L2D * TC_STEP;
            if (tp < end) {
                const int k = lane % 16;
                const QT* p = (lane / 16 % 2 ? v_cache : k_cache) + row_off(step_base(tp), tp, k);
#pragma unroll
                for (int c = 0; c < HD * (int)sizeof(QT); c += 128) tc_prefetch_l2((const char*)p + c);
            }
        }
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
    // Splits of this sequence (the reduce's count).
    const i64 np = (L + a.split_size - 1) / a.split_size;
    if (a.fuse && np == 1) {
        // The only split: the reduce's arithmetic on this wave's registers
        // (M = max(-inf, m), w = exp2c(m - M), l = fma(l, w, 0), acc = fma(acc, w, 0)).
#if WAVE_SIZE == 32
#pragma unroll
        for (int r = 0; r < NR; ++r) {
            const int hr = g + 8 * r;
            if (hr >= rows) continue;
            const float w = exp2c(m[r] - fmaxf(neg_inf, m[r]));
            const float lt = fmaf(l[r], w, 0.0f);
            QT* o = out + (orow + hr) * HD;
#pragma unroll
            for (int v = 0; v < NT; ++v)
#pragma unroll
                for (int e = 2 * r; e < 2 * r + 2; ++e)
                    o[64 * (v >> 3) + 8 * (2 * tq + (e & 1)) + (v & 7)] = Q::store(fmaf(acc[v][e], w, 0.0f) / lt);
        }
#else
        if (r16 < rows) {
            const float w = exp2c(m[0] - fmaxf(neg_inf, m[0]));
            const float lt = fmaf(l[0], w, 0.0f);
            QT* o = out + (orow + r16) * HD;
#pragma unroll
            for (int v = 0; v < DPL; ++v)
#pragma unroll
                for (int i = 0; i < 4; ++i) o[DPL * (4 * qd + i) + v] = Q::store(fmaf(acc[v][i], w, 0.0f) / lt);
        }
#endif
        return;
    }
    // The split's partials: m, l per head row, acc[row][dim].
#if WAVE_SIZE == 32
#pragma unroll
    for (int r = 0; r < NR; ++r) {
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
    if (!a.fuse) return;
    // Arrival: this split's partials are stored (each lane fenced, then the
    // wave synced); the wave whose count is the sequence's last reduces the
    // group's splits and resets the counter for the next launch.
    device_fence();
    wave_sync();
    u32* counter = counters + seq * a.num_kv_heads * ngroups + prog;
    u32 last = 0u;
    if (lane == 0) last = arrive(counter) == (u32)(np - 1) ? 1u : 0u;
#pragma unroll
    for (int off = WAVE_SIZE / 2; off >= 1; off >>= 1) last |= SHFL_XOR(last, off);
    if (!last) return;
    // Lane 0 saw the count; the wave sync orders its view before every
    // lane's fence and loads (the memory-ordering barrier of the lanes).
    wave_sync();
    device_fence();
    if (lane == 0) reset_counter(counter);
    tc_wave_reduce<HD>(m_part, l_part, acc_part, out, a, part - split * a.num_heads, np, rows, orow, lane);
}

// TC_BOUNDS3: the d128 kernel without prefetch held to 3 resident blocks
// per multiprocessor (168 registers on sm_90), for the bench's comparison.
#define TC_BOUNDS3 __launch_bounds__(TC_WAVES * WAVE_SIZE, 3)
// The split kernel per head size and group size (_r16: more than 8 heads per
// kv head; 194 registers on sm_90 for d128, 2 resident blocks). For the
// bench's comparison (d128, at most 8 heads): the next step's K and V
// loaded while a step computes (_prefetch, 254 registers, as many resident
// blocks), held to 3 resident blocks per multiprocessor (_b3, 168
// registers), and L2 prefetch hints two steps ahead (_l2).
extern "C" __global__ void TC_BOUNDS paged_decode_tc_d64(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, QT* __restrict__ out,
    u32* __restrict__ counters, TcArgs a) {
    tc_split<64, 0, 0>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, out, counters, a);
}
extern "C" __global__ void TC_BOUNDS paged_decode_tc_d64_r16(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, QT* __restrict__ out,
    u32* __restrict__ counters, TcArgs a) {
    tc_split<64, 0, 1>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, out, counters, a);
}
extern "C" __global__ void TC_BOUNDS paged_decode_tc_d128_prefetch(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, QT* __restrict__ out,
    u32* __restrict__ counters, TcArgs a) {
    tc_split<128, 1, 0>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, out, counters, a);
}
extern "C" __global__ void TC_BOUNDS paged_decode_tc_d128_r16(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, QT* __restrict__ out,
    u32* __restrict__ counters, TcArgs a) {
    tc_split<128, 0, 1>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, out, counters, a);
}
extern "C" __global__ void TC_BOUNDS paged_decode_tc_d128(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, QT* __restrict__ out,
    u32* __restrict__ counters, TcArgs a) {
    tc_split<128, 0, 0>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, out, counters, a);
}
extern "C" __global__ void TC_BOUNDS paged_decode_tc_d128_l2(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, QT* __restrict__ out,
    u32* __restrict__ counters, TcArgs a) {
    tc_split<128, 0, 0, 2>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, out, counters, a);
}
extern "C" __global__ void TC_BOUNDS3 paged_decode_tc_d128_b3(
    const QT* __restrict__ query, const QT* __restrict__ k_cache, const QT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    float* __restrict__ m_part, float* __restrict__ l_part, float* __restrict__ acc_part, QT* __restrict__ out,
    u32* __restrict__ counters, TcArgs a) {
    tc_split<128, 0, 0>(query, k_cache, v_cache, block_table, qsl, seq_lens, m_part, l_part, acc_part, out, counters, a);
}

// Reduce, grid (Hq, num_reqs), TC_REDUCE_THREADS threads, one per dim: the
// sequence's splits in ascending order (the formula above). M is a max (exact
// in any order: a tree over the threads); the weights w_s and l_s of up to
// TC_REDUCE_CHUNK splits at a time go through shared memory, then every
// thread runs the ascending chains l = fmaf(l_s, w_s, l) (the same bits in
// each thread) and acc = fmaf(acc_s[d], w_s, acc) for its dim.
// Loads, not arithmetic, set this kernel's time (a few microseconds of
// memory round trips on a grid of Hq x num_reqs blocks), so they are issued
// as early as their addresses allow: the first TC_REDUCE_BATCH acc partials
// and each thread's first (m, l) at the start (neither depends on M), and
// each later batch of acc partials while the chain consumes the one before.
#define TC_REDUCE_THREADS 128
#define TC_REDUCE_CHUNK 1024
#define TC_REDUCE_BATCH 32
extern "C" __global__ void __launch_bounds__(TC_REDUCE_THREADS) paged_decode_tc_reduce(
    const float* __restrict__ m_part, const float* __restrict__ l_part, const float* __restrict__ acc_part,
    const i32* __restrict__ qsl, const i32* __restrict__ seq_lens, QT* __restrict__ out, TcArgs a) {
    __shared__ float red[TC_REDUCE_THREADS];
    __shared__ float w_s[TC_REDUCE_CHUNK];
    __shared__ float l_s[TC_REDUCE_CHUNK];
    const i64 h = blockIdx.x, seq = blockIdx.y, D = a.head_size;
    const int tid = (int)threadIdx.x;
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const i64 np = (seq_lens[seq] + a.split_size - 1) / a.split_size;
    const i64 base = seq * a.max_splits * a.num_heads + h;
    // Split s's partial of this thread's dim: ap[s * stride].
    const float* ap = acc_part + base * D + tid;
    const i64 stride = a.num_heads * D;
    const bool owns_dim = tid < D;
    float v[TC_REDUCE_BATCH];
#pragma unroll
    for (int j = 0; j < TC_REDUCE_BATCH; ++j) v[j] = owns_dim && j < np ? ap[j * stride] : 0.0f;
    // Split `tid`'s (m, l), kept in registers for its weight below.
    const bool first = tid < np;
    const float m0 = first ? m_part[base + tid * a.num_heads] : f32_neg_inf();
    const float l0 = first ? l_part[base + tid * a.num_heads] : 0.0f;
    float mx = m0;
    for (i64 s = tid + TC_REDUCE_THREADS; s < np; s += TC_REDUCE_THREADS) mx = fmaxf(mx, m_part[base + s * a.num_heads]);
    red[tid] = mx;
    __syncthreads();
    for (int o = TC_REDUCE_THREADS / 2; o > 0; o >>= 1) {
        if (tid < o) red[tid] = fmaxf(red[tid], red[tid + o]);
        __syncthreads();
    }
    mx = red[0];
    float l = 0.0f, acc = 0.0f;
    for (i64 c0 = 0; c0 < np; c0 += TC_REDUCE_CHUNK) {
        const int n = (int)min((i64)TC_REDUCE_CHUNK, np - c0);
        __syncthreads();
        for (int i = tid; i < n; i += TC_REDUCE_THREADS) {
            const i64 s = c0 + i, idx = base + s * a.num_heads;
            const bool kept = s == tid;  // c0 == 0, the thread's first slot
            w_s[i] = exp2c((kept ? m0 : m_part[idx]) - mx);
            l_s[i] = kept ? l0 : l_part[idx];
        }
        __syncthreads();
        if (owns_dim) {
            for (int i0 = 0; i0 < n; i0 += TC_REDUCE_BATCH) {
                // v holds splits c0 + i0 ..; the next batch (possibly the
                // next chunk's first) is loaded before this one's fmas.
                const i64 g1 = c0 + i0 + TC_REDUCE_BATCH;
                float vn[TC_REDUCE_BATCH];
#pragma unroll
                for (int j = 0; j < TC_REDUCE_BATCH; ++j) vn[j] = g1 + j < np ? ap[(g1 + j) * stride] : 0.0f;
#pragma unroll
                for (int j = 0; j < TC_REDUCE_BATCH; ++j) {
                    if (i0 + j < n) {
                        l = fmaf(l_s[i0 + j], w_s[i0 + j], l);
                        acc = fmaf(v[j], w_s[i0 + j], acc);
                    }
                }
#pragma unroll
                for (int j = 0; j < TC_REDUCE_BATCH; ++j) v[j] = vn[j];
            }
        }
    }
    if (owns_dim) out[(qsl[seq] * a.num_heads + h) * D + tid] = Q::store(np == 0 ? 0.0f : acc / l);
}
