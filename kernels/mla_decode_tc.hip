// mla_decode_tc.hip: sim/src/kernels/mla_decode_tc.rs, stage 1 of TRITON_MLA's
// split-KV decode (vLLM's _fwd_grouped_kernel_stage1, is_mla) with Q.K^T and
// P.V on the matrix instruction; stage 2 is mla_decode.hip's
// mla_decode_stage2 (the same arithmetic in both flavours).
//
// Grid (rows, cdiv(H, 16), num_kv_splits), MTC_WAVES waves per workgroup;
// program (r, head block, split) owns heads hb*16 .. min(+16, H) (the
// instruction's 16 rows, the rest zero) and the split's keys
// [start, end) = split_range (mla_decode.hip's bounds); an empty split
// writes nothing. Per tile of MTC_STEP keys (vLLM's BLOCK_N: 32 at wave 32,
// which models sm_90, 16 at wave 64, gfx942; mla_decode_tc::block_n)
// t0 = start, start + MTC_STEP, .. < end:
//   A) all threads: K[k][c] = round_q(load(cache[slot(t0 + k)][c])) (fp8:
//      round_q(x * kv_scale)), 0 for t0 + k >= end; the whole W-wide entry.
//   B) dot[h][k]: C chained over the W/16 chunks c ascending from C = +0,
//      C = MMA(Q[h][16c .. 16c+16], K[k][16c .. 16c+16], C), k slot i = dim
//      16c + i: latent chunks first, then the rope chunks (vLLM's
//      qk = dot(q, k); qk += dot(qpe, kpe), the second with the first as its
//      accumulator). Wave 32: wave w, keys 8w .. 8w+7 (the n = 8 of
//      mma.m16n8k16, 4 waves for 32 keys); wave 64: wave 0, the 16 x 16 of
//      MFMA 16x16x16.
//   C) thread h < heads of the block: s = score(dot) (-inf for keys past
//      end); tile_begin(m, max s); p = exp2c(s - m_ref); tile_sum =
//      mtc_row_sum(p) (Triton's tl.sum order on sm_90 at wave 32, 0 + p0 +
//      .. + p15 ascending at wave 64); l = fmaf(l, alpha, tile_sum); m =
//      m_new; P = round_q(p) for P.V.
//   D) every wave, its own dim tiles of the latent (tile i of Lkv / N dims,
//      N = 8 at wave 32 and 16 at wave 64, tiles i = wave, wave + MTC_WAVES,
//      ..): C = acc * alpha[h], then per 16 keys j ascending C = MMA(P[h][j ..
//      j+16], K[j .. j+16][dims], C) (two chained mma.m16n8k16 at wave 32,
//      one MFMA at wave 64); acc = C.
// Then Att_Out[r, h, split, :Lkv] = acc / l (0 if l == 0), Att_Out[.., Lkv]
// = m + log2c(l) (-inf if l == 0), f32.
// Shared memory (dynamic): Q [16][W] and K [MTC_STEP][W] as storage bits,
// the tile's dots / p [16][MTC_STEP] (f32), P bits [16][MTC_STEP], alpha,
// m, l [16] (gpu/src/ops/mla_decode_tc.rs::shared_bytes).
// On the host device `host_target` picks the model (0 sm_90 at wave 32,
// 2 gfx942 at wave 64).
// Compile-time constants: Q_DTYPE (bf16/f16), KV_DTYPE (Q_DTYPE or fp8),
// MTC_LKV and MTC_ROPE (multiples of 16).

typedef Storage<Q_DTYPE> Q;
typedef Storage<KV_DTYPE> KV;
#define MTC_FMT (Q_DTYPE == DT_BF16 ? MMA_BF16 : MMA_F16)
#if WAVE_SIZE == 32
#define MTC_STEP 32
#else
#define MTC_STEP 16
#endif
#define MTC_ROWS 16
#define MTC_WAVES 4
#define MTC_W (MTC_LKV + MTC_ROPE)
#define MTC_CHUNKS (MTC_W / 16)
#if WAVE_SIZE == 32
#define MTC_TILE_N 8
#else
#define MTC_TILE_N 16
#endif
#define MTC_TILES (MTC_LKV / MTC_TILE_N)
#define MTC_TILES_PER_WAVE ((MTC_TILES + MTC_WAVES - 1) / MTC_WAVES)

// MlaArgs of mla_decode.hip with its padding word carrying the host target.
struct MlaTcArgs {
    i64 num_rows, num_heads, kv_lora_rank, width, num_kv_splits, granularity;
    i32 granular, host_target;
    float scale, scale_log2, kv_scale;
};

struct MtcRows {
    const i32* pages;
    const i64* page_start;
    const i32* page_size;
    const i32* kv_len;
    const i32* split_len;
};

// KvSplits::bounds clipped to the row's visible keys (mla_decode_tc::split_range).
DEVICE void mtc_split_range(const MlaTcArgs& a, const MtcRows& rows, i64 r, i64 split, i64* start, i64* end) {
    const i64 len = rows.split_len[r], S = a.num_kv_splits, g = a.granularity;
    const i64 per = a.granular ? ((len + g - 1) / g + S - 1) / S * g : (len + S - 1) / S;
    const i64 s = min(per * split, len);
    *start = s;
    *end = min(min(s + per, len), (i64)rows.kv_len[r]);
}

// tl.sum(p, 1) over a tile in the compiled kernel's order
// (mla_decode_tc::row_sum): at 32 keys, Triton's mma layout over 4 warps
// (warp w keys 8w .. 8w+7, lane quad t keys 8w+2t and 8w+2t+1, butterflies
// xor 2 then xor 1 in the quad and across the warps); else ascending from 0.
DEVICE float mtc_row_sum(const float* p) {
#if MTC_STEP == 32
    float w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float* x = p + 8 * i;
        w[i] = ((x[0] + x[1]) + (x[4] + x[5])) + ((x[2] + x[3]) + (x[6] + x[7]));
    }
    return (w[0] + w[2]) + (w[1] + w[3]);
#else
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < MTC_STEP; ++k) sum = sum + p[k];
    return sum;
#endif
}

DEVICE i64 mtc_slot(const MtcRows& rows, i64 r, i64 t) {
    const i64 ps = rows.page_size[r];
    return (i64)rows.pages[rows.page_start[r] + t / ps] * ps + t % ps;
}

extern "C" __global__ void __launch_bounds__(MTC_WAVES * WAVE_SIZE) mla_decode_tc_stage1(
    const typename Q::T* __restrict__ q, const typename KV::T* __restrict__ cache, const i32* __restrict__ pages,
    const i64* __restrict__ page_start, const i32* __restrict__ page_size, const i32* __restrict__ kv_len,
    const i32* __restrict__ split_len, float* __restrict__ att, MlaTcArgs a) {
    extern __shared__ float smem[];
    const MtcRows rows = {pages, page_start, page_size, kv_len, split_len};
    const i64 r = blockIdx.x, hblk = blockIdx.y, split = blockIdx.z;
    const i64 H = a.num_heads, S = a.num_kv_splits;
    const int tid = (int)threadIdx.x, nthreads = (int)blockDim.x;
    const int wave = tid / WAVE_SIZE, lane = tid % WAVE_SIZE;
    i64 start, end;
    mtc_split_range(a, rows, r, split, &start, &end);
    if (end <= start) return;
    const i64 h0 = hblk * MTC_ROWS;
    const int nh = (int)(min(h0 + MTC_ROWS, H) - h0);
    float* s_tile = smem;                          // [16][MTC_STEP]: dots, then p
    float* alpha_s = s_tile + MTC_ROWS * MTC_STEP;  // [16]
    float* m_s = alpha_s + MTC_ROWS;
    float* l_s = m_s + MTC_ROWS;
    u16* q_t = (u16*)(l_s + MTC_ROWS);  // [16][W]
    u16* k_t = q_t + MTC_ROWS * MTC_W;  // [MTC_STEP][W]
    u16* p_t = k_t + MTC_STEP * MTC_W;  // [16][MTC_STEP]
    for (int i = tid; i < MTC_ROWS * MTC_W; i += nthreads) {
        const int h = i / MTC_W, c = i % MTC_W;
        q_t[i] = h < nh ? (u16)q[(r * H + h0 + h) * MTC_W + c] : (u16)0;
    }
    if (tid < MTC_ROWS) {
        m_s[tid] = f32_neg_inf();
        l_s[tid] = 0.0f;
        alpha_s[tid] = 1.0f;
    }
    for (int i = tid; i < MTC_ROWS * MTC_STEP; i += nthreads) p_t[i] = 0;
    float acc[MTC_TILES_PER_WAVE][4];
#pragma unroll
    for (int j = 0; j < MTC_TILES_PER_WAVE; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[j][e] = 0.0f;
    for (i64 t0 = start; t0 < end; t0 += MTC_STEP) {
        // A) the tile's keys
        for (int i = tid; i < MTC_STEP * MTC_W; i += nthreads) {
            const int k = i / MTC_W, c = i % MTC_W;
            k_t[i] = t0 + k < end ? (u16)Q::store(dequant_kv<Q_DTYPE, KV_DTYPE>(cache[mtc_slot(rows, r, t0 + k) * MTC_W + c], a.kv_scale))
                                  : (u16)0;
        }
        __syncthreads();
        // B) dots, chunks ascending through C
#if WAVE_SIZE == 32
        if (wave < MTC_STEP / 8) {
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int c = 0; c < MTC_CHUNKS; ++c) {
                u16 fa[8], fb[4];
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    int row, k;
                    MmaShape<MMA_M16N8K16>::a_index(lane, i, row, k);
                    fa[i] = q_t[row * MTC_W + 16 * c + k];
                }
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    int k, col;
                    MmaShape<MMA_M16N8K16>::b_index(lane, i, k, col);
                    fb[i] = k_t[(8 * wave + col) * MTC_W + 16 * c + k];
                }
                mma_m16n8k16<MTC_FMT>(fa, fb, d, d, a.host_target);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int row, col;
                MmaShape<MMA_M16N8K16>::d_index(lane, i, row, col);
                s_tile[row * MTC_STEP + 8 * wave + col] = d[i];
            }
        }
#else
        if (wave == 0) {
            float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int c = 0; c < MTC_CHUNKS; ++c) {
                u16 fa[4], fb[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    int row, k, col;
                    MmaShape<MFMA_16X16X16>::a_index(lane, i, row, k);
                    fa[i] = q_t[row * MTC_W + 16 * c + k];
                    MmaShape<MFMA_16X16X16>::b_index(lane, i, k, col);
                    fb[i] = k_t[col * MTC_W + 16 * c + k];
                }
                mfma<MFMA_16X16X16, MTC_FMT>(fa, fb, d, d, a.host_target);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int row, col;
                MmaShape<MFMA_16X16X16>::d_index(lane, i, row, col);
                s_tile[row * MTC_STEP + col] = d[i];
            }
        }
#endif
        __syncthreads();
        // C) per-head statistics, keys ascending
        if (tid < nh) {
            const int h = tid;
            float s[MTC_STEP];
            float tile_max = f32_neg_inf();
#pragma unroll
            for (int k = 0; k < MTC_STEP; ++k) {
                s[k] = t0 + k < end ? score(s_tile[h * MTC_STEP + k], a.scale, a.scale_log2, 0.0f, 0.0f) : f32_neg_inf();
                tile_max = fmaxf(tile_max, s[k]);
            }
            const TileStats ts = tile_begin(m_s[h], tile_max);
#pragma unroll
            for (int k = 0; k < MTC_STEP; ++k) {
                s[k] = exp2c(s[k] - ts.m_ref);
                p_t[h * MTC_STEP + k] = (u16)Q::store(s[k]);
            }
            l_s[h] = fmaf(l_s[h], ts.alpha, mtc_row_sum(s));
            m_s[h] = ts.m_new;
            alpha_s[h] = ts.alpha;
        }
        __syncthreads();
        // D) acc = MMA(P, V, acc * alpha) over this wave's dim tiles, the
        // tile's keys 16 at a time through C
#if WAVE_SIZE == 32
        u16 pa[MTC_STEP / 16][8];
#pragma unroll
        for (int kc = 0; kc < MTC_STEP / 16; ++kc)
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                int row, k;
                MmaShape<MMA_M16N8K16>::a_index(lane, i, row, k);
                pa[kc][i] = p_t[row * MTC_STEP + 16 * kc + k];
            }
#pragma unroll
        for (int j = 0; j < MTC_TILES_PER_WAVE; ++j) {
            const int tile = wave + MTC_WAVES * j;
            if (tile < MTC_TILES) {
                float c4[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    int row, dcol;
                    MmaShape<MMA_M16N8K16>::d_index(lane, i, row, dcol);
                    c4[i] = acc[j][i] * alpha_s[row];
                }
#pragma unroll
                for (int kc = 0; kc < MTC_STEP / 16; ++kc) {
                    u16 vb[4];
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        int k, col;
                        MmaShape<MMA_M16N8K16>::b_index(lane, i, k, col);
                        vb[i] = k_t[(16 * kc + k) * MTC_W + MTC_TILE_N * tile + col];
                    }
                    mma_m16n8k16<MTC_FMT>(pa[kc], vb, c4, c4, a.host_target);
                }
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[j][i] = c4[i];
            }
        }
#else
        u16 pa[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int row, k;
            MmaShape<MFMA_16X16X16>::a_index(lane, i, row, k);
            pa[i] = p_t[row * MTC_STEP + k];
        }
#pragma unroll
        for (int j = 0; j < MTC_TILES_PER_WAVE; ++j) {
            const int tile = wave + MTC_WAVES * j;
            if (tile < MTC_TILES) {
                u16 vb[4];
                float c4[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    int k, col;
                    MmaShape<MFMA_16X16X16>::b_index(lane, i, k, col);
                    vb[i] = k_t[k * MTC_W + MTC_TILE_N * tile + col];
                    int row, dcol;
                    MmaShape<MFMA_16X16X16>::d_index(lane, i, row, dcol);
                    c4[i] = acc[j][i] * alpha_s[row];
                }
                mfma<MFMA_16X16X16, MTC_FMT>(pa, vb, c4, acc[j], a.host_target);
            }
        }
#endif
        __syncthreads();
    }
    // The split's Att_Out rows: acc / l per (head, dim), then m + log2c(l).
    const i64 Lkv = MTC_LKV;
#pragma unroll
    for (int j = 0; j < MTC_TILES_PER_WAVE; ++j) {
        const int tile = wave + MTC_WAVES * j;
        if (tile < MTC_TILES) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int row, col;
#if WAVE_SIZE == 32
                MmaShape<MMA_M16N8K16>::d_index(lane, i, row, col);
#else
                MmaShape<MFMA_16X16X16>::d_index(lane, i, row, col);
#endif
                if (row < nh) {
                    const i64 at = ((r * H + h0 + row) * S + split) * (Lkv + 1);
                    att[at + MTC_TILE_N * tile + col] = row_out(acc[j][i], l_s[row]);
                }
            }
        }
    }
    if (tid < nh) {
        const i64 at = ((r * H + h0 + tid) * S + split) * (Lkv + 1);
        att[at + Lkv] = row_lse2(m_s[tid], l_s[tid]);
    }
}
