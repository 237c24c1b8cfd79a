// paged_decode_2d_tc.hip: sim/src/kernels/paged_decode_2d_tc.rs, the
// tensor-core flavour of paged_decode.hip's paged_attention_2d (vLLM's
// Triton kernel_paged_attention_2d, ROCM_ATTN's decode): one query token per
// sequence against its whole paged cache, read through the block table in
// any KvLayout (ROCM_ATTN's x-packed K and transposed V included), Q.K^T and
// P.V on the matrix cores. Bit-exact with the sim *for the target it ran on*
// (numerics.md §6): mma.sync m16n8k16 on NVIDIA (32-lane warps), MFMA
// 16x16x16 on CDNA (64-lane waves); the host device runs each instruction
// through the model `host_target` names (0 sm_90, 1 gfx90a, 2 gfx942).
//
// vLLM's program (sequence, kv head) pads the kv head's qpk query heads to
// max(next_pow2(qpk), 16) rows; rows are independent, so here a workgroup
// is one wave owning 16 of them: grid (num_reqs, Hkv, cdiv(qpk, 16)). Only
// sequences with query_len 1 run (filter_by_query_len). Per head row h
// (ctx = seq_len - 1), tiles of D2_TILE keys (a.tile, the 2D decode's TILE)
// staged as D2_TP = round_up(TILE, 16) keys:
//   m = sink * LOG2E or -inf; l = 1 or 0; acc = 0
//   for t0 = 0, TILE, .. < seq_len (n = min(TILE, seq_len - t0) keys exist):
//     K, V of the n keys (an fp8 value dequantised to the query dtype), 0 past n
//     S = +0; for dc = 0, 16, .. D - 16: S = MMA(Q[:, dc..+16] K[:, dc..+16]^T + S)
//     s = j >= n ? -inf : visible(t, ctx, SW) ? score(S, bias) : -10000 * LOG2E + bias * LOG2E
//         (bias = slope_h * (t - ctx) with ALiBi, else 0)
//     tile_max (xor butterfly, order free); tile_begin (m_new, m_ref, alpha)
//     p = exp2c(s - m_ref); each lane sums its own keys of the row in
//       ascending order from 0, then the butterfly (part0 + part2) + (part1 + part3)
//     l = fmaf(l, alpha, tile_sum); m = m_new
//     acc = acc * alpha; for kc = 0, 16, .. TP - 16: acc = MMA(round_dtype(P[:, kc..+16]) V[kc..+16, :] + acc)
//   out = round(acc / (l + L_EPS)), NaN fresh. Padded rows (heads past qpk)
//   have Q = 0, read no sink or slope, and are not stored.
//
// Layouts as prefix_prefill_tc.hip. NVIDIA: S = Q K^T with Q as A (registers,
// loaded once), K^T as B from shared memory; lane l holds rows l/4, l/4 + 8
// and keys 2(l%4) + {0,1} of every 8-key column tile (lane parts l%4); the S
// accumulators of two column tiles are P's A fragment for one 16-key chunk.
// CDNA: S^T = K Q^T and O^T = V^T P^T, lane l holds row l%16 and keys
// 4(l/16) + i of each 16-key tile (lane parts l/16). K, then V, of a tile is
// gathered element by element through the layout into one shared buffer
// [D2_TP][D2_D + 8]. Compile-time: Q_DTYPE (bf16/f16), KV_DTYPE (Q_DTYPE or
// fp8), D2_D (head size, multiple of 16), D2_TP (the staged tile, multiple of 16).

typedef Storage<Q_DTYPE> E;
typedef Storage<KV_DTYPE> KVS;
#if Q_DTYPE == DT_BF16
#define D2_FMT MMA_BF16
#elif Q_DTYPE == DT_F16
#define D2_FMT MMA_F16
#else
#error "paged_decode_2d_tc: Q_DTYPE must be bf16 or f16"
#endif
#if KV_DTYPE != Q_DTYPE && KV_DTYPE != DT_FP8_FNUZ && KV_DTYPE != DT_FP8_FN
#error "paged_decode_2d_tc: the cache dtype must be the query dtype or fp8"
#endif

#ifndef D2_D
#define D2_D 128
#endif
#ifndef D2_TP
#define D2_TP 16
#endif
#if D2_D % 16 != 0 || D2_TP % 16 != 0
#error "paged_decode_2d_tc: D2_D and D2_TP must be multiples of 16"
#endif
#define D2_KS (D2_D + 8)
#define D2_DT (D2_D / 16)
#if WAVE_SIZE == 32
#define D2_VT (D2_D / 8)  // 8-wide column tiles of O
#define D2_RW 2           // rows per lane
#define D2_QF 4           // A fragment registers of Q
#define D2_KPT 8          // keys per S column tile
#else
#define D2_VT (D2_D / 16)
#define D2_RW 1
#define D2_QF 2
#define D2_KPT 16
#endif
#define D2_NT (D2_TP / D2_KPT)

struct Decode2dTcArgs {
    i64 num_heads, num_kv_heads, block_size, max_blocks, tile, window;
    i32 layout_kind, has_sinks, has_alibi, host_target;
    float scale, scale_log2, softcap, k_scale, v_scale, l_eps;
};

DEVICE u32 d2_pack(float lo, float hi) { return (u32)E::store(lo) | ((u32)E::store(hi) << 16); }

// Gathers K (IS_V false) or V of keys t0 .. t0 + n into buf [D2_TP][D2_KS]
// (storage bits of the query dtype), zeros for j in [n, D2_TP).
template <bool IS_V>
DEVICE void d2_stage(u16* buf, const Decode2dTcArgs& a, const typename KVS::T* cache, const i32* bt,
                     const KvLayout& L, i64 kvh, i64 t0, i64 n, int lane) {
    const float scale = IS_V ? a.v_scale : a.k_scale;
    for (int c = lane; c < D2_TP * D2_D; c += WAVE_SIZE) {
        const int j = c / D2_D, dd = c % D2_D;
        u16 x = 0;
        if (j < n) {
            const i64 t = t0 + j, blk = bt[t / a.block_size], off = t % a.block_size;
            const i64 o = IS_V ? v_offset(L, blk, off, kvh, dd) : k_offset(L, blk, off, kvh, dd);
            if constexpr (KV_DTYPE == Q_DTYPE) {
                x = (u16)cache[o];
            } else {
                x = E::store(dequant_kv<Q_DTYPE, KV_DTYPE>(cache[o], scale));
            }
        }
        buf[j * D2_KS + dd] = x;
    }
}

extern "C" __global__ void __launch_bounds__(WAVE_SIZE) paged_decode_2d_tc(
    const u16* __restrict__ query, const typename KVS::T* __restrict__ k_cache,
    const typename KVS::T* __restrict__ v_cache, const i32* __restrict__ block_table, const i32* __restrict__ qsl,
    const i32* __restrict__ seq_lens, const float* __restrict__ sinks, const float* __restrict__ alibi_slopes,
    u16* __restrict__ out, Decode2dTcArgs a) {
    extern __shared__ tile_f4 smem4[];
    u16* buf = reinterpret_cast<u16*>(smem4);
    const int lane = threadIdx.x;
    const i64 b = blockIdx.x, kvh = blockIdx.y, h0 = (i64)blockIdx.z * 16, hq = a.num_heads;
    const i64 q_start = qsl[b];
    if (qsl[b + 1] - q_start != 1) return;
    const i64 qpk = hq / a.num_kv_heads, seq_len = seq_lens[b], ctx = seq_len - 1;
    const i32* bt = block_table + b * a.max_blocks;
    const KvLayout L = {a.layout_kind, a.block_size, a.num_kv_heads, D2_D, 16 / (i64)sizeof(typename KVS::T)};
    const float window_masked2 = -10000.0f * LOG2E;

#if WAVE_SIZE == 32
    const int gr = lane >> 2, qp = lane & 3;
    const int rrow[D2_RW] = {gr, gr + 8};
#else
    const int gr = lane & 15, qp = lane >> 4;
    const int rrow[D2_RW] = {gr};
#endif
    bool rvalid[D2_RW];
    i64 rhead[D2_RW];
    float rslope[D2_RW], m_i[D2_RW], l_i[D2_RW];
#pragma unroll
    for (int hf = 0; hf < D2_RW; ++hf) {
        rvalid[hf] = h0 + rrow[hf] < qpk;
        rhead[hf] = kvh * qpk + h0 + rrow[hf];
        rslope[hf] = a.has_alibi && rvalid[hf] ? alibi_slopes[rhead[hf]] : 0.0f;
        m_i[hf] = a.has_sinks && rvalid[hf] ? sinks[rhead[hf]] * LOG2E : f32_neg_inf();
        l_i[hf] = a.has_sinks && rvalid[hf] ? 1.0f : 0.0f;
    }
    float acc[D2_VT][4];
#pragma unroll
    for (int vt = 0; vt < D2_VT; ++vt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[vt][i] = 0.0f;
    u32 qf[D2_DT][D2_QF];
    {
#if WAVE_SIZE == 32
        // A fragments of Q: rows gr / gr + 8, k 2qp + {0,1} (+ 8)
        const u32* qa = reinterpret_cast<const u32*>(query + (q_start * hq + (rvalid[0] ? rhead[0] : 0)) * D2_D);
        const u32* qb = reinterpret_cast<const u32*>(query + (q_start * hq + (rvalid[1] ? rhead[1] : 0)) * D2_D);
#pragma unroll
        for (int dc = 0; dc < D2_DT; ++dc) {
            qf[dc][0] = rvalid[0] ? qa[dc * 8 + qp] : 0u;
            qf[dc][1] = rvalid[1] ? qb[dc * 8 + qp] : 0u;
            qf[dc][2] = rvalid[0] ? qa[dc * 8 + 4 + qp] : 0u;
            qf[dc][3] = rvalid[1] ? qb[dc * 8 + 4 + qp] : 0u;
        }
#else
        // B fragments of Q^T: row gr, k 4qp + 0..3
        const u32* qa = reinterpret_cast<const u32*>(query + (q_start * hq + (rvalid[0] ? rhead[0] : 0)) * D2_D);
#pragma unroll
        for (int dc = 0; dc < D2_DT; ++dc) {
            qf[dc][0] = rvalid[0] ? qa[dc * 8 + 2 * qp] : 0u;
            qf[dc][1] = rvalid[0] ? qa[dc * 8 + 2 * qp + 1] : 0u;
        }
#endif
    }

    for (i64 t0 = 0; t0 < seq_len; t0 += a.tile) {
        const i64 n = min(a.tile, seq_len - t0);
        float s[D2_NT][4];
        __syncthreads();  // the previous tile's V is no longer read
        d2_stage<false>(buf, a, k_cache, bt, L, kvh, t0, n, lane);
        __syncthreads();
        // ---- S = Q K^T, chained along d.
#pragma unroll
        for (int nt = 0; nt < D2_NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#if WAVE_SIZE == 32
#pragma unroll
        for (int nt = 0; nt < D2_NT; ++nt)
#pragma unroll
            for (int dc = 0; dc < D2_DT; ++dc) {
                const u16* kr = buf + (nt * 8 + gr) * D2_KS + dc * 16 + 2 * qp;
                const u32 kb[2] = {(u32)kr[0] | ((u32)kr[1] << 16), (u32)kr[8] | ((u32)kr[9] << 16)};
                mma_m16n8k16_acc<D2_FMT>(qf[dc], kb, s[nt], a.host_target);
            }
#else
#pragma unroll
        for (int nt = 0; nt < D2_NT; ++nt)
#pragma unroll
            for (int dc = 0; dc < D2_DT; ++dc) {
                const u16* kr = buf + (nt * 16 + gr) * D2_KS + dc * 16 + 4 * qp;
                const u32 ka[2] = {(u32)kr[0] | ((u32)kr[1] << 16), (u32)kr[2] | ((u32)kr[3] << 16)};
                mfma_16x16x16_acc<D2_FMT>(ka, qf[dc], s[nt], a.host_target);
            }
#endif
        // ---- mask and score.
#pragma unroll
        for (int nt = 0; nt < D2_NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#if WAVE_SIZE == 32
                const int hf = i >> 1, j = nt * 8 + 2 * qp + (i & 1);
#else
                const int hf = 0, j = nt * 16 + 4 * qp + i;
#endif
                const i64 t = t0 + j;
                if (j >= n) {
                    s[nt][i] = f32_neg_inf();
                } else {
                    const float bias = a.has_alibi ? rslope[hf] * ((float)t - (float)ctx) : 0.0f;
                    s[nt][i] = visible(t, ctx, true, a.window)
                                   ? score(s[nt][i], a.scale, a.scale_log2, a.softcap, bias)
                                   : window_masked2 + bias * LOG2E;
                }
            }
        // ---- row statistics; p = exp2c(s - m_ref) in place.
        float alpha[D2_RW];
#pragma unroll
        for (int hf = 0; hf < D2_RW; ++hf) {
            float mx = f32_neg_inf();
#pragma unroll
            for (int nt = 0; nt < D2_NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    if (WAVE_SIZE == 64 || (i >> 1) == hf) mx = fmaxf(mx, s[nt][i]);
            mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 2 : 32));
            mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 1 : 16));
            const TileStats ts = tile_begin(m_i[hf], mx);
            float part = 0.0f;
#pragma unroll
            for (int nt = 0; nt < D2_NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    if (WAVE_SIZE == 64 || (i >> 1) == hf) {
                        s[nt][i] = exp2c(s[nt][i] - ts.m_ref);
                        part = part + s[nt][i];
                    }
            part = part + SHFL_XOR(part, WAVE_SIZE == 32 ? 2 : 32);
            part = part + SHFL_XOR(part, WAVE_SIZE == 32 ? 1 : 16);
            l_i[hf] = fmaf(l_i[hf], ts.alpha, part);
            m_i[hf] = ts.m_new;
            alpha[hf] = ts.alpha;
        }
#pragma unroll
        for (int vt = 0; vt < D2_VT; ++vt)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[vt][i] = acc[vt][i] * alpha[WAVE_SIZE == 32 ? (i >> 1) : 0];
        __syncthreads();  // K is no longer read
        d2_stage<true>(buf, a, v_cache, bt, L, kvh, t0, n, lane);
        __syncthreads();
        // ---- acc = P V + acc, chained along the tile's 16-key chunks.
#if WAVE_SIZE == 32
#pragma unroll
        for (int kc = 0; kc < D2_TP / 16; ++kc) {
            const u32 pa[4] = {d2_pack(s[2 * kc][0], s[2 * kc][1]), d2_pack(s[2 * kc][2], s[2 * kc][3]),
                               d2_pack(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                               d2_pack(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
            for (int vt = 0; vt < D2_VT; ++vt) {
                const u16* vc = buf + (kc * 16 + 2 * qp) * D2_KS + vt * 8 + gr;
                const u32 vb[2] = {(u32)vc[0] | ((u32)vc[D2_KS] << 16),
                                   (u32)vc[8 * D2_KS] | ((u32)vc[9 * D2_KS] << 16)};
                mma_m16n8k16_acc<D2_FMT>(pa, vb, acc[vt], a.host_target);
            }
        }
#else
#pragma unroll
        for (int kc = 0; kc < D2_NT; ++kc) {
            const u32 pb[2] = {d2_pack(s[kc][0], s[kc][1]), d2_pack(s[kc][2], s[kc][3])};
#pragma unroll
            for (int vt = 0; vt < D2_VT; ++vt) {
                const u16* vc = buf + (kc * 16 + 4 * qp) * D2_KS + vt * 16 + gr;
                const u32 va[2] = {(u32)vc[0] | ((u32)vc[D2_KS] << 16),
                                   (u32)vc[2 * D2_KS] | ((u32)vc[3 * D2_KS] << 16)};
                mfma_16x16x16_acc<D2_FMT>(va, pb, acc[vt], a.host_target);
            }
        }
#endif
    }

    // ---- out = round(acc / (l + L_EPS)), real heads only.
#pragma unroll
    for (int hf = 0; hf < D2_RW; ++hf) {
        if (!rvalid[hf]) continue;
        const float denom = l_i[hf] + a.l_eps;
        u16* orow = out + (q_start * hq + rhead[hf]) * D2_D;
#if WAVE_SIZE == 32
#pragma unroll
        for (int vt = 0; vt < D2_VT; ++vt) {
            orow[vt * 8 + 2 * qp] = E::store(nan_fresh(acc[vt][2 * hf] / denom));
            orow[vt * 8 + 2 * qp + 1] = E::store(nan_fresh(acc[vt][2 * hf + 1] / denom));
        }
#else
#pragma unroll
        for (int vt = 0; vt < D2_VT; ++vt)
#pragma unroll
            for (int i = 0; i < 4; ++i) orow[vt * 16 + 4 * qp + i] = E::store(nan_fresh(acc[vt][i] / denom));
#endif
    }
}
