// unified_attention_tc.hip: sim/src/kernels/unified_attention_tc.rs, the
// tensor-core flavour of unified_attention.hip (vLLM's Triton
// kernel_unified_attention_2d / _3d; AITER's copy): one launch over the whole
// batch, every key read from the paged NHD cache through the block table,
// Q.K^T and P.V on the matrix cores. Bit-exact with the sim *for the target
// it ran on* (numerics.md §6): mma.sync m16n8k16 on NVIDIA (32-lane warps,
// MatrixTarget::Sm90), MFMA 16x16x16 on CDNA (64-lane waves); the host
// device runs each instruction through the model `host_target` names (0
// sm_90, 1 gfx90a, 2 gfx942).
//
// Programs are vLLM's: q-block qblk of request seq, KV head kvh (segment s
// in 3D); BLOCK_M = UT_BM rows, row m < BLOCK_Q * qpk = token qblk * BLOCK_Q
// + m / qpk, head kvh * qpk + m % qpk. A wave owns 16 rows of one program
// (UT_BM / 16 waves per program), computes on the program's tiles
// (compute_tile_loop_bounds, cut to the segment) and nothing else; the
// workgroup (UT_WARPS waves: UT_WARPS / (UT_BM / 16) consecutive q-blocks of
// one request and KV head) only shares the staging of K and V tiles, so
// which programs share a workgroup changes no bit. Per tile j of UT_TILE
// keys t = j * UT_TILE + jj (K and V zero for t >= seq_len; an fp8 cache
// element becomes a query-dtype operand at the staging, unified_attention.rs
// Flavor::kv_to_q: vLLM portable.h dequant_kv, round(f32(x) * scale); AITER
// the exact widening, its k_scale folded into a.scale by the launcher), per row:
//   S = +0; for dc = 0, 16, .. D - 16: S = MMA(Q[:, dc..+16] K[:, dc..+16]^T + S)
//   s = allowed(t, qabs) ? score_f(S, alibi slope * (t - ctx), formula) : -inf
//   tile_max (xor butterfly, order free); tile_begin (m_new, m_ref, alpha)
//   p = exp2c(s - m_ref); each lane sums its own keys of the row in
//     ascending order from 0, then the butterfly (part0 + part2) + (part1 + part3)
//   l = fmaf(l, alpha, tile_sum); m = m_new, then keep_zero_max (AITER, seed era)
//   acc = acc * alpha; for kc = 0, 16, .. UT_TILE - 16:
//     acc = MMA(round_dtype(P[:, kc..+16]) V[kc..+16, :] + acc)
// 2D: out = round(acc / l) (vLLM) or round(acc * (v_descale / l)) (AITER;
// v_descale = v_scale over an fp8 cache, else 1), unguarded, NaN fresh.
// 3D: f32 partials (acc [* v_scale, AITER over fp8], m, l) per segment;
// unified_attention.hip's reduce_segments combines them.
//
// Layouts as flash_varlen_tc.hip. NVIDIA: S = Q K^T with Q as A (registers,
// loaded once), K^T as B from shared memory; lane l holds rows l/4, l/4 + 8
// and keys 2(l%4) + {0,1} of every 8-key column tile (lane parts l%4); the S
// accumulators of two column tiles are P's A fragment for one 16-key chunk;
// V is B (ldmatrix.trans). CDNA: S^T = K Q^T and O^T = V^T P^T, lane l holds
// row l%16 and keys 4(l/16) + i of each 16-key tile (lane parts l/16).
// K and V tiles staged in shared memory (query-dtype bits) with rows padded
// by 16 bytes; on NVIDIA by cp.async, double buffered (an fp8 cache: 8-byte
// loads converted to 16 bytes by the threads, into the same buffers). Grid
// (cdiv(max q-blocks, q-blocks per workgroup), num_reqs, Hkv * segments),
// the last q-blocks (most keys) first. Compile-time: Q_DTYPE (bf16/f16),
// KV_DTYPE (Q_DTYPE or either fp8), UT_D (head size, multiple of 16),
// UT_TILE (TILE_SIZE, multiple of 16), UT_BM (BLOCK_M, multiple of 16),
// UT_WARPS (a multiple of UT_BM / 16).

typedef Storage<Q_DTYPE> E;
typedef Storage<KV_DTYPE> KVS;
#define UT_KV_FP8 (KV_DTYPE == DT_FP8_FNUZ || KV_DTYPE == DT_FP8_FN)
#if KV_DTYPE != Q_DTYPE && !UT_KV_FP8
#error "unified_attention_tc: the cache dtype must be the query dtype or fp8"
#endif
#if Q_DTYPE == DT_BF16
#define UT_FMT MMA_BF16
#elif Q_DTYPE == DT_F16
#define UT_FMT MMA_F16
#else
#error "unified_attention_tc: Q_DTYPE must be bf16 or f16"
#endif

#ifndef UT_D
#define UT_D 128
#endif
#ifndef UT_TILE
#define UT_TILE 32
#endif
#ifndef UT_BM
#define UT_BM 16
#endif
#ifndef UT_WARPS
#define UT_WARPS 4
#endif
#if UT_D % 16 != 0 || UT_TILE % 16 != 0 || UT_BM % 16 != 0 || UT_WARPS % (UT_BM / 16) != 0
#error "unified_attention_tc: UT_D, UT_TILE, UT_BM multiples of 16, UT_WARPS a multiple of UT_BM / 16"
#endif
#define UT_WPP (UT_BM / 16)          // waves per program
#define UT_PPW (UT_WARPS / UT_WPP)   // programs (q-blocks) per workgroup
#define UT_THREADS (UT_WARPS * WAVE_SIZE)
#if defined(ATTNLAB_CUDA)
#define UT_STAGES 2
#define UT_LAUNCH_BOUNDS __launch_bounds__(UT_THREADS, 1)
#else
#define UT_STAGES 1
#define UT_LAUNCH_BOUNDS __launch_bounds__(UT_THREADS)
#endif
#define UT_KS (UT_D + 8)
#define UT_STAGE_ELEMS (UT_TILE * 2 * UT_KS)

struct UnifiedTcArgs {
    i64 num_heads, num_kv_heads, block_size, max_blocks, block_q, num_segments, window;
    i32 causal, flavor, is_3d, has_sinks, has_alibi, softcap_formula, zero_masked_max, host_target;
    // scale: the flavour's score scale (AITER over fp8: times k_scale);
    // k_scale / v_scale: vLLM's fp8 dequant at the load; v_descale: AITER's
    // epilogue factor (v_scale over fp8, else 1).
    float scale, scale_log2, softcap, k_scale, v_scale, v_descale;
};

DEVICE u32 ut_pack(float lo, float hi) { return (u32)E::store(lo) | ((u32)E::store(hi) << 16); }
// P for the instruction (values in [0, 1], or NaN): on NVIDIA the conversion
// instruction (RNE, no flush: the same bits for every finite p; a NaN p makes
// the instruction return its one NaN either way).
DEVICE u32 ut_pack_p(float lo, float hi) {
#if defined(ATTNLAB_CUDA)
    u32 r;
    if constexpr (Q_DTYPE == DT_BF16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
#else
    return ut_pack(lo, hi);
#endif
}

// portable.h exp2c, branch-free: the same operations on the in-range path,
// the special cases selected at the end (the same bits for every x).
DEVICE float ut_exp2c(float x) {
    const float xc = fminf(fmaxf(x, EXP2C_MIN_X), 128.0f);
    const float n = rintf(xc);
    const float f = xc - n;
    float p = EXP2C_C0;
    p = fmaf(p, f, EXP2C_C1);
    p = fmaf(p, f, EXP2C_C2);
    p = fmaf(p, f, EXP2C_C3);
    p = fmaf(p, f, EXP2C_C4);
    p = fmaf(p, f, EXP2C_C5);
    p = fmaf(p, f, EXP2C_C6);
    p = fmaf(p, f, EXP2C_C7);
    const i32 ni = (i32)n;
    const float s1 = pow2i(min(max(ni, -126), 127));
    const float s2 = ni > 127 ? 2.0f : (ni < -126 ? __uint_as_float((u32)(ni + 126 + 127) << 23) : 1.0f);
    float r = p * s1 * s2;
    r = x >= 128.0f ? f32_inf() : r;
    r = x < EXP2C_MIN_X ? 0.0f : r;
    return is_nan(x) ? x : r;
}

// The fma family's mask (unified_attention.hip `allowed`).
DEVICE bool ut_allowed(i64 t, i64 qabs, i64 seq_len, bool causal, i64 window) {
    return t < seq_len && visible(t, qabs, causal, window) && (causal || window == 0 || t < qabs + window);
}

// compute_tile_loop_bounds of q-block qblk cut to segment seg: tiles [lo, hi).
DEVICE void ut_bounds(i64 qblk, i64 q_len, i64 seq_len, i64 qpk, i64 bq, bool causal, i64 window, i64 seg,
                      i64 tps, i64& lo, i64& hi) {
    const i64 ctx = seq_len - q_len;
    i64 max_prefix = seq_len;
    if (causal) max_prefix = min(ctx + qblk * bq + (UT_BM - 1) / qpk + 1, seq_len);
    const i64 num_tiles = (max_prefix + UT_TILE - 1) / UT_TILE;
    i64 ts = 0, te = num_tiles;
    if (window > 0) {
        const i64 qlo = qblk * bq;
        const i64 qhi = min(qlo + (UT_BM - 1) / qpk, q_len - 1);
        const i64 first = ctx + qlo + 1 > window ? ctx + qlo + 1 - window : 0;
        const i64 last = min(ctx + qhi + (causal ? 0 : window - 1), seq_len - 1);
        ts = first / UT_TILE;
        te = min(last / UT_TILE + 1, num_tiles);
    }
    lo = max(seg * tps, ts);
    hi = min((seg + 1) * tps, te);
}

#if defined(ATTNLAB_CUDA)
DEVICE u32 ut_smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
DEVICE void ut_copy16(u16* dst, const u16* src, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(ut_smem_addr(dst)), "l"(src),
                 "r"(ok ? 16 : 0));
}
DEVICE void ut_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> DEVICE void ut_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
DEVICE void ut_ldsm_x4_trans(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ut_smem_addr(p)));
}
#else
struct __attribute__((aligned(16))) ut_u4 {
    u32 v[4];
};
DEVICE void ut_copy16(u16* dst, const u16* src, bool ok) {
    ut_u4 x = {{0u, 0u, 0u, 0u}};
    if (ok) x = *reinterpret_cast<const ut_u4*>(src);
    *reinterpret_cast<ut_u4*>(dst) = x;
}
#endif

#if UT_KV_FP8
// Eight fp8 cache elements at src (8-byte aligned) as query-dtype bits in
// dst (16 bytes), each as the flavour loads it (Flavor::kv_to_q: vLLM
// dequant_kv, AITER the exact widening); zeros when !ok.
DEVICE void ut_convert8(u16* dst, const u8* src, bool ok, float scale, bool vllm) {
    u32 w[2] = {0u, 0u};
    if (ok) {
        const u32* s4 = reinterpret_cast<const u32*>(src);
        w[0] = s4[0];
        w[1] = s4[1];
    }
    u32 o[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        u16 h[2];
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const u8 raw = (u8)(w[i / 2] >> (8 * (2 * (i % 2) + k)));
            h[k] = ok ? E::store(vllm ? dequant_kv<Q_DTYPE, KV_DTYPE>(raw, scale) : KVS::load(raw)) : (u16)0;
        }
        o[i] = (u32)h[0] | ((u32)h[1] << 16);
    }
    u32* d4 = reinterpret_cast<u32*>(dst);
#pragma unroll
    for (int i = 0; i < 4; ++i) d4[i] = o[i];
}
#endif

// Stages the K and V rows of keys t0 .. t0 + UT_TILE (zeros from seq_len on)
// into Ks / Vs [UT_TILE][UT_KS] (query-dtype bits), through the block table.
DEVICE void ut_stage(u16* Ks, u16* Vs, const KVS::T* kc, const KVS::T* vc, const i32* bt, i64 bs, i64 kv_row,
                     i64 head_off, i64 t0, i64 seq_len, int tid, const UnifiedTcArgs& a) {
    constexpr int KC = UT_D / 8;
    for (int c = tid; c < UT_TILE * KC; c += UT_THREADS) {
        const int j = c / KC, x = c % KC;
        const i64 t = t0 + j;
        const bool ok = t < seq_len;
        const i64 off = ok ? ((i64)bt[t / bs] * bs + t % bs) * kv_row + head_off + x * 8 : 0;
#if UT_KV_FP8
        const bool vllm = a.flavor == 0;
        ut_convert8(Ks + j * UT_KS + x * 8, kc + off, ok, a.k_scale, vllm);
        ut_convert8(Vs + j * UT_KS + x * 8, vc + off, ok, a.v_scale, vllm);
#else
        (void)a;
        ut_copy16(Ks + j * UT_KS + x * 8, kc + off, ok);
        ut_copy16(Vs + j * UT_KS + x * 8, vc + off, ok);
#endif
    }
}

#if WAVE_SIZE == 32
#define UT_NT (UT_TILE / 8)  // 8-key column tiles of S
#define UT_VT (UT_D / 8)     // 8-wide column tiles of O
#define UT_RW 2              // rows per lane
#else
#define UT_NT (UT_TILE / 16)
#define UT_VT (UT_D / 16)
#define UT_RW 1
#endif
#define UT_DT (UT_D / 16)

extern "C" __global__ void UT_LAUNCH_BOUNDS unified_attention_tc(
    const u16* __restrict__ query, const KVS::T* __restrict__ k_cache, const KVS::T* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    const float* __restrict__ sinks, const float* __restrict__ alibi_slopes, u16* __restrict__ out,
    float* __restrict__ segm_acc, float* __restrict__ segm_m, float* __restrict__ segm_l, UnifiedTcArgs a) {
    extern __shared__ tile_f4 smem4[];
    u16* smem = reinterpret_cast<u16*>(smem4);
    const int tid = threadIdx.x, warp = tid / WAVE_SIZE, lane = tid % WAVE_SIZE;
    const i64 hq = a.num_heads, hk = a.num_kv_heads, S = a.num_segments, BQ = a.block_q;
    const i64 qpk = hq / hk;
    const i64 seq = blockIdx.y, kvh = blockIdx.z % hk, seg = blockIdx.z / hk;
    const i64 q_start = qsl[seq], q_len = qsl[seq + 1] - q_start, seq_len = seq_lens[seq];
    const i64 ctx = seq_len - q_len;
    const i64 qb0 = ((i64)gridDim.x - 1 - blockIdx.x) * UT_PPW;
    if (qb0 * BQ >= q_len) return;
    const i64 tps = (seq_len + S * UT_TILE - 1) / (S * UT_TILE);
    if (seg * tps * UT_TILE >= seq_len) return;
    const bool causal = a.causal != 0;

    // What the workgroup stages: the union of its programs' tile ranges.
    i64 cn0 = 0, cn1 = 0;
    {
        bool any = false;
        for (int p = 0; p < UT_PPW; ++p) {
            const i64 qb = qb0 + p;
            if (qb * BQ >= q_len) break;
            i64 lo, hi;
            ut_bounds(qb, q_len, seq_len, qpk, BQ, causal, a.window, seg, tps, lo, hi);
            if (lo >= hi) continue;
            cn0 = any ? min(cn0, lo) : lo;
            cn1 = any ? max(cn1, hi) : hi;
            any = true;
        }
    }
    // This wave: program qblk, rows 16 * slice .. of its BLOCK_M.
    const i64 qblk = qb0 + warp / UT_WPP;
    const int slice = warp % UT_WPP;
    const bool active = qblk * BQ < q_len;
    i64 wn0 = 0, wn1 = 0;
    if (active) ut_bounds(qblk, q_len, seq_len, qpk, BQ, causal, a.window, seg, tps, wn0, wn1);
    // The wave's query positions (for the whole-tile test).
    const i64 m_first = 16 * slice, m_last = min((i64)16 * slice + 15, BQ * qpk - 1);
    const i64 wq_lo = qblk * BQ + m_first / qpk, wq_hi = min(qblk * BQ + m_last / qpk, q_len - 1);

#if WAVE_SIZE == 32
    const int gr = lane >> 2, qp = lane & 3;
    const int rrow[UT_RW] = {gr, gr + 8};
#else
    const int gr = lane & 15, qp = lane >> 4;
    const int rrow[UT_RW] = {gr};
#endif
    bool rvalid[UT_RW];
    i64 rtoken[UT_RW], rhead[UT_RW], rqabs[UT_RW];
    float rslope[UT_RW];
    float m_i[UT_RW], l_i[UT_RW];
#pragma unroll
    for (int hf = 0; hf < UT_RW; ++hf) {
        const i64 m = 16 * slice + rrow[hf];
        const i64 q_local = qblk * BQ + m / qpk;
        rvalid[hf] = active && m < BQ * qpk && q_local < q_len;
        rtoken[hf] = q_start + q_local;
        rhead[hf] = kvh * qpk + m % qpk;
        rqabs[hf] = ctx + q_local;
        rslope[hf] = a.has_alibi && rvalid[hf] ? alibi_slopes[rhead[hf]] : 0.0f;
        const bool sink = rvalid[hf] && a.has_sinks && seg == 0;
        m_i[hf] = sink ? sinks[rhead[hf]] * LOG2E : f32_neg_inf();
        l_i[hf] = sink ? 1.0f : 0.0f;
    }
    float acc[UT_VT][4];
#pragma unroll
    for (int vt = 0; vt < UT_VT; ++vt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[vt][i] = 0.0f;
#if WAVE_SIZE == 32
    u32 qf[UT_DT][4];  // A fragments of Q: rows gr / gr + 8, k 2qp + {0,1} (+ 8)
    {
        const u32* qa = reinterpret_cast<const u32*>(query + (rtoken[0] * hq + rhead[0]) * UT_D);
        const u32* qb = reinterpret_cast<const u32*>(query + (rtoken[1] * hq + rhead[1]) * UT_D);
#pragma unroll
        for (int dc = 0; dc < UT_DT; ++dc) {
            qf[dc][0] = rvalid[0] ? qa[dc * 8 + qp] : 0u;
            qf[dc][1] = rvalid[1] ? qb[dc * 8 + qp] : 0u;
            qf[dc][2] = rvalid[0] ? qa[dc * 8 + 4 + qp] : 0u;
            qf[dc][3] = rvalid[1] ? qb[dc * 8 + 4 + qp] : 0u;
        }
    }
#else
    u32 qf[UT_DT][2];  // B fragments of Q^T: row gr, k 4qp + 0..3
    {
        const u32* qa = reinterpret_cast<const u32*>(query + (rtoken[0] * hq + rhead[0]) * UT_D);
#pragma unroll
        for (int dc = 0; dc < UT_DT; ++dc) {
            qf[dc][0] = rvalid[0] ? qa[dc * 8 + 2 * qp] : 0u;
            qf[dc][1] = rvalid[0] ? qa[dc * 8 + 2 * qp + 1] : 0u;
        }
    }
#endif

    const i32* bt = block_table + seq * a.max_blocks;
    const i64 kv_row = hk * UT_D, head_off = kvh * UT_D;
    for (i64 n = cn0; n < cn1; ++n) {
        const int it = (int)(n - cn0);
        const i64 t0 = n * UT_TILE;
#if UT_STAGES == 2
        if (it == 0) {
            ut_stage(smem, smem + UT_TILE * UT_KS, k_cache, v_cache, bt, a.block_size, kv_row, head_off, t0, seq_len,
                     tid, a);
            ut_commit();
        }
        if (n + 1 < cn1) {
            u16* nb = smem + ((it + 1) & 1) * UT_STAGE_ELEMS;
            ut_stage(nb, nb + UT_TILE * UT_KS, k_cache, v_cache, bt, a.block_size, kv_row, head_off, t0 + UT_TILE,
                     seq_len, tid, a);
            ut_commit();
            ut_wait<1>();
        } else {
            ut_wait<0>();
        }
        const u16* Ks = smem + (it & 1) * UT_STAGE_ELEMS;
#else
        (void)it;
        ut_stage(smem, smem + UT_TILE * UT_KS, k_cache, v_cache, bt, a.block_size, kv_row, head_off, t0, seq_len, tid,
                 a);
        const u16* Ks = smem;
#endif
        const u16* Vs = Ks + UT_TILE * UT_KS;
        __syncthreads();

        if (active && n >= wn0 && n < wn1) {
            // ---- S = Q K^T, chained along d.
            float s[UT_NT][4];
#pragma unroll
            for (int nt = 0; nt < UT_NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#if WAVE_SIZE == 32
#pragma unroll
            for (int nt = 0; nt < UT_NT; ++nt) {
#pragma unroll
                for (int dc = 0; dc < UT_DT; ++dc) {
                    const u16* kr = Ks + (nt * 8 + gr) * UT_KS + dc * 16 + 2 * qp;
                    u32 kb[2] = {*reinterpret_cast<const u32*>(kr), *reinterpret_cast<const u32*>(kr + 8)};
                    mma_m16n8k16_acc<UT_FMT>(qf[dc], kb, s[nt], a.host_target);
                }
            }
#else
#pragma unroll
            for (int nt = 0; nt < UT_NT; ++nt)
#pragma unroll
                for (int dc = 0; dc < UT_DT; ++dc) {
                    const u32* kr = reinterpret_cast<const u32*>(Ks + (nt * 16 + gr) * UT_KS + dc * 16 + 4 * qp);
                    u32 ka[2] = {kr[0], kr[1]};
                    mfma_16x16x16_acc<UT_FMT>(ka, qf[dc], s[nt], a.host_target);
                }
#endif

            // ---- mask and score. A tile every row of the wave sees whole needs no test.
            const bool whole = !a.has_alibi && t0 + UT_TILE <= seq_len &&
                               (causal ? t0 + UT_TILE - 1 <= ctx + wq_lo &&
                                             (a.window == 0 || ctx + wq_hi - t0 < a.window)
                                       : a.window == 0);
            if (whole) {
#pragma unroll
                for (int nt = 0; nt < UT_NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        s[nt][i] = score_f(s[nt][i], a.scale, a.scale_log2, a.softcap, 0.0f, a.softcap_formula);
            } else {
#pragma unroll
                for (int nt = 0; nt < UT_NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
#if WAVE_SIZE == 32
                        const int hf = i >> 1, j = nt * 8 + 2 * qp + (i & 1);
#else
                        const int hf = 0, j = nt * 16 + 4 * qp + i;
#endif
                        const i64 t = t0 + j;
                        const bool vis = rvalid[hf] && ut_allowed(t, rqabs[hf], seq_len, causal, a.window);
                        const float bias = a.has_alibi ? rslope[hf] * (float)(t - ctx) : 0.0f;
                        s[nt][i] = vis ? score_f(s[nt][i], a.scale, a.scale_log2, a.softcap, bias, a.softcap_formula)
                                       : f32_neg_inf();
                    }
            }

            // ---- row statistics; p = exp2c(s - m_ref) in place.
            float alpha[UT_RW];
#pragma unroll
            for (int hf = 0; hf < UT_RW; ++hf) {
                float mx = f32_neg_inf();
#pragma unroll
                for (int nt = 0; nt < UT_NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        if (WAVE_SIZE == 64 || (i >> 1) == hf) mx = fmaxf(mx, s[nt][i]);
                mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 2 : 32));
                mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 1 : 16));
                const TileStats ts = tile_begin(m_i[hf], mx);
                float part = 0.0f;
#pragma unroll
                for (int nt = 0; nt < UT_NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        if (WAVE_SIZE == 64 || (i >> 1) == hf) {
                            s[nt][i] = ut_exp2c(s[nt][i] - ts.m_ref);
                            part = part + s[nt][i];
                        }
                part = part + SHFL_XOR(part, WAVE_SIZE == 32 ? 2 : 32);
                part = part + SHFL_XOR(part, WAVE_SIZE == 32 ? 1 : 16);
                l_i[hf] = fmaf(l_i[hf], ts.alpha, part);
                m_i[hf] = a.zero_masked_max ? keep_zero_max(ts.m_new) : ts.m_new;
                alpha[hf] = ts.alpha;
            }
#pragma unroll
            for (int vt = 0; vt < UT_VT; ++vt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[vt][i] = acc[vt][i] * alpha[WAVE_SIZE == 32 ? (i >> 1) : 0];

            // ---- acc = P V + acc, chained along the tile's 16-key chunks.
#if WAVE_SIZE == 32
#pragma unroll
            for (int kc = 0; kc < UT_TILE / 16; ++kc) {
                const u32 pa[4] = {ut_pack_p(s[2 * kc][0], s[2 * kc][1]), ut_pack_p(s[2 * kc][2], s[2 * kc][3]),
                                   ut_pack_p(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                   ut_pack_p(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#if defined(ATTNLAB_CUDA)
                constexpr int VG = UT_VT % 8 == 0 ? 8 : (UT_VT % 4 == 0 ? 4 : 2);
                const u16* vrow = Vs + (kc * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * UT_KS + 8 * (lane >> 4);
#pragma unroll
                for (int vg = 0; vg < UT_VT; vg += VG) {
                    u32 vb[VG / 2][4];
#pragma unroll
                    for (int x = 0; x < VG / 2; ++x) ut_ldsm_x4_trans(vb[x], vrow + (vg + 2 * x) * 8);
#pragma unroll
                    for (int x = 0; x < VG / 2; ++x) {
                        mma_m16n8k16_acc<UT_FMT>(pa, vb[x], acc[vg + 2 * x], a.host_target);
                        mma_m16n8k16_acc<UT_FMT>(pa, vb[x] + 2, acc[vg + 2 * x + 1], a.host_target);
                    }
                }
#else
#pragma unroll
                for (int vt = 0; vt < UT_VT; ++vt) {
                    const u16* vc = Vs + (kc * 16 + 2 * qp) * UT_KS + vt * 8 + gr;
                    const u32 vb[2] = {(u32)vc[0] | ((u32)vc[UT_KS] << 16),
                                       (u32)vc[8 * UT_KS] | ((u32)vc[9 * UT_KS] << 16)};
                    mma_m16n8k16_acc<UT_FMT>(pa, vb, acc[vt], a.host_target);
                }
#endif
            }
#else
#pragma unroll
            for (int kc = 0; kc < UT_NT; ++kc) {
                const u32 pb[2] = {ut_pack_p(s[kc][0], s[kc][1]), ut_pack_p(s[kc][2], s[kc][3])};
#pragma unroll
                for (int vt = 0; vt < UT_VT; ++vt) {
                    const u16* vc = Vs + (kc * 16 + 4 * qp) * UT_KS + vt * 16 + gr;
                    const u32 va[2] = {(u32)vc[0] | ((u32)vc[UT_KS] << 16),
                                       (u32)vc[2 * UT_KS] | ((u32)vc[3 * UT_KS] << 16)};
                    mfma_16x16x16_acc<UT_FMT>(va, pb, acc[vt], a.host_target);
                }
            }
#endif
        }
        __syncthreads();
    }

    // ---- 2D: out = round(acc / l) (AITER: acc * (v_descale / l)); 3D: f32 partials.
#pragma unroll
    for (int hf = 0; hf < UT_RW; ++hf) {
        if (!rvalid[hf]) continue;
        const float l = l_i[hf];
        const i64 row = rtoken[hf] * hq + rhead[hf];
        if (a.is_3d) {
            const i64 idx = row * S + seg;
            float* dst = segm_acc + idx * UT_D;
            // AITER folds v_descale into the stored acc over an fp8 cache.
#if UT_KV_FP8
#define UT_PART(x) (a.flavor != 0 ? (x) * a.v_descale : (x))
#else
#define UT_PART(x) (x)
#endif
#if WAVE_SIZE == 32
#pragma unroll
            for (int vt = 0; vt < UT_VT; ++vt) {
                dst[vt * 8 + 2 * qp] = UT_PART(acc[vt][2 * hf]);
                dst[vt * 8 + 2 * qp + 1] = UT_PART(acc[vt][2 * hf + 1]);
            }
#else
#pragma unroll
            for (int vt = 0; vt < UT_VT; ++vt)
#pragma unroll
                for (int i = 0; i < 4; ++i) dst[vt * 16 + 4 * qp + i] = UT_PART(acc[vt][i]);
#endif
#undef UT_PART
            if (qp == 0) {
                segm_m[idx] = m_i[hf];
                segm_l[idx] = l;
            }
        } else {
            const float inv = a.v_descale / l;
            u16* orow = out + row * UT_D;
#define UT_OUT(x) (a.flavor == 0 ? nan_fresh((x) / l) : nan_fresh((x) * inv))
#if WAVE_SIZE == 32
#pragma unroll
            for (int vt = 0; vt < UT_VT; ++vt)
                *reinterpret_cast<u32*>(orow + vt * 8 + 2 * qp) =
                    ut_pack(UT_OUT(acc[vt][2 * hf]), UT_OUT(acc[vt][2 * hf + 1]));
#else
#pragma unroll
            for (int vt = 0; vt < UT_VT; ++vt)
#pragma unroll
                for (int i = 0; i < 4; ++i) orow[vt * 16 + 4 * qp + i] = E::store(UT_OUT(acc[vt][i]));
#endif
#undef UT_OUT
        }
    }
}
