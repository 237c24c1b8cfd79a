// flex_attention_tc.hip: sim/src/kernels/flex_attention_tc.rs, the
// tensor-core flavour of flex_attention.hip (PyTorch's compiled
// flex_attention as vLLM's FLEX_ATTENTION backend drives it): the same
// block-sparse BlockMask and mask_mod table (built by the host with the
// sim's own BlockMask::build / FlexMask::keep), Q.K^T and P.V on the matrix
// cores. Bit-exact with the sim *for the target it ran on* (numerics.md §6):
// mma.sync m16n8k16 on NVIDIA (32-lane warps), MFMA 16x16x16 on CDNA
// (64-lane waves); the host device runs each instruction through the model
// `host_target` names (0 sm_90, 1 gfx90a, 2 gfx942).
//
// Grid (num_q_blocks, Hq); a workgroup is one wave: program (qb, head), the
// 16 rows of sparse q block qb. Per row:
//   m = -inf, l = 0, acc = 0
//   for entry e of kv_blocks[block_start[qb] .. block_start[qb + 1]] (the
//   first num_partial[qb] partial, then the full ones), for FX_BN-key tiles
//   n0 of the cache block ascending:
//     S = +0; for dc = 0, 16, .. D - 16: S = MMA(Q[:, dc..+16] K[:, dc..+16]^T + S)
//     s = (full entry or keep[e][r][n0 + j]) ? score(S) : -inf
//     tile_max (xor butterfly); tile_begin; p = exp2c(s - m_ref); lane parts
//       ascending from 0, then (part0 + part2) + (part1 + part3)
//     l = fmaf(l, alpha, tile_sum); m = m_new
//     acc = acc * alpha; for kc = 0, 16, ..: acc = MMA(round(P[:, kc..+16]) V[kc..+16, :] + acc)
//   out = l == 0 ? 0 : round(acc / l), NaN fresh.
// Fragment layouts as unified_attention_tc.hip. K and V of a tile are
// staged in shared memory [FX_BN][FX_D + 8]. Compile-time: DTYPE (bf16/f16:
// query, cache, output), FX_D (head size, multiple of 16), FX_BN (BLOCK_N,
// multiple of 16).

typedef Storage<DTYPE> E;
#if DTYPE == DT_BF16
#define FX_FMT MMA_BF16
#elif DTYPE == DT_F16
#define FX_FMT MMA_F16
#else
#error "flex_attention_tc: DTYPE must be bf16 or f16"
#endif
#ifndef FX_D
#define FX_D 128
#endif
#ifndef FX_BN
#define FX_BN 32
#endif
#if FX_D % 16 != 0 || FX_BN % 16 != 0
#error "flex_attention_tc: FX_D and FX_BN must be multiples of 16"
#endif
#define FX_KS (FX_D + 8)
#define FX_DT (FX_D / 16)
#if WAVE_SIZE == 32
#define FX_VT (FX_D / 8)
#define FX_RW 2
#define FX_NT (FX_BN / 8)
#else
#define FX_VT (FX_D / 16)
#define FX_RW 1
#define FX_NT (FX_BN / 16)
#endif

struct FlexTcArgs {
    i64 num_tokens, num_heads, num_kv_heads, block_size;
    i32 host_target, pad;
    float scale, scale_log2;
};

DEVICE u32 fx_pack(float lo, float hi) { return (u32)E::store(lo) | ((u32)E::store(hi) << 16); }

extern "C" __global__ void __launch_bounds__(WAVE_SIZE) flex_attention_tc(
    const u16* __restrict__ query, const u16* __restrict__ k_cache, const u16* __restrict__ v_cache,
    const i32* __restrict__ kv_blocks, const i32* __restrict__ block_start, const i32* __restrict__ num_partial,
    const u8* __restrict__ keep, u16* __restrict__ out, FlexTcArgs a) {
    extern __shared__ tile_f4 smem4[];
    u16* Ks = reinterpret_cast<u16*>(smem4);
    u16* Vs = Ks + FX_BN * FX_KS;
    const int lane = threadIdx.x;
    const i64 qb = blockIdx.x, head = blockIdx.y, hq = a.num_heads, bs = a.block_size;
    const i64 row0 = qb * 16;
    const i64 kvh = head / (hq / a.num_kv_heads);
#if WAVE_SIZE == 32
    const int gr = lane >> 2, qp = lane & 3;
    const int rrow[FX_RW] = {gr, gr + 8};
#else
    const int gr = lane & 15, qp = lane >> 4;
    const int rrow[FX_RW] = {gr};
#endif
    bool rvalid[FX_RW];
    float m_i[FX_RW], l_i[FX_RW];
#pragma unroll
    for (int hf = 0; hf < FX_RW; ++hf) {
        rvalid[hf] = row0 + rrow[hf] < a.num_tokens;
        m_i[hf] = f32_neg_inf();
        l_i[hf] = 0.0f;
    }
    float acc[FX_VT][4];
#pragma unroll
    for (int vt = 0; vt < FX_VT; ++vt)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[vt][i] = 0.0f;
#if WAVE_SIZE == 32
    u32 qf[FX_DT][4];
    {
        const u32* qa = reinterpret_cast<const u32*>(query + ((row0 + rrow[0]) * hq + head) * FX_D);
        const u32* qb2 = reinterpret_cast<const u32*>(query + ((row0 + rrow[1]) * hq + head) * FX_D);
#pragma unroll
        for (int dc = 0; dc < FX_DT; ++dc) {
            qf[dc][0] = rvalid[0] ? qa[dc * 8 + qp] : 0u;
            qf[dc][1] = rvalid[1] ? qb2[dc * 8 + qp] : 0u;
            qf[dc][2] = rvalid[0] ? qa[dc * 8 + 4 + qp] : 0u;
            qf[dc][3] = rvalid[1] ? qb2[dc * 8 + 4 + qp] : 0u;
        }
    }
#else
    u32 qf[FX_DT][2];
    {
        const u32* qa = reinterpret_cast<const u32*>(query + ((row0 + rrow[0]) * hq + head) * FX_D);
#pragma unroll
        for (int dc = 0; dc < FX_DT; ++dc) {
            qf[dc][0] = rvalid[0] ? qa[dc * 8 + 2 * qp] : 0u;
            qf[dc][1] = rvalid[0] ? qa[dc * 8 + 2 * qp + 1] : 0u;
        }
    }
#endif
    const i64 kv_row = a.num_kv_heads * FX_D;
    const i64 e0 = block_start[qb], e1 = block_start[qb + 1], n_part = num_partial[qb];
    for (i64 e = e0; e < e1; ++e) {
        const i64 blk = kv_blocks[e];
        const bool partial = e - e0 < n_part;
        for (i64 n0 = 0; n0 < bs; n0 += FX_BN) {
            __syncthreads();
            for (int c = lane; c < FX_BN * FX_D; c += WAVE_SIZE) {
                const int j = c / FX_D, dd = c % FX_D;
                const i64 o = (blk * bs + n0 + j) * kv_row + kvh * FX_D + dd;
                Ks[j * FX_KS + dd] = k_cache[o];
                Vs[j * FX_KS + dd] = v_cache[o];
            }
            __syncthreads();
            float s[FX_NT][4];
#pragma unroll
            for (int nt = 0; nt < FX_NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) s[nt][i] = 0.0f;
#if WAVE_SIZE == 32
#pragma unroll
            for (int nt = 0; nt < FX_NT; ++nt)
#pragma unroll
                for (int dc = 0; dc < FX_DT; ++dc) {
                    const u16* kr = Ks + (nt * 8 + gr) * FX_KS + dc * 16 + 2 * qp;
                    const u32 kb[2] = {(u32)kr[0] | ((u32)kr[1] << 16), (u32)kr[8] | ((u32)kr[9] << 16)};
                    mma_m16n8k16_acc<FX_FMT>(qf[dc], kb, s[nt], a.host_target);
                }
#else
#pragma unroll
            for (int nt = 0; nt < FX_NT; ++nt)
#pragma unroll
                for (int dc = 0; dc < FX_DT; ++dc) {
                    const u16* kr = Ks + (nt * 16 + gr) * FX_KS + dc * 16 + 4 * qp;
                    const u32 ka[2] = {(u32)kr[0] | ((u32)kr[1] << 16), (u32)kr[2] | ((u32)kr[3] << 16)};
                    mfma_16x16x16_acc<FX_FMT>(ka, qf[dc], s[nt], a.host_target);
                }
#endif
#pragma unroll
            for (int nt = 0; nt < FX_NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
#if WAVE_SIZE == 32
                    const int hf = i >> 1, j = nt * 8 + 2 * qp + (i & 1);
#else
                    const int hf = 0, j = nt * 16 + 4 * qp + i;
#endif
                    const bool kept = rvalid[hf] && (!partial || keep[(e * 16 + rrow[hf]) * bs + n0 + j] != 0);
                    s[nt][i] = kept ? score(s[nt][i], a.scale, a.scale_log2, 0.0f, 0.0f) : f32_neg_inf();
                }
            float alpha[FX_RW];
#pragma unroll
            for (int hf = 0; hf < FX_RW; ++hf) {
                float mx = f32_neg_inf();
#pragma unroll
                for (int nt = 0; nt < FX_NT; ++nt)
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        if (WAVE_SIZE == 64 || (i >> 1) == hf) mx = fmaxf(mx, s[nt][i]);
                mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 2 : 32));
                mx = fmaxf(mx, SHFL_XOR(mx, WAVE_SIZE == 32 ? 1 : 16));
                const TileStats ts = tile_begin(m_i[hf], mx);
                float part = 0.0f;
#pragma unroll
                for (int nt = 0; nt < FX_NT; ++nt)
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
            for (int vt = 0; vt < FX_VT; ++vt)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[vt][i] = acc[vt][i] * alpha[WAVE_SIZE == 32 ? (i >> 1) : 0];
#if WAVE_SIZE == 32
#pragma unroll
            for (int kc = 0; kc < FX_BN / 16; ++kc) {
                const u32 pa[4] = {fx_pack(s[2 * kc][0], s[2 * kc][1]), fx_pack(s[2 * kc][2], s[2 * kc][3]),
                                   fx_pack(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                   fx_pack(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
                for (int vt = 0; vt < FX_VT; ++vt) {
                    const u16* vc = Vs + (kc * 16 + 2 * qp) * FX_KS + vt * 8 + gr;
                    const u32 vb[2] = {(u32)vc[0] | ((u32)vc[FX_KS] << 16),
                                       (u32)vc[8 * FX_KS] | ((u32)vc[9 * FX_KS] << 16)};
                    mma_m16n8k16_acc<FX_FMT>(pa, vb, acc[vt], a.host_target);
                }
            }
#else
#pragma unroll
            for (int kc = 0; kc < FX_NT; ++kc) {
                const u32 pb[2] = {fx_pack(s[kc][0], s[kc][1]), fx_pack(s[kc][2], s[kc][3])};
#pragma unroll
                for (int vt = 0; vt < FX_VT; ++vt) {
                    const u16* vc = Vs + (kc * 16 + 4 * qp) * FX_KS + vt * 16 + gr;
                    const u32 va[2] = {(u32)vc[0] | ((u32)vc[FX_KS] << 16),
                                       (u32)vc[2 * FX_KS] | ((u32)vc[3 * FX_KS] << 16)};
                    mfma_16x16x16_acc<FX_FMT>(va, pb, acc[vt], a.host_target);
                }
            }
#endif
        }
    }
#pragma unroll
    for (int hf = 0; hf < FX_RW; ++hf) {
        if (!rvalid[hf]) continue;
        const float l = l_i[hf];
        u16* orow = out + ((row0 + rrow[hf]) * hq + head) * FX_D;
#define FX_OUT(x) (l == 0.0f ? E::store(0.0f) : E::store(nan_fresh((x) / l)))
#if WAVE_SIZE == 32
#pragma unroll
        for (int vt = 0; vt < FX_VT; ++vt) {
            orow[vt * 8 + 2 * qp] = FX_OUT(acc[vt][2 * hf]);
            orow[vt * 8 + 2 * qp + 1] = FX_OUT(acc[vt][2 * hf + 1]);
        }
#else
#pragma unroll
        for (int vt = 0; vt < FX_VT; ++vt)
#pragma unroll
            for (int i = 0; i < 4; ++i) orow[vt * 16 + 4 * qp + i] = FX_OUT(acc[vt][i]);
#endif
#undef FX_OUT
    }
}
