// flash_varlen_tc.hip: sim/src/kernels/flash_varlen_tc.rs, the tensor-core
// flavour of flash_varlen.hip (AITER's flash_attn_varlen_func with LSE, FA's
// bottom-right causal alignment, GQA, window, ALiBi, sinks, soft-cap): Q·K^T
// and P·V on the matrix cores. Bit-exact with the sim *for the target it ran
// on* (numerics.md §6): mma.sync m16n8k16 on NVIDIA (32-lane warps, the sim
// with MatrixTarget::Sm90), MFMA 16x16x16 on CDNA (64-lane waves, Gfx942 or
// Gfx90a); the host device runs each instruction through the model picked
// by `host_target` (0 sm_90, 1 gfx90a, 2 gfx942).
//
// Per wave (the contract; the workgroup only shares staging): a wave owns 16
// consecutive query rows of one sequence and one head, rows r0 = 16w ..,
// and computes on the key tiles [n_min, n_max) those rows can see
// (flash_varlen's formula for a 16-row block). Per tile n of FT_BN keys:
//   S = 0; for dc = 0, 16, .. FT_D - 16: S = MMA(Q[:, dc..+16] K[:, dc..+16]^T + S)
//   s = score(S, -slope |p_i - t|) if visible and t < sk, else -inf
//   tile_max (xor butterfly, order free); tile_begin (m_new, m_ref, alpha)
//   p = exp2c(s - m_ref); each lane sums its own keys of the row in
//     ascending key order from 0, then v = v + shfl_xor(v, 2 lanes' bit 1),
//     v = v + shfl_xor(v, bit 0): (part0 + part2) + (part1 + part3)
//   l = fmaf(l, alpha, tile_sum); m = m_new
//   acc = acc * alpha; for kc = 0, 16, .. FT_BN - 16:
//     acc = MMA(round_dtype(P[:, kc..+16]) V[kc..+16, :] + acc)
//   (every key of the tile, masked ones with p = 0; K and V rows past sk
//   are staged as 0)
// out = round(acc / l) (0 if l == 0); lse = (m + log2c(l)) * LN2 (-inf if l == 0).
//
// Layouts. NVIDIA: S = Q K^T with Q as A (registers, loaded once), K^T as B
// from shared memory (plain 32-bit loads); lane l holds rows l/4 and l/4 + 8, keys 2(l%4) + {0,1}
// of every 8-key column tile (the lane parts of the row sum are l%4: lanes
// xor 2 then xor 1). The S accumulators of two column tiles are the A
// fragment of P for one 16-key chunk (no shuffle); V is B (ldmatrix.trans).
// CDNA: S^T = K Q^T (K as A, Q^T as B) and O^T = V^T P^T, so that lane l
// holds query l%16, keys 4(l/16) + i of each 16-key tile, which is exactly
// P^T's B fragment; the lane parts are l/16 (lanes xor 32 then xor 16).
//
// Workgroup: FT_WARPS waves of 16 rows (FT_ROWS rows), K and V tiles of the
// workgroup's tile range staged in shared memory ([FT_BN][D + 8] bf16/f16,
// the 16-byte pad keeps 8-row reads conflict-free); on NVIDIA cp.async,
// double-buffered, and ldmatrix; elsewhere plain loads, one stage. Grid
// (cdiv(max_seqlen_q, FT_ROWS), batch, Hq), heaviest row blocks first.
// Compile-time: DTYPE (bf16/f16), FT_D, FT_DV (multiples of 16), FT_BN
// (multiple of 16), FT_WARPS.

typedef Storage<DTYPE> E;
#if DTYPE == DT_BF16
#define FT_FMT MMA_BF16
#elif DTYPE == DT_F16
#define FT_FMT MMA_F16
#else
#error "flash_varlen_tc: DTYPE must be bf16 or f16"
#endif

#ifndef FT_D
#define FT_D 128
#endif
#ifndef FT_DV
#define FT_DV FT_D
#endif
#ifndef FT_BN
#define FT_BN 64
#endif
#ifndef FT_WARPS
#define FT_WARPS 4
#endif
// FT_VLDSM: V's B fragments by ldmatrix.trans on NVIDIA (1) or by 16-bit
// loads as elsewhere (0); the same values either way.
#ifndef FT_VLDSM
#define FT_VLDSM 1
#endif
// FT_EXP_BRANCHY: portable.h's exp2c itself (1) instead of ft_exp2c (0).
#ifndef FT_EXP_BRANCHY
#define FT_EXP_BRANCHY 0
#endif
#if FT_EXP_BRANCHY
#define FT_EXP2C exp2c
#else
#define FT_EXP2C ft_exp2c
#endif
// FT_MINB: workgroups per SM the NVIDIA compile must fit (register cap
// 65536 / (FT_MINB * FT_THREADS)); 1 leaves the compiler its 255.
#ifndef FT_MINB
#define FT_MINB 1
#endif
#if defined(ATTNLAB_CUDA)
#define FT_LAUNCH_BOUNDS __launch_bounds__(FT_THREADS, FT_MINB)
#else
#define FT_LAUNCH_BOUNDS __launch_bounds__(FT_THREADS)
#endif
#if defined(ATTNLAB_CUDA)
#define FT_STAGES 2
#else
#define FT_STAGES 1
#endif
#define FT_ROWS (16 * FT_WARPS)
#define FT_THREADS (FT_WARPS * WAVE_SIZE)
#define FT_KS (FT_D + 8)   // K_s row stride (elements)
#define FT_VS (FT_DV + 8)  // V_s row stride
#define FT_STAGE_ELEMS (FT_BN * (FT_KS + FT_VS))

#if FT_D % 16 != 0 || FT_DV % 16 != 0 || FT_BN % 16 != 0
#error "flash_varlen_tc: FT_D, FT_DV and FT_BN must be multiples of 16"
#endif

struct VarlenTcArgs {
    i64 num_heads, num_kv_heads, window, total_q;
    i32 causal, has_sinks, has_alibi, host_target;
    float scale, scale_log2, softcap, pad;
};

DEVICE u32 ft_pack(float lo, float hi) { return (u32)E::store(lo) | ((u32)E::store(hi) << 16); }
// ft_pack for P (values in [0, 1], or NaN): on NVIDIA the conversion
// instruction, round to nearest even without flushing subnormals, so the
// same bits for every finite p; a NaN p gives some NaN either way, and any
// NaN in A makes the instruction return its one canonical NaN.
DEVICE u32 ft_pack_p(float lo, float hi) {
#if defined(ATTNLAB_CUDA)
    u32 r;
    if constexpr (DTYPE == DT_BF16) {
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    } else {
        asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    }
    return r;
#else
    return ft_pack(lo, hi);
#endif
}

// portable.h exp2c with the same operations on its in-range path and the
// special cases selected at the end instead of returned early (no branch
// per element): the same bits for every x.
DEVICE float ft_exp2c(float x) {
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

// The key tiles [n0, n1) rows r0 .. r1 - 1 can see (flash_varlen.hip's range).
DEVICE void ft_tiles(i64 r0, i64 r1, i64 sk, i64 offset, bool causal, i64 window, i64& n0, i64& n1) {
    i64 last = sk;
    if (causal) last = min(max(r1 - 1 + offset + 1, (i64)0), sk);
    i64 first = 0;
    if (window > 0) first = min(max(r0 + offset - window + 1, (i64)0), sk);
    n0 = first / FT_BN;
    n1 = (last + FT_BN - 1) / FT_BN;
}

#if defined(ATTNLAB_CUDA)
DEVICE u32 ft_smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
// 16 bytes global -> shared, asynchronously; `ok` false writes zeros.
DEVICE void ft_copy16(u16* dst, const u16* src, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(ft_smem_addr(dst)), "l"(src),
                 "r"(ok ? 16 : 0));
}
DEVICE void ft_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> DEVICE void ft_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
DEVICE void ft_ldsm_x4_trans(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(ft_smem_addr(p)));
}
#else
struct __attribute__((aligned(16))) ft_u4 {
    u32 v[4];
};
DEVICE void ft_copy16(u16* dst, const u16* src, bool ok) {
    ft_u4 x = {{0u, 0u, 0u, 0u}};
    if (ok) x = *reinterpret_cast<const ft_u4*>(src);
    *reinterpret_cast<ft_u4*>(dst) = x;
}
#endif

// Stages key tile rows [0, FT_BN) of K and V (row j at kg/vg + j * stride;
// rows j >= len as zeros) into Ks [FT_BN][FT_KS] and Vs [FT_BN][FT_VS].
DEVICE void ft_stage(u16* Ks, u16* Vs, const u16* kg, const u16* vg, i64 kstride, i64 vstride, int len, int tid) {
    constexpr int KC = FT_D / 8, VC = FT_DV / 8;
    for (int c = tid; c < FT_BN * KC; c += FT_THREADS) {
        const int j = c / KC, x = c % KC;
        const bool ok = j < len;
        ft_copy16(Ks + j * FT_KS + x * 8, kg + (ok ? j * kstride : 0) + x * 8, ok);
    }
    for (int c = tid; c < FT_BN * VC; c += FT_THREADS) {
        const int j = c / VC, x = c % VC;
        const bool ok = j < len;
        ft_copy16(Vs + j * FT_VS + x * 8, vg + (ok ? j * vstride : 0) + x * 8, ok);
    }
}

#if WAVE_SIZE == 32
#define FT_NT (FT_BN / 8)    // 8-key column tiles of S
#define FT_VT (FT_DV / 8)    // 8-wide column tiles of O
#define FT_RW 2              // rows per lane
#else
#define FT_NT (FT_BN / 16)
#define FT_VT (FT_DV / 16)
#define FT_RW 1
#endif
#define FT_DT (FT_D / 16)    // k-steps of Q K^T

extern "C" __global__ void FT_LAUNCH_BOUNDS flash_attn_varlen_tc(
    const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v, const i32* __restrict__ cu_q,
    const i32* __restrict__ cu_k, const float* __restrict__ sinks, const float* __restrict__ alibi_slopes,
    u16* __restrict__ out, float* __restrict__ lse, VarlenTcArgs a) {
    extern __shared__ tile_f4 smem4[];
    u16* smem = reinterpret_cast<u16*>(smem4);
    const int tid = threadIdx.x, warp = tid / WAVE_SIZE, lane = tid % WAVE_SIZE;
    const i64 mb = (i64)gridDim.x - 1 - blockIdx.x, b = blockIdx.y, h = blockIdx.z;
    const i64 hq = a.num_heads, hk = a.num_kv_heads;
    const i64 g = h / (hq / hk);
    const i64 sq = cu_q[b + 1] - cu_q[b], sk = cu_k[b + 1] - cu_k[b], q0 = cu_q[b], k0 = cu_k[b];
    const i64 c0 = mb * FT_ROWS;
    if (c0 >= sq) return;
    const i64 offset = sk - sq;
    const bool causal = a.causal || a.window > 0;
    i64 cn0, cn1;  // what the workgroup stages
    ft_tiles(c0, min(c0 + FT_ROWS, sq), sk, offset, causal, a.window, cn0, cn1);
    const i64 r0 = c0 + 16 * warp, r1 = min(r0 + 16, sq);
    const bool active = r0 < sq;
    i64 wn0 = 0, wn1 = 0;  // what this wave computes on
    if (active) ft_tiles(r0, r1, sk, offset, causal, a.window, wn0, wn1);
    const float slope = a.has_alibi ? alibi_slopes[h] : 0.0f;

    // ---- this lane's rows, Q fragments, and (m, l, acc) per row.
#if WAVE_SIZE == 32
    const int gr = lane >> 2, qp = lane & 3;
    int rrow[FT_RW] = {gr, gr + 8};
#else
    const int gr = lane & 15, qp = lane >> 4;
    int rrow[FT_RW] = {gr};
#endif
    float m_i[FT_RW], l_i[FT_RW];
    float acc[FT_VT][4];
#pragma unroll
    for (int hf = 0; hf < FT_RW; ++hf) {
        m_i[hf] = a.has_sinks ? sinks[h] * LOG2E : f32_neg_inf();
        l_i[hf] = a.has_sinks ? 1.0f : 0.0f;
    }
#pragma unroll
    for (int vt = 0; vt < FT_VT; ++vt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[vt][i] = 0.0f;
#if WAVE_SIZE == 32
    u32 qf[FT_DT][4];  // A fragments of Q: rows gr / gr + 8, k 2qp + {0,1} (+ 8)
    {
        const u32* qa = reinterpret_cast<const u32*>(q + ((q0 + r0 + gr) * hq + h) * FT_D);
        const u32* qb = reinterpret_cast<const u32*>(q + ((q0 + r0 + gr + 8) * hq + h) * FT_D);
        const bool oka = r0 + gr < sq, okb = r0 + gr + 8 < sq;
#pragma unroll
        for (int dc = 0; dc < FT_DT; ++dc) {
            qf[dc][0] = oka ? qa[dc * 8 + qp] : 0u;
            qf[dc][1] = okb ? qb[dc * 8 + qp] : 0u;
            qf[dc][2] = oka ? qa[dc * 8 + 4 + qp] : 0u;
            qf[dc][3] = okb ? qb[dc * 8 + 4 + qp] : 0u;
        }
    }
#else
    u32 qf[FT_DT][2];  // B fragments of Q^T: query gr, k 4qp + 0..3
    {
        const u32* qa = reinterpret_cast<const u32*>(q + ((q0 + r0 + gr) * hq + h) * FT_D);
        const bool ok = active && r0 + gr < sq;
#pragma unroll
        for (int dc = 0; dc < FT_DT; ++dc) {
            qf[dc][0] = ok ? qa[dc * 8 + 2 * qp] : 0u;
            qf[dc][1] = ok ? qa[dc * 8 + 2 * qp + 1] : 0u;
        }
    }
#endif

    const u16* kg0 = k + (k0 * hk + g) * FT_D;
    const u16* vg0 = v + (k0 * hk + g) * FT_DV;
    const i64 kstride = hk * FT_D, vstride = hk * FT_DV;
    for (i64 n = cn0; n < cn1; ++n) {
        const int it = (int)(n - cn0);
        const i64 j0 = n * FT_BN;
        const int len = (int)min((i64)FT_BN, sk - j0);
#if FT_STAGES == 2
        if (it == 0) {
            ft_stage(smem, smem + FT_BN * FT_KS, kg0 + j0 * kstride, vg0 + j0 * vstride, kstride, vstride, len, tid);
            ft_commit();
        }
        if (n + 1 < cn1) {
            u16* nb = smem + ((it + 1) & 1) * FT_STAGE_ELEMS;
            const i64 j1 = j0 + FT_BN;
            ft_stage(nb, nb + FT_BN * FT_KS, kg0 + j1 * kstride, vg0 + j1 * vstride, kstride, vstride,
                     (int)min((i64)FT_BN, sk - j1), tid);
            ft_commit();
            ft_wait<1>();
        } else {
            ft_wait<0>();
        }
        const u16* Ks = smem + (it & 1) * FT_STAGE_ELEMS;
#else
        (void)it;
        ft_stage(smem, smem + FT_BN * FT_KS, kg0 + j0 * kstride, vg0 + j0 * vstride, kstride, vstride, len, tid);
        const u16* Ks = smem;
#endif
        const u16* Vs = Ks + FT_BN * FT_KS;
        __syncthreads();

        if (active && n >= wn0 && n < wn1) {
            // ---- S = Q K^T, chained along d.
            float s[FT_NT][4];
#pragma unroll
            for (int nt = 0; nt < FT_NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#if WAVE_SIZE == 32
#pragma unroll
            for (int nt = 0; nt < FT_NT; ++nt) {
#pragma unroll
                for (int dc = 0; dc < FT_DT; ++dc) {
                    const u16* kr = Ks + (nt * 8 + gr) * FT_KS + dc * 16 + 2 * qp;
                    u32 kb[2] = {*reinterpret_cast<const u32*>(kr), *reinterpret_cast<const u32*>(kr + 8)};
                    mma_m16n8k16_acc<FT_FMT>(qf[dc], kb, s[nt], a.host_target);
                }
            }
#else
#pragma unroll
            for (int nt = 0; nt < FT_NT; ++nt)
#pragma unroll
                for (int dc = 0; dc < FT_DT; ++dc) {
                    const u32* kr = reinterpret_cast<const u32*>(Ks + (nt * 16 + gr) * FT_KS + dc * 16 + 4 * qp);
                    u32 ka[2] = {kr[0], kr[1]};
                    mfma_16x16x16_acc<FT_FMT>(ka, qf[dc], s[nt], a.host_target);
                }
#endif

            // ---- mask and score. A tile every row sees whole needs no test.
            const bool whole = j0 + FT_BN <= sk && (!causal || j0 + FT_BN - 1 <= r0 + offset) &&
                               (a.window == 0 || r1 - 1 + offset - j0 < a.window);
            if (whole && !a.has_alibi) {
#pragma unroll
                for (int nt = 0; nt < FT_NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i) s[nt][i] = score(s[nt][i], a.scale, a.scale_log2, a.softcap, 0.0f);
            } else {
#pragma unroll
            for (int nt = 0; nt < FT_NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
#if WAVE_SIZE == 32
                    const int rr = rrow[i >> 1], j = nt * 8 + 2 * qp + (i & 1);
#else
                    const int rr = rrow[0], j = nt * 16 + 4 * qp + i;
#endif
                    const i64 t = j0 + j, pi = r0 + rr + offset;
                    const bool vis =
                        whole || (j < len && (pi < 0 ? !causal : visible(t, pi, causal, a.window)));
                    float bias = 0.0f;
                    if (a.has_alibi) bias = -(slope * (float)(pi - t < 0 ? t - pi : pi - t));
                    s[nt][i] = vis ? score(s[nt][i], a.scale, a.scale_log2, a.softcap, bias) : f32_neg_inf();
                }
            }

            // ---- row statistics; p = exp2c(s - m_ref) in place.
            float alpha[FT_RW];
#pragma unroll
            for (int hf = 0; hf < FT_RW; ++hf) {
                float mx = f32_neg_inf();
#pragma unroll
                for (int nt = 0; nt < FT_NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        if (WAVE_SIZE == 64 || (i >> 1) == hf) mx = fmaxf(mx, s[nt][i]);
                mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 2 : 32));
                mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 1 : 16));
                const TileStats ts = tile_begin(m_i[hf], mx);
                float part = 0.0f;
#pragma unroll
                for (int nt = 0; nt < FT_NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        if (WAVE_SIZE == 64 || (i >> 1) == hf) {
                            s[nt][i] = FT_EXP2C(s[nt][i] - ts.m_ref);
                            part = part + s[nt][i];
                        }
                part = part + SHFL_XOR(part, WAVE_SIZE == 32 ? 2 : 32);
                part = part + SHFL_XOR(part, WAVE_SIZE == 32 ? 1 : 16);
                l_i[hf] = fmaf(l_i[hf], ts.alpha, part);
                m_i[hf] = ts.m_new;
                alpha[hf] = ts.alpha;
            }
#pragma unroll
            for (int vt = 0; vt < FT_VT; ++vt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[vt][i] = acc[vt][i] * alpha[WAVE_SIZE == 32 ? (i >> 1) : 0];

            // ---- acc = P V + acc, chained along the tile's 16-key chunks.
#if WAVE_SIZE == 32
#pragma unroll
            for (int kc = 0; kc < FT_BN / 16; ++kc) {
                const u32 pa[4] = {ft_pack_p(s[2 * kc][0], s[2 * kc][1]), ft_pack_p(s[2 * kc][2], s[2 * kc][3]),
                                   ft_pack_p(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                   ft_pack_p(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#if defined(ATTNLAB_CUDA) && FT_VLDSM
                // ldmatrix is volatile asm (kept in order): issue a group of
                // loads back to back, then their instructions.
                constexpr int VG = FT_VT % 8 == 0 ? 8 : (FT_VT % 4 == 0 ? 4 : 2);
                const u16* vrow = Vs + (kc * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * FT_VS + 8 * (lane >> 4);
#pragma unroll
                for (int vg = 0; vg < FT_VT; vg += VG) {
                    u32 vb[VG / 2][4];  // (vt: b0, b1), (vt + 1: b0, b1)
#pragma unroll
                    for (int x = 0; x < VG / 2; ++x) ft_ldsm_x4_trans(vb[x], vrow + (vg + 2 * x) * 8);
#pragma unroll
                    for (int x = 0; x < VG / 2; ++x) {
                        mma_m16n8k16_acc<FT_FMT>(pa, vb[x], acc[vg + 2 * x], a.host_target);
                        mma_m16n8k16_acc<FT_FMT>(pa, vb[x] + 2, acc[vg + 2 * x + 1], a.host_target);
                    }
                }
#else
#pragma unroll
                for (int vt = 0; vt < FT_VT; ++vt) {
                    const u16* vc = Vs + (kc * 16 + 2 * qp) * FT_VS + vt * 8 + gr;
                    const u32 vb[2] = {(u32)vc[0] | ((u32)vc[FT_VS] << 16),
                                       (u32)vc[8 * FT_VS] | ((u32)vc[9 * FT_VS] << 16)};
                    mma_m16n8k16_acc<FT_FMT>(pa, vb, acc[vt], a.host_target);
                }
#endif
            }
#else
#pragma unroll
            for (int kc = 0; kc < FT_NT; ++kc) {
                const u32 pb[2] = {ft_pack_p(s[kc][0], s[kc][1]), ft_pack_p(s[kc][2], s[kc][3])};
#pragma unroll
                for (int vt = 0; vt < FT_VT; ++vt) {
                    const u16* vc = Vs + (kc * 16 + 4 * qp) * FT_VS + vt * 16 + gr;
                    const u32 va[2] = {(u32)vc[0] | ((u32)vc[FT_VS] << 16),
                                       (u32)vc[2 * FT_VS] | ((u32)vc[3 * FT_VS] << 16)};
                    mfma_16x16x16_acc<FT_FMT>(va, pb, acc[vt], a.host_target);
                }
            }
#endif
        }
        __syncthreads();
    }

    // ---- out = round(acc / l), lse.
    if (!active) return;
#pragma unroll
    for (int hf = 0; hf < FT_RW; ++hf) {
        const i64 row = r0 + rrow[hf];
        if (row >= sq) continue;
        const float l = l_i[hf];
        u16* orow = out + ((q0 + row) * hq + h) * FT_DV;
#if WAVE_SIZE == 32
#pragma unroll
        for (int vt = 0; vt < FT_VT; ++vt)
            *reinterpret_cast<u32*>(orow + vt * 8 + 2 * qp) =
                ft_pack(row_out(acc[vt][2 * hf], l), row_out(acc[vt][2 * hf + 1], l));
#else
#pragma unroll
        for (int vt = 0; vt < FT_VT; ++vt)
#pragma unroll
            for (int i = 0; i < 4; ++i) orow[vt * 16 + 4 * qp + i] = E::store(row_out(acc[vt][i], l));
#endif
        if (qp == 0) lse[h * a.total_q + q0 + row] = row_lse2(m_i[hf], l) * LN2;
    }
}
