// prefix_prefill_tc.hip: sim/src/kernels/prefix_prefill_tc.rs, the
// tensor-core flavour of prefix_prefill.hip (vLLM's Triton
// context_attention_fwd: _fwd_kernel, and _fwd_kernel_alibi with ALiBi): the
// cached context, then the new tokens, every key read from the paged cache
// through the block table in any KvLayout (ROCM_ATTN's x-packed K and
// transposed V included), Q.K^T and P.V on the matrix cores. Bit-exact with
// the sim *for the target it ran on* (numerics.md §6): mma.sync m16n8k16 on
// NVIDIA (32-lane warps, MatrixTarget::Sm90), MFMA 16x16x16 on CDNA (64-lane
// waves); the host device runs each instruction through the model
// `host_target` names (0 sm_90, 1 gfx90a, 2 gfx942).
//
// The sim's program (b, head, start_m) owns BLOCK_M query rows of one head;
// a wave owns 16 of them and runs the program's loop. A workgroup is
// PP_WARPS waves: 16 * PP_WARPS consecutive rows of one request and head
// (a divisor of BLOCK_M, so all its waves run the same program's tiles); it
// only shares the staging of K and V. Grid (cdiv(max q_len, 16 * PP_WARPS),
// num_reqs, Hq). Per row (p = ctx + i):
//   (A) tiles of PP_CT keys t = s + j, s = 0, PP_CT, .. < ctx; no causal mask
//   (B) tiles of PP_BN keys t = ctx + s + j, s = 0, PP_BN, .. < min(upper,
//       q_len), upper = causal ? (start_m + 1) * BLOCK_M : round_up(q_len, PP_BN)
//   per tile (keys past the phase's end: K = V = 0, masked):
//     S = +0; for dc = 0, 16, .. D - 16: S = MMA(Q[:, dc..+16] K[:, dc..+16]^T + S)
//     s = valid and visible(t, p, causal (B only), SW) ? score(S, bias) : -inf
//         (alibi: bias = slope * (t - p), -inf where bias > 0, no window)
//     tile_max (xor butterfly, order free); tile_begin (m_new, m_ref, alpha)
//     p = exp2c(s - m_ref); each lane sums its own keys of the row in
//       ascending order from 0, then the butterfly (part0 + part2) + (part1 + part3)
//     l = fmaf(l, alpha, tile_sum); m = m_new
//     acc = acc * alpha; for kc = 0, 16, .. TILE - 16:
//       acc = MMA(round_dtype(P[:, kc..+16]) V[kc..+16, :] + acc)
//   out = round(acc / (l + L_EPS)), NaN fresh. Rows of requests with q_len == 0,
//   or q_len == 1 under skip_decode, are not touched.
//
// Layouts as unified_attention_tc.hip. NVIDIA: S = Q K^T with Q as A
// (registers, loaded once), K^T as B from shared memory; lane l holds rows
// l/4, l/4 + 8 and keys 2(l%4) + {0,1} of every 8-key column tile (lane parts
// l%4); the S accumulators of two column tiles are P's A fragment for one
// 16-key chunk. CDNA: S^T = K Q^T and O^T = V^T P^T, lane l holds row l%16
// and keys 4(l/16) + i of each 16-key tile (lane parts l/16). K, then V, of
// a tile is gathered element by element through the layout (an fp8 value
// dequantised to the query dtype) into one shared buffer [TILE][PP_D + 8].
// Compile-time: Q_DTYPE (bf16/f16), KV_DTYPE (Q_DTYPE or fp8), PP_D (head
// size, multiple of 16), PP_CT and PP_BN (the phases' tiles, multiples of
// 16), PP_WARPS (waves per workgroup).

typedef Storage<Q_DTYPE> E;
typedef Storage<KV_DTYPE> KVS;
#if Q_DTYPE == DT_BF16
#define PP_FMT MMA_BF16
#elif Q_DTYPE == DT_F16
#define PP_FMT MMA_F16
#else
#error "prefix_prefill_tc: Q_DTYPE must be bf16 or f16"
#endif
#if KV_DTYPE != Q_DTYPE && KV_DTYPE != DT_FP8_FNUZ && KV_DTYPE != DT_FP8_FN
#error "prefix_prefill_tc: the cache dtype must be the query dtype or fp8"
#endif

#ifndef PP_D
#define PP_D 128
#endif
#ifndef PP_CT
#define PP_CT 32
#endif
#ifndef PP_BN
#define PP_BN 64
#endif
#ifndef PP_WARPS
#define PP_WARPS 4
#endif
#if PP_D % 16 != 0 || PP_CT % 16 != 0 || PP_BN % 16 != 0
#error "prefix_prefill_tc: PP_D, PP_CT and PP_BN must be multiples of 16"
#endif
#define PP_THREADS (PP_WARPS * WAVE_SIZE)
#define PP_KS (PP_D + 8)
#define PP_DT (PP_D / 16)
#if WAVE_SIZE == 32
#define PP_VT (PP_D / 8)  // 8-wide column tiles of O
#define PP_RW 2           // rows per lane
#define PP_QF 4           // A fragment registers of Q
#define PP_KPT 8          // keys per S column tile
#else
#define PP_VT (PP_D / 16)
#define PP_RW 1
#define PP_QF 2
#define PP_KPT 16
#endif

struct PrefixTcArgs {
    i64 num_heads, num_kv_heads, block_size, max_blocks, block_m, window;
    i32 layout_kind, causal, skip_decode, has_sinks, has_alibi, host_target;
    float scale, scale_log2, softcap, k_scale, v_scale, l_eps;
};

DEVICE u32 pp_pack(float lo, float hi) { return (u32)E::store(lo) | ((u32)E::store(hi) << 16); }

// One wave's rows and their running state.
struct PpWave {
    bool active;  // any row of the wave exists
    bool rvalid[PP_RW];
    i64 rpos[PP_RW];  // query position p = ctx + i
    float rslope[PP_RW];
    float m_i[PP_RW], l_i[PP_RW];
    float acc[PP_VT][4];
    u32 qf[PP_DT][PP_QF];
};

// What every tile of the workgroup reads.
struct PpTileCtx {
    const typename KVS::T* k_cache;
    const typename KVS::T* v_cache;
    const i32* bt;
    KvLayout L;
    i64 kvh;
};

// Gathers K (IS_V false) or V of keys t0 .. t0 + n into buf [TILE][PP_KS]
// (storage bits of the query dtype), zeros for j in [n, TILE).
template <bool IS_V, int TILE>
DEVICE void pp_stage(u16* buf, const PrefixTcArgs& a, const PpTileCtx& g, i64 t0, i64 n, int tid) {
    const typename KVS::T* cache = IS_V ? g.v_cache : g.k_cache;
    const float scale = IS_V ? a.v_scale : a.k_scale;
    for (int c = tid; c < TILE * PP_D; c += PP_THREADS) {
        const int j = c / PP_D, dd = c % PP_D;
        u16 x = 0;
        if (j < n) {
            const i64 t = t0 + j, blk = g.bt[t / a.block_size], off = t % a.block_size;
            const i64 o = IS_V ? v_offset(g.L, blk, off, g.kvh, dd) : k_offset(g.L, blk, off, g.kvh, dd);
            if constexpr (KV_DTYPE == Q_DTYPE) {
                x = (u16)cache[o];
            } else {
                x = E::store(dequant_kv<Q_DTYPE, KV_DTYPE>(cache[o], scale));
            }
        }
        buf[j * PP_KS + dd] = x;
    }
}

// One tile of TILE keys starting at t0 (n of them exist) for every wave.
template <int TILE>
DEVICE void pp_tile(PpWave& w, u16* buf, const PrefixTcArgs& a, const PpTileCtx& g, i64 t0, i64 n, bool causal,
                    int tid, int lane) {
    constexpr int NT = TILE / PP_KPT;
#if WAVE_SIZE == 32
    const int gr = lane >> 2, qp = lane & 3;
#else
    const int gr = lane & 15, qp = lane >> 4;
#endif
    const i64 window = a.has_alibi ? 0 : a.window;
    float s[NT][4];
    __syncthreads();  // the previous tile's V is no longer read
    pp_stage<false, TILE>(buf, a, g, t0, n, tid);
    __syncthreads();
    if (w.active) {
        // ---- S = Q K^T, chained along d.
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#if WAVE_SIZE == 32
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int dc = 0; dc < PP_DT; ++dc) {
                const u16* kr = buf + (nt * 8 + gr) * PP_KS + dc * 16 + 2 * qp;
                const u32 kb[2] = {(u32)kr[0] | ((u32)kr[1] << 16), (u32)kr[8] | ((u32)kr[9] << 16)};
                mma_m16n8k16_acc<PP_FMT>(w.qf[dc], kb, s[nt], a.host_target);
            }
#else
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int dc = 0; dc < PP_DT; ++dc) {
                const u16* kr = buf + (nt * 16 + gr) * PP_KS + dc * 16 + 4 * qp;
                const u32 ka[2] = {(u32)kr[0] | ((u32)kr[1] << 16), (u32)kr[2] | ((u32)kr[3] << 16)};
                mfma_16x16x16_acc<PP_FMT>(ka, w.qf[dc], s[nt], a.host_target);
            }
#endif
        // ---- mask and score.
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#if WAVE_SIZE == 32
                const int hf = i >> 1, j = nt * 8 + 2 * qp + (i & 1);
#else
                const int hf = 0, j = nt * 16 + 4 * qp + i;
#endif
                const i64 t = t0 + j, p = w.rpos[hf];
                bool vis = w.rvalid[hf] && j < n && visible(t, p, causal, window);
                float bias = 0.0f;
                if (a.has_alibi) {
                    bias = w.rslope[hf] * ((float)t - (float)p);
                    vis = vis && bias <= 0.0f;
                }
                s[nt][i] = vis ? score(s[nt][i], a.scale, a.scale_log2, a.softcap, bias) : f32_neg_inf();
            }
        // ---- row statistics; p = exp2c(s - m_ref) in place.
        float alpha[PP_RW];
#pragma unroll
        for (int hf = 0; hf < PP_RW; ++hf) {
            float mx = f32_neg_inf();
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    if (WAVE_SIZE == 64 || (i >> 1) == hf) mx = fmaxf(mx, s[nt][i]);
            mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 2 : 32));
            mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 1 : 16));
            const TileStats ts = tile_begin(w.m_i[hf], mx);
            float part = 0.0f;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    if (WAVE_SIZE == 64 || (i >> 1) == hf) {
                        s[nt][i] = exp2c(s[nt][i] - ts.m_ref);
                        part = part + s[nt][i];
                    }
            part = part + SHFL_XOR(part, WAVE_SIZE == 32 ? 2 : 32);
            part = part + SHFL_XOR(part, WAVE_SIZE == 32 ? 1 : 16);
            w.l_i[hf] = fmaf(w.l_i[hf], ts.alpha, part);
            w.m_i[hf] = ts.m_new;
            alpha[hf] = ts.alpha;
        }
#pragma unroll
        for (int vt = 0; vt < PP_VT; ++vt)
#pragma unroll
            for (int i = 0; i < 4; ++i) w.acc[vt][i] = w.acc[vt][i] * alpha[WAVE_SIZE == 32 ? (i >> 1) : 0];
    }
    __syncthreads();  // K is no longer read
    pp_stage<true, TILE>(buf, a, g, t0, n, tid);
    __syncthreads();
    if (w.active) {
        // ---- acc = P V + acc, chained along the tile's 16-key chunks.
#if WAVE_SIZE == 32
#pragma unroll
        for (int kc = 0; kc < TILE / 16; ++kc) {
            const u32 pa[4] = {pp_pack(s[2 * kc][0], s[2 * kc][1]), pp_pack(s[2 * kc][2], s[2 * kc][3]),
                               pp_pack(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                               pp_pack(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
            for (int vt = 0; vt < PP_VT; ++vt) {
                const u16* vc = buf + (kc * 16 + 2 * qp) * PP_KS + vt * 8 + gr;
                const u32 vb[2] = {(u32)vc[0] | ((u32)vc[PP_KS] << 16),
                                   (u32)vc[8 * PP_KS] | ((u32)vc[9 * PP_KS] << 16)};
                mma_m16n8k16_acc<PP_FMT>(pa, vb, w.acc[vt], a.host_target);
            }
        }
#else
#pragma unroll
        for (int kc = 0; kc < NT; ++kc) {
            const u32 pb[2] = {pp_pack(s[kc][0], s[kc][1]), pp_pack(s[kc][2], s[kc][3])};
#pragma unroll
            for (int vt = 0; vt < PP_VT; ++vt) {
                const u16* vc = buf + (kc * 16 + 4 * qp) * PP_KS + vt * 16 + gr;
                const u32 va[2] = {(u32)vc[0] | ((u32)vc[PP_KS] << 16),
                                   (u32)vc[2 * PP_KS] | ((u32)vc[3 * PP_KS] << 16)};
                mfma_16x16x16_acc<PP_FMT>(va, pb, w.acc[vt], a.host_target);
            }
        }
#endif
    }
}

extern "C" __global__ void __launch_bounds__(PP_THREADS) context_attention_fwd_tc(
    const u16* __restrict__ query, const typename KVS::T* __restrict__ k_cache,
    const typename KVS::T* __restrict__ v_cache, const i32* __restrict__ block_table, const i32* __restrict__ qsl,
    const i32* __restrict__ seq_lens, const float* __restrict__ sinks, const float* __restrict__ alibi_slopes,
    u16* __restrict__ out, PrefixTcArgs a) {
    extern __shared__ tile_f4 smem4[];
    u16* buf = reinterpret_cast<u16*>(smem4);
    const int tid = threadIdx.x, warp = tid / WAVE_SIZE, lane = tid % WAVE_SIZE;
    const i64 b = blockIdx.y, head = blockIdx.z, hq = a.num_heads;
    const i64 q_start = qsl[b], q_len = qsl[b + 1] - q_start, ctx = seq_lens[b] - q_len;
    const i64 row0 = (i64)blockIdx.x * 16 * PP_WARPS;
    if (q_len == 0 || (a.skip_decode && q_len == 1) || row0 >= q_len) return;
    const i64 start_m = row0 / a.block_m;
    const bool causal = a.causal != 0;
    PpTileCtx g;
    g.k_cache = k_cache;
    g.v_cache = v_cache;
    g.bt = block_table + b * a.max_blocks;
    KvLayout L = {a.layout_kind, a.block_size, a.num_kv_heads, PP_D, 16 / (i64)sizeof(typename KVS::T)};
    g.L = L;
    g.kvh = head / (hq / a.num_kv_heads);

#if WAVE_SIZE == 32
    const int gr = lane >> 2, qp = lane & 3;
    const int rrow[PP_RW] = {gr, gr + 8};
#else
    const int gr = lane & 15, qp = lane >> 4;
    const int rrow[PP_RW] = {gr};
#endif
    const i64 wrow0 = row0 + 16 * warp;  // the wave's first row
    PpWave w;
    w.active = wrow0 < q_len;
#pragma unroll
    for (int hf = 0; hf < PP_RW; ++hf) {
        const i64 i = wrow0 + rrow[hf];
        w.rvalid[hf] = i < q_len;
        w.rpos[hf] = ctx + i;
        w.rslope[hf] = a.has_alibi ? alibi_slopes[head] : 0.0f;
        w.m_i[hf] = a.has_sinks ? sinks[head] * LOG2E : f32_neg_inf();
        w.l_i[hf] = a.has_sinks ? 1.0f : 0.0f;
    }
#pragma unroll
    for (int vt = 0; vt < PP_VT; ++vt)
#pragma unroll
        for (int i = 0; i < 4; ++i) w.acc[vt][i] = 0.0f;
    {
#if WAVE_SIZE == 32
        // A fragments of Q: rows gr / gr + 8, k 2qp + {0,1} (+ 8)
        const u32* qa = reinterpret_cast<const u32*>(query + ((q_start + wrow0 + rrow[0]) * hq + head) * PP_D);
        const u32* qb = reinterpret_cast<const u32*>(query + ((q_start + wrow0 + rrow[1]) * hq + head) * PP_D);
#pragma unroll
        for (int dc = 0; dc < PP_DT; ++dc) {
            w.qf[dc][0] = w.rvalid[0] ? qa[dc * 8 + qp] : 0u;
            w.qf[dc][1] = w.rvalid[1] ? qb[dc * 8 + qp] : 0u;
            w.qf[dc][2] = w.rvalid[0] ? qa[dc * 8 + 4 + qp] : 0u;
            w.qf[dc][3] = w.rvalid[1] ? qb[dc * 8 + 4 + qp] : 0u;
        }
#else
        // B fragments of Q^T: row gr, k 4qp + 0..3
        const u32* qa = reinterpret_cast<const u32*>(query + ((q_start + wrow0 + rrow[0]) * hq + head) * PP_D);
#pragma unroll
        for (int dc = 0; dc < PP_DT; ++dc) {
            w.qf[dc][0] = w.rvalid[0] ? qa[dc * 8 + 2 * qp] : 0u;
            w.qf[dc][1] = w.rvalid[0] ? qa[dc * 8 + 2 * qp + 1] : 0u;
        }
#endif
    }

    // (A) the cached context: no causal mask.
    for (i64 s = 0; s < ctx; s += PP_CT) pp_tile<PP_CT>(w, buf, a, g, s, min((i64)PP_CT, ctx - s), false, tid, lane);
    // (B) the new tokens.
    const i64 upper = causal ? (start_m + 1) * a.block_m : (q_len + PP_BN - 1) / PP_BN * PP_BN;
    for (i64 s = 0; s < min(upper, q_len); s += PP_BN)
        pp_tile<PP_BN>(w, buf, a, g, ctx + s, min((i64)PP_BN, q_len - s), causal, tid, lane);

    // ---- out = round(acc / (l + L_EPS)).
#pragma unroll
    for (int hf = 0; hf < PP_RW; ++hf) {
        if (!w.rvalid[hf]) continue;
        const float denom = w.l_i[hf] + a.l_eps;
        u16* orow = out + ((q_start + wrow0 + rrow[hf]) * hq + head) * PP_D;
#if WAVE_SIZE == 32
#pragma unroll
        for (int vt = 0; vt < PP_VT; ++vt) {
            orow[vt * 8 + 2 * qp] = E::store(nan_fresh(w.acc[vt][2 * hf] / denom));
            orow[vt * 8 + 2 * qp + 1] = E::store(nan_fresh(w.acc[vt][2 * hf + 1] / denom));
        }
#else
#pragma unroll
        for (int vt = 0; vt < PP_VT; ++vt)
#pragma unroll
            for (int i = 0; i < 4; ++i) orow[vt * 16 + 4 * qp + i] = E::store(nan_fresh(w.acc[vt][i] / denom));
#endif
    }
}
