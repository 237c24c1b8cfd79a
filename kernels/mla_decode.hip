// mla_decode.hip: sim/src/kernels/mla_decode.rs (vLLM's Triton
// decode_attention_fwd for absorbed MLA: _fwd_grouped_kernel_stage1 +
// _fwd_kernel_stage2, which TRITON_MLA launches; the same loop nest with
// AITER's whole-granule split bounds models mla_decode_fwd), loop for loop.
//
// Query row r has q [H, W] (W = Lkv + R: q_latent | q_pe), pages
// pages[page_start[r] ..], page_size[r], visible keys kv_len[r] and split
// length split_len[r]. Key t lives in flat cache slot pages[t / ps] * ps +
// t % ps; the whole W-wide entry is K, its first Lkv channels are V.
// split_bounds: Triton per = cdiv(len, S); AITER per = cdiv(cdiv(len, g), S) * g;
//   start = min(per * split, len), end = min(start + per, len), then
//   end = min(end, kv_len).
// stage1, grid (rows, cdiv(H, BLOCK_H), S), program (r, hblk, split); empty
// splits write nothing:
//   for n0 in start .. end step BLOCK_N (keys j < BLOCK_N, valid = end - n0):
//     A) per (head, key): qk_nope = fmaf chain c < Lkv of q . load(K),
//        qk_pe = fmaf chain c in Lkv .. W, both from 0; s = score(qk_nope +
//        qk_pe), -inf for j >= valid; load: fp8 -> round_q(x * kv_scale)
//     B) per head: tile_max, tile_begin, p_j = exp2c(s_j - m_ref), tile_sum,
//        l = fmaf(l, alpha, tile_sum), m = m_new
//     C) per (head, c < Lkv): acc = acc * alpha; fmaf(round_q(p_j), K[j][c], acc)
//   att[r, h, split, :Lkv] = acc / l (0 if l == 0), att[.., Lkv] = m + log2c(l)
// stage2, grid (rows, H), threads over c: RowState over the non-empty splits
// ascending, each one key with score att[.., Lkv] and value att[.., :Lkv],
// P in f32; o = round_out(acc / l); lse = round_lse((m + log2c(l)) * LN2).
// Compile-time constants: Q_DTYPE, KV_DTYPE, OUT_DTYPE, LSE_DTYPE.

typedef Storage<Q_DTYPE> Q;
typedef Storage<KV_DTYPE> KV;
#define MLA_BLOCK_N 16
#define MLA_BLOCK_H 16

struct MlaArgs {
    i64 num_rows, num_heads, kv_lora_rank, width, num_kv_splits, granularity;
    i32 granular, pad;
    float scale, scale_log2, kv_scale;
};

struct MlaRows {
    const i32* pages;
    const i64* page_start;
    const i32* page_size;
    const i32* kv_len;
    const i32* split_len;
};

// KvSplits::bounds, then clipped to the row's visible keys (split_range).
DEVICE void split_range(const MlaArgs& a, const MlaRows& rows, i64 r, i64 split, i64* start, i64* end) {
    const i64 len = rows.split_len[r], S = a.num_kv_splits, g = a.granularity;
    const i64 per = a.granular ? ((len + g - 1) / g + S - 1) / S * g : (len + S - 1) / S;
    const i64 s = min(per * split, len);
    *start = s;
    *end = min(min(s + per, len), (i64)rows.kv_len[r]);
}

DEVICE i64 slot_of(const MlaRows& rows, i64 r, i64 t) {
    const i64 ps = rows.page_size[r];
    return (i64)rows.pages[rows.page_start[r] + t / ps] * ps + t % ps;
}

extern "C" __global__ void mla_decode_stage1(
    const typename Q::T* __restrict__ q, const typename KV::T* __restrict__ cache, const i32* __restrict__ pages,
    const i64* __restrict__ page_start, const i32* __restrict__ page_size, const i32* __restrict__ kv_len,
    const i32* __restrict__ split_len, float* __restrict__ att, MlaArgs a) {
    extern __shared__ float smem[];
    const MlaRows rows = {pages, page_start, page_size, kv_len, split_len};
    const i64 r = blockIdx.x, hblk = blockIdx.y, split = blockIdx.z;
    const i64 H = a.num_heads, Lkv = a.kv_lora_rank, W = a.width, S = a.num_kv_splits, BN = MLA_BLOCK_N;
    i64 start, end;
    split_range(a, rows, r, split, &start, &end);
    if (end <= start) return;
    const i64 h0 = hblk * MLA_BLOCK_H, nh = min(h0 + MLA_BLOCK_H, H) - h0;
    float* s_tile = smem;                     // [BLOCK_H][BLOCK_N]
    float* acc = s_tile + MLA_BLOCK_H * BN;   // [BLOCK_H][Lkv]
    float* m_i = acc + MLA_BLOCK_H * Lkv;     // [BLOCK_H]
    float* l_i = m_i + MLA_BLOCK_H;
    float* alpha_i = l_i + MLA_BLOCK_H;
    for (i64 h = threadIdx.x; h < nh; h += blockDim.x) {
        m_i[h] = f32_neg_inf();
        l_i[h] = 0.0f;
    }
    for (i64 i = threadIdx.x; i < nh * Lkv; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    for (i64 n0 = start; n0 < end; n0 += BN) {
        const i64 valid = min(end - n0, BN);
        // A) scores
        for (i64 idx = threadIdx.x; idx < nh * BN; idx += blockDim.x) {
            const i64 h = idx / BN, j = idx % BN;
            float s = f32_neg_inf();
            if (j < valid) {
                const typename Q::T* qh = q + (r * H + h0 + h) * W;
                const typename KV::T* k = cache + slot_of(rows, r, n0 + j) * W;
                float qk_nope = 0.0f, qk_pe = 0.0f;
                for (i64 c = 0; c < Lkv; ++c) qk_nope = fmaf(Q::load(qh[c]), dequant_kv<Q_DTYPE, KV_DTYPE>(k[c], a.kv_scale), qk_nope);
                for (i64 c = Lkv; c < W; ++c) qk_pe = fmaf(Q::load(qh[c]), dequant_kv<Q_DTYPE, KV_DTYPE>(k[c], a.kv_scale), qk_pe);
                s = score(qk_nope + qk_pe, a.scale, a.scale_log2, 0.0f, 0.0f);
            }
            s_tile[h * BN + j] = s;
        }
        __syncthreads();
        // B) per-head statistics
        for (i64 h = threadIdx.x; h < nh; h += blockDim.x) {
            float tile_max = f32_neg_inf();
            for (i64 j = 0; j < BN; ++j) tile_max = fmaxf(tile_max, s_tile[h * BN + j]);
            const TileStats ts = tile_begin(m_i[h], tile_max);
            float tile_sum = 0.0f;
            for (i64 j = 0; j < BN; ++j) {
                const float p = exp2c(s_tile[h * BN + j] - ts.m_ref);
                tile_sum = tile_sum + p;
                s_tile[h * BN + j] = p;
            }
            l_i[h] = fmaf(l_i[h], ts.alpha, tile_sum);
            m_i[h] = ts.m_new;
            alpha_i[h] = ts.alpha;
        }
        __syncthreads();
        // C) acc = acc * alpha + P V (V = the latent channels; zero past valid)
        for (i64 idx = threadIdx.x; idx < nh * Lkv; idx += blockDim.x) {
            const i64 h = idx / Lkv, c = idx % Lkv;
            float acc_c = acc[idx] * alpha_i[h];
            for (i64 j = 0; j < BN; ++j) {
                const float p = s_tile[h * BN + j];
                if (p != 0.0f) {
                    const float v = j < valid ? dequant_kv<Q_DTYPE, KV_DTYPE>(cache[slot_of(rows, r, n0 + j) * W + c], a.kv_scale) : 0.0f;
                    acc_c = fmaf(round_to<Q_DTYPE>(p), v, acc_c);
                }
            }
            acc[idx] = acc_c;
        }
        __syncthreads();
    }
    for (i64 idx = threadIdx.x; idx < nh * (Lkv + 1); idx += blockDim.x) {
        const i64 h = idx / (Lkv + 1), c = idx % (Lkv + 1);
        const i64 at = ((r * H + h0 + h) * S + split) * (Lkv + 1);
        att[at + c] = c < Lkv ? row_out(acc[h * Lkv + c], l_i[h]) : row_lse2(m_i[h], l_i[h]);
    }
}

extern "C" __global__ void mla_decode_stage2(
    const float* __restrict__ att, const i32* __restrict__ pages, const i64* __restrict__ page_start,
    const i32* __restrict__ page_size, const i32* __restrict__ kv_len, const i32* __restrict__ split_len,
    typename Storage<OUT_DTYPE>::T* __restrict__ out, typename Storage<LSE_DTYPE>::T* __restrict__ lse, MlaArgs a) {
    const MlaRows rows = {pages, page_start, page_size, kv_len, split_len};
    const i64 r = blockIdx.x, head = blockIdx.y, H = a.num_heads, Lkv = a.kv_lora_rank, S = a.num_kv_splits;
    // Every thread walks the same (m, l) sequence; each owns channels c.
    for (i64 c0 = threadIdx.x; c0 < Lkv + 1; c0 += blockDim.x) {
        float m = f32_neg_inf(), l = 0.0f, acc = 0.0f;
        for (i64 split = 0; split < S; ++split) {
            i64 start, end;
            split_range(a, rows, r, split, &start, &end);
            if (end <= start) continue;
            const float* part = att + ((r * H + head) * S + split) * (Lkv + 1);
            const float s = part[Lkv];
            const TileStats ts = tile_begin(m, fmaxf(f32_neg_inf(), s));
            const float p = exp2c(s - ts.m_ref);
            const float tile_sum = 0.0f + p;
            if (c0 < Lkv) {
                acc = acc * ts.alpha;
                if (p != 0.0f) acc = fmaf(p, part[c0], acc);
            }
            l = fmaf(l, ts.alpha, tile_sum);
            m = ts.m_new;
        }
        if (c0 < Lkv) out[(r * H + head) * Lkv + c0] = Storage<OUT_DTYPE>::store(row_out(acc, l));
        else lse[r * H + head] = Storage<LSE_DTYPE>::store(row_lse2(m, l) * LN2);
    }
}
