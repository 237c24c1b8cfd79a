// paged_decode.hip: sim/src/kernels/paged_decode.rs, both decode kernels,
// reading K/V through any KvLayout (NHD, ROCm x-packed, AITER shuffled).
// Only sequences with query_len == 1 are processed; other rows of `out` are
// left as they were (the caller uploads them).
//
// paged_attention_2d (vLLM Triton kernel_paged_attention_2d), grid
// (num_reqs, Hkv), the qpk heads of one kv head for the sequence's query row:
//   for tile j ascending (keys j*TILE .. min((j+1)*TILE, seq_len)):
//     A) per (head, key): s = score(fmaf chain over d of q . dequant(k)), or
//        out of window: -10000 * LOG2E + bias * LOG2E (not -inf)
//     B) per head: RowState::update statistics (tile_begin, exp2c, tile_sum)
//     C) per (head, d): acc = acc * alpha; fmaf(round_q(p), dequant(v), acc)
//        over the tile's keys ascending, p == 0 skipped
//   out = round_q(acc / (l + 1e-10))
// ll4mi (vLLM paged_attention_rocm): partition kernel, grid (num_reqs,
// max_num_partitions, Hkv); partition p = tokens [p*P, p*P + P) (P = 256 in
// vLLM) as waves of 64 token lanes. Per head of the group: s_t = score with
// scale * k_scale (fp8 K enters as stored), masked -FLT_MAX; per wave the
// 64-lane butterfly max and, of e_t = exp2c(s_t - wmax), the butterfly sum
// (64 lanes on every vendor, as the sim models it);
// pmax, psum = fmaf(wsum_w, exp2c(wmax_w - pmax), psum) over waves
// ascending; p_t = round_q((e_t * (1 / (psum + 1e-6))) * exp2c(wmax_w - pmax));
// tmp_out[d] = round_q([v_scale *] fmaf chain over t of p_t * v_t[d]).
// Reduce kernel, grid (Hq, num_reqs): w_p = exp_sums[p] * exp2c(ml_p - gmax);
// lane p % 64 accumulates w_p (p ascending), 64-lane butterfly sum = gsum;
// out[d] = round_q(fmaf chain over p of tmp_out[p][d] * w_p, * (1 / (gsum + 1e-6))).
//
// Where the work goes (the sim fixes only the order of operations of each
// output element; everything below keeps it):
//   - one block reads each K/V byte of its (sequence, kv head[, partition])
//     once: up to DECODE_HG query heads of the group per pass, each thread
//     owning one token and DECODE_HG independent dot chains (ILP); K comes
//     as 16-byte vectors of 16 / sizeof(KV) consecutive dims of one row
//     (x-packed K and NHD rows are contiguous that way), Q from shared memory;
//   - scores of a whole chunk of DECODE_THREADS keys are computed before
//     their softmax statistics (scores do not depend on the running state);
//     the statistics that are sequential in the sim (the 2D kernel's running
//     max, l) stay sequential per head, the rest is one thread per key/tile;
//   - the ll4mi wave butterflies run on real lanes (butterfly64 in
//     portable.h: the sim's xor sequence, offset 32 through shared memory
//     on 32-wide warps);
//   - PV: a thread owns up to DECODE_HPT (head, d) fma chains in registers and
//     walks the keys ascending, reading V of ROCm/AITER layouts as 16-byte
//     vectors of consecutive rows of its dim (NHD: one element at a time);
//   - 2D: each 256-key chunk's V is copied into shared memory (cp.async) as
//     soon as the chunk's first K loads are issued, so V arrives while the
//     scores and statistics are computed; 8 K vectors per thread in flight;
//     PV uses all threads (1, 2 or 4 heads each). On the H100 this moved the
//     2D kernel from 30.5% to 38.8% of the copy (b64 x 8K, 32/8) and the
//     same changes moved ll4mi from 57.6% to 41%, so ll4mi keeps the first
//     structure (see its comment).
// Compile-time constants: Q_DTYPE, KV_DTYPE.

typedef Storage<Q_DTYPE> Q;
typedef Storage<KV_DTYPE> KV;
typedef typename KV::T KVT;
#define KV_IS_FP8 (KV_DTYPE == DT_FP8_FNUZ || KV_DTYPE == DT_FP8_FN)
#define LL4MI_MASKED (-3.402823466e+38f)
#define LL4MI_WAVE 64
// Threads of every decode block (a multiple of the 64-lane sim wave).
#define DECODE_THREADS 256
// Query heads per pass (register dot chains per thread); launchers pass the
// pass size actually used (<= DECODE_HG) in PagedArgs::head_group.
#define DECODE_HG 8
// (head, d) PV chains per thread.
#define DECODE_HPT 4
// A compile-time int as a value (dispatching a generic lambda on it).
template <int V> struct IntC { static constexpr int value = V; };
// KV elements per 16-byte vector.
#define KV_VEC ((int)(16 / sizeof(KVT)))
// Tuning knobs of ll4mi (#ifndef: gpu/sweep-variants.sh sets them through a
// copy of kernels/; gpu/variants/ll4mi*.txt). The defaults are the fastest
// measured on the H100 (docs/src/gpu.md, "Tuning ll4mi"): every setting
// that cost registers (KBATCH 2/4, VBATCH 2-8, PV_SPREAD, PREFETCH, fewer
// blocks per SM) lost more to occupancy than it won (up to -20 points).
// 16-byte K vectors per thread loaded together before their dot chains
// (memory-level parallelism; the 2D kernel's register budget is smaller).
#ifndef LL4MI_KBATCH
#define LL4MI_KBATCH 1
#endif
#define PAGED_2D_KBATCH 8
// 16-byte V vectors per PV thread loaded together before their fma chains
// (ll4mi reads V from the cache: one vector at a time leaves a thread with a
// single load in flight per 8 keys).
#ifndef LL4MI_VBATCH
#define LL4MI_VBATCH 1
#endif
// ll4mi PV chains per thread: 1 = the fewest that keep every thread busy
// (pv_heads_per_thread), 0 = always DECODE_HPT.
#ifndef LL4MI_PV_SPREAD
#define LL4MI_PV_SPREAD 0
#endif
// ll4mi L2 prefetch of the partition's KV at block start (NVIDIA only; a
// hint, no values change): 0 none, 1 V, 2 K and V.
#ifndef LL4MI_PREFETCH
#define LL4MI_PREFETCH 0
#endif
// Resident ll4mi partition blocks per multiprocessor the register allocation
// must allow (__launch_bounds__'s second argument; 0: the compiler's choice,
// which moves between 64 and 128 registers as the code changes; 4 blocks of
// 256 threads, 64 registers, measured best on the H100: gpu/variants/ll4mi.txt).
#ifndef LL4MI_MIN_BLOCKS
#define LL4MI_MIN_BLOCKS 4
#endif
#if LL4MI_MIN_BLOCKS > 0
#define LL4MI_BOUNDS __launch_bounds__(DECODE_THREADS, LL4MI_MIN_BLOCKS)
#else
#define LL4MI_BOUNDS __launch_bounds__(DECODE_THREADS)
#endif

struct PagedArgs {
    i64 num_reqs, num_heads, num_kv_heads, head_size, block_size, max_blocks, num_kv_blocks;
    i64 tile, window, partition_size, max_partitions;
    // stage_v (2D kernel): each chunk's V is copied into shared memory
    // (cp.async on NVIDIA) while its K is read; the launcher sets it only
    // where staged_v_ok holds and the block fits the device's shared memory.
    i32 layout_kind, has_sinks, has_alibi, head_group, stage_v;
    float scale, scale_log2, softcap, k_scale, v_scale;
};

DEVICE KvLayout layout_of(const PagedArgs& a) {
    KvLayout L = {a.layout_kind, a.block_size, a.num_kv_heads, a.head_size, KV_VEC};
    return L;
}

DEVICE float dequant(KVT raw, float scale) { return dequant_kv<Q_DTYPE, KV_DTYPE>(raw, scale); }

// The dot chains' steps over one 16-byte K vector of dims db .. db + KV_VEC.
template <int HG, bool DEQUANT>
DEVICE void vec_dots(float (&dot)[HG], const u32x4& raw, const float* q_s, int D, int db, int hg,
                     float k_scale) {
#pragma unroll
    for (int i0 = 0; i0 < KV_VEC; i0 += 4) {
        float k[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const KVT e = Vec16Elem<KVT>::at(raw, i0 + i);
            k[i] = DEQUANT ? dequant(e, k_scale) : KV::load(e);
        }
        // q_s rows start 16-byte aligned (D % KV_VEC == 0, KV_VEC >= 4).
#pragma unroll
        for (int h = 0; h < HG; ++h) {
            if (h < hg) {
                const f32x4 q = load_f32x4(q_s + h * D + db + i0);
#pragma unroll
                for (int i = 0; i < 4; ++i) dot[h] = fmaf(q.v[i], k[i], dot[h]);
            }
        }
    }
}

// One token's dot chains with hg (<= HG, the compile-time bound of the register
// arrays and unrolled head loops) query heads: dot[h] = fmaf chain over d
// ascending from 0 of q_s[h][d] * kv(k[d]) (kv: the stored value, or the 2D
// kernel's dequantized one). kp points at dim 0 of the token's K row. KB
// 16-byte vectors are loaded before the first fma that reads them (KB == 1:
// one at a time, the loop unrolled twice); after_first_loads() runs once,
// right after the first loads are issued.
template <int HG, bool DEQUANT, int KB, class F>
DEVICE void token_dots(float (&dot)[HG], const KVT* kp, const KvLayout& L, const float* q_s, int D, int hg,
                       float k_scale, F after_first_loads) {
#pragma unroll
    for (int h = 0; h < HG; ++h) dot[h] = 0.0f;
    if (D % KV_VEC == 0) {
        const i64 kstep = k_offset(L, 0, 0, 0, KV_VEC);  // offset of the next 16-byte run of dims
        if constexpr (KB == 1) {
#pragma unroll 2
            for (int d0 = 0; d0 < D; d0 += KV_VEC) {
                const u32x4 raw = load16(kp + (d0 / KV_VEC) * kstep);
                if (d0 == 0) after_first_loads();
                vec_dots<HG, DEQUANT>(dot, raw, q_s, D, d0, hg, k_scale);
            }
        } else {
            for (int d0 = 0; d0 < D; d0 += KB * KV_VEC) {
                u32x4 raw[KB];
#pragma unroll
                for (int b = 0; b < KB; ++b)
                    if (d0 + b * KV_VEC < D) raw[b] = load16(kp + (d0 / KV_VEC + b) * kstep);
                if (d0 == 0) after_first_loads();  // e.g. the V copies, queued behind this token's K
#pragma unroll
                for (int b = 0; b < KB; ++b)
                    if (d0 + b * KV_VEC < D) vec_dots<HG, DEQUANT>(dot, raw[b], q_s, D, d0 + b * KV_VEC, hg, k_scale);
            }
        }
    } else {
        after_first_loads();
        for (int d = 0; d < D; ++d) {
            const KVT e = kp[k_offset(L, 0, 0, 0, d)];
            const float k = DEQUANT ? dequant(e, k_scale) : KV::load(e);
#pragma unroll
            for (int h = 0; h < HG; ++h)
                if (h < hg) dot[h] = fmaf(q_s[h * D + d], k, dot[h]);
        }
    }
}

// The query rows of heads h0 .. h0 + hg, widened, into q_s[hg][D].
DEVICE void load_q(float* q_s, const typename Q::T* q, int hg, int D) {
    for (int i = threadIdx.x; i < hg * D; i += blockDim.x) q_s[i] = Q::load(q[i]);
}

// PV of one (head block, d) unit over keys [j_begin, j_end) of a chunk:
// acc[hh] = fmaf(p, v, acc[hh]) for keys ascending, skipping keys whose
// p_s entry is `skip` (bit pattern), for the HPT heads of the block.
// p_s[h * pstride + j], j relative to the chunk; v_at(j) points at token j's
// V element of this unit's dim (global cache or staged copy).
template <int HPT, bool DEQUANT, int VB = 1, class VAt>
DEVICE void pv_keys(float (&acc)[DECODE_HPT], const float* p_s, int pstride, u32 skip, int j_begin, int j_end,
                    VAt v_at, bool vec_v, float v_scale) {
    if (vec_v) {
        // j_begin, chunk starts and block rows are multiples of KV_VEC here:
        // the KV_VEC rows of this dim are one aligned 16-byte run. VB runs
        // are loaded before the first fma that reads them.
        for (int jb = j_begin; jb < j_end; jb += VB * KV_VEC) {
            u32x4 raw[VB];
#pragma unroll
            for (int b = 0; b < VB; ++b)
                if (jb + b * KV_VEC < j_end) raw[b] = load16(v_at(jb + b * KV_VEC));
#pragma unroll
            for (int b = 0; b < VB; ++b) {
                const int j0 = jb + b * KV_VEC;
#pragma unroll
                for (int i0 = 0; i0 < KV_VEC; i0 += 4) {
                    if (j0 + i0 < j_end) {  // (no `break`: keeps the loops fully unrolled, arrays in registers)
                        f32x4 p4[HPT];  // p of 4 consecutive keys (rows 16-byte aligned)
#pragma unroll
                        for (int hh = 0; hh < HPT; ++hh) p4[hh] = load_f32x4(p_s + hh * pstride + j0 + i0);
#pragma unroll
                        for (int i = 0; i < 4; ++i) {
                            if (j0 + i0 + i < j_end) {
                                const KVT e = Vec16Elem<KVT>::at(raw[b], i0 + i);
                                const float v = DEQUANT ? dequant(e, v_scale) : KV::load(e);
#pragma unroll
                                for (int hh = 0; hh < HPT; ++hh) {
                                    const float p = p4[hh].v[i];
                                    if (__float_as_uint(p) != skip) acc[hh] = fmaf(p, v, acc[hh]);
                                }
                            }
                        }
                    }
                }
            }
        }
    } else {
        for (int j = j_begin; j < j_end; ++j) {
            const KVT e = *v_at(j);
            const float v = DEQUANT ? dequant(e, v_scale) : KV::load(e);
#pragma unroll
            for (int hh = 0; hh < HPT; ++hh) {
                const float p = p_s[hh * pstride + j];
                if (__float_as_uint(p) != skip) acc[hh] = fmaf(p, v, acc[hh]);
            }
        }
    }
}

// (head, d) chains per thread in PV: the fewest (1, 2 or 4) that keep all
// DECODE_THREADS threads busy. Units are u -> (hb = u % hblocks, d = u /
// hblocks): the head blocks of one dim sit on neighbouring lanes, which read
// the same V vector (one access, no extra bytes).
DEVICE int pv_heads_per_thread(int hg, int D) {
    return hg * D > 2 * DECODE_THREADS ? 4 : hg * D > DECODE_THREADS ? 2 : 1;
}

// 16 bytes global -> shared without a register round trip on NVIDIA
// (cp.async, completed by copy_async_wait + __syncthreads); a plain copy
// elsewhere (AMD, the host emulation).
DEVICE void copy16_async(void* dst_shared, const void* src) {
#if defined(ATTNLAB_CUDA) && defined(__CUDA_ARCH__)
    u32 s;
    asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(s) : "l"(dst_shared));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src) : "memory");
#else
    *reinterpret_cast<u32x4*>(dst_shared) = load16(src);
#endif
}
DEVICE void copy_async_wait() {
#if defined(ATTNLAB_CUDA) && defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}

// Staged V of tokens [t0, t0 + n) of kv head kvh (t0 a multiple of the block
// size unless NHD): the cache's own layout with one kv head, so token j (of
// the range) dim d sits at staged_v_token(Ls, j) + staged_v_dim(Ls, d). ROCm / AITER copy whole
// (block, head) runs of D * bs elements (a partial last block too: its rows
// exist in the cache and are never read); NHD copies each token's row.
DEVICE KvLayout staged_layout(const KvLayout& L) {
    KvLayout S = L;
    S.num_kv_heads = 1;
    return S;
}
// Token j's dim-0 offset (the kernels keep it per key in vo_s[j]) and dim
// d's offset; their sum is token j's dim d: v_offset is linear in each.
DEVICE int staged_v_token(const KvLayout& S, int j) {
    if (S.kind == LAYOUT_NHD) return j * (int)S.head_size;
    const int bs = (int)S.block_size;
    return (int)v_offset(S, j / bs, j % bs, 0, 0);
}
DEVICE int staged_v_dim(const KvLayout& S, int d) {
    return S.kind == LAYOUT_NHD ? d : S.kind == LAYOUT_ROCM_PAGED ? d * (int)S.block_size : d * (int)S.x;
}
DEVICE void stage_v(KVT* v_s, const KVT* v_cache, const KvLayout& L, const i32* bt, i64 t0, int n, i64 kvh) {
    const int D = (int)L.head_size, bs = (int)L.block_size;
    if (L.kind == LAYOUT_NHD) {
        const int per = D / KV_VEC;  // vectors per token row
        for (int i = threadIdx.x; i < n * per; i += blockDim.x) {
            const int j = i / per, c = i % per;
            const i64 t = t0 + j;
            copy16_async(v_s + j * D + c * KV_VEC, v_cache + v_offset(L, bt[t / bs], t % bs, kvh, 0) + c * KV_VEC);
        }
    } else {
        const int per = D * bs / KV_VEC, nb = (n + bs - 1) / bs;  // vectors per (block, head) run
        const i64 b0 = t0 / bs;
        for (int i = threadIdx.x; i < nb * per; i += blockDim.x) {
            const int b = i / per, c = i % per;
            copy16_async(v_s + b * D * bs + c * KV_VEC, v_cache + v_offset(L, bt[b0 + b], 0, kvh, 0) + c * KV_VEC);
        }
    }
}

// 2D step C on one chunk, HPT chains per thread: per (head block, d) unit,
// acc from acc_s; per tile k ascending acc = acc * alpha(k), then the tile's
// keys ascending; acc back to acc_s. v_at(j, d): token j's V element of dim d.
template <int HPT, class VAt>
DEVICE void pv_2d(float* acc_s, const float* s_s, const float* alpha_s, int hg, int D, int NT, int TILE, int ntl,
                  int nc, u32 skip, bool vec_v, float v_scale, VAt v_at) {
    const int C = DECODE_THREADS, hblocks = (hg + HPT - 1) / HPT;
    for (int u = threadIdx.x; u < hblocks * D; u += blockDim.x) {
        const int hb = u % hblocks, d = u / hblocks, hh0 = hb * HPT;
        float acc[DECODE_HPT];
#pragma unroll
        for (int hh = 0; hh < DECODE_HPT; ++hh) acc[hh] = hh < HPT && hh0 + hh < hg ? acc_s[(hh0 + hh) * D + d] : 0.0f;
        for (int k = 0; k < ntl; ++k) {
#pragma unroll
            for (int hh = 0; hh < HPT; ++hh) acc[hh] = acc[hh] * alpha_s[min(hh0 + hh, hg - 1) * NT + k];
            pv_keys<HPT, true>(acc, s_s + hh0 * C, C, skip, k * TILE, min((k + 1) * TILE, nc),
                               [&](int j) { return v_at(j, d); }, vec_v, v_scale);
        }
#pragma unroll
        for (int hh = 0; hh < HPT; ++hh)
            if (hh0 + hh < hg) acc_s[(hh0 + hh) * D + d] = acc[hh];
    }
}

// Runs pass(IntC<HGT>(), IntC<FULL>(), h0, hg) for the query heads h0 ..
// h0 + hg of the group, hg = min(HG, qpk - h0) per pass: HGT (compile time)
// bounds the pass's register arrays, butterflies and unrolled head loops;
// FULL says hg == HGT, so no head slot is computed and discarded. (With
// one runtime bound of 8, 32/8 heads ran 8 head slots for 4 heads: ncu on
// the H100 counted ~11 issued instructions per KV byte in ll4mi.) Exact
// passes for the common groups 8, 4 and 1 only: each is a copy of the pass
// in the binary (NVRTC time grows with them).
template <class F> DEVICE void for_each_head_pass(int qpk, int HG, F pass) {
    for (int h0 = 0; h0 < qpk; h0 += HG) {
        const int hg = min(HG, qpk - h0);
        if (hg == 8) pass(IntC<8>(), IntC<1>(), h0, hg);
        else if (hg == 4) pass(IntC<4>(), IntC<1>(), h0, hg);
        else if (hg == 1) pass(IntC<1>(), IntC<1>(), h0, hg);
        else pass(IntC<DECODE_HG>(), IntC<0>(), h0, hg);
    }
}

// ---------------------------------------------------------------- 2D kernel
// Shared memory (floats unless noted), HG = a.head_group, C = DECODE_THREADS
// keys per chunk, NT = C / TILE tiles per chunk:
//   q_s[QS], acc_s[QS] (QS: HG*D rounded up to 4), s_s[HGP*C] (HGP: HG rounded
//   up to DECODE_HPT), tmax_s/mref_s/alpha_s/tsum_s[HG*NT],
//   m_s[HG], l_s[HG], blk_s[C] i32, row_s[C] i32, vo_s[C] i32 (staged_v_token),
//   with stage_v: v_s[C * D] KV elements (16-byte aligned): the chunk's V,
//   copied at the chunk's start so that its loads overlap the K loads, the
//   scores and the statistics.
extern "C" __global__ void __launch_bounds__(DECODE_THREADS, 2) paged_attention_2d(
    const typename Q::T* __restrict__ query, const KVT* __restrict__ k_cache, const KVT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    const float* __restrict__ sinks, const float* __restrict__ alibi_slopes, typename Q::T* __restrict__ out,
    PagedArgs a) {
    extern __shared__ float smem[];
    const i64 seq = blockIdx.x, kvh = blockIdx.y;
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const int qpk = (int)(a.num_heads / a.num_kv_heads), D = (int)a.head_size, TILE = (int)a.tile;
    const int HG = a.head_group, C = DECODE_THREADS, NT = C / TILE, tid = threadIdx.x;
    const i64 row = qsl[seq], seq_len = seq_lens[seq], ctx = seq_len - 1;
    const KvLayout L = layout_of(a);
    const i32 bs = (i32)a.block_size;
    const i32* bt = block_table + seq * a.max_blocks;
    const int QS = (HG * D + 3) / 4 * 4;  // keeps the next regions 16-byte aligned
    float* q_s = smem;
    float* acc_s = q_s + QS;
    float* s_s = acc_s + QS;
    float* tmax_s = s_s + ((HG + DECODE_HPT - 1) / DECODE_HPT) * DECODE_HPT * C;
    float* mref_s = tmax_s + HG * NT;
    float* alpha_s = mref_s + HG * NT;
    float* tsum_s = alpha_s + HG * NT;
    float* m_s = tsum_s + HG * NT;
    float* l_s = m_s + HG;
    i32* blk_s = (i32*)(l_s + HG);
    i32* row_s = blk_s + C;
    i32* vo_s = row_s + C;
    KVT* v_s = (KVT*)(smem + (((float*)(vo_s + C) - smem) + 3) / 4 * 4);
    const KvLayout Ls = staged_layout(L);
    const bool vec_v = L.kind != LAYOUT_NHD && bs % KV_VEC == 0 && TILE % KV_VEC == 0;
    vo_s[tid] = a.stage_v ? staged_v_token(Ls, tid) : 0;  // chunks start at multiples of C: same table
    const u32 skip = 0x80000000u;  // -0.0: "p == 0" (a rounded p is +0 or more, or NaN)
    const float window_masked2 = -10000.0f * LOG2E;
    for (int h0 = 0; h0 < qpk; h0 += HG) {
        const int hg = min(HG, qpk - h0);
        const i64 hbase = kvh * qpk + h0;
        load_q(q_s, query + (row * a.num_heads + hbase) * D, hg, D);
        for (int i = tid; i < hg * D; i += blockDim.x) acc_s[i] = 0.0f;
        if (tid < hg) {
            m_s[tid] = a.has_sinks ? sinks[hbase + tid] * LOG2E : f32_neg_inf();
            l_s[tid] = a.has_sinks ? 1.0f : 0.0f;
        }
        __syncthreads();
        for (i64 t0 = 0; t0 < seq_len; t0 += C) {
            const int nc = (int)(min(t0 + C, seq_len) - t0), ntl = (nc + TILE - 1) / TILE;
            const auto stage = [&] {
                if (a.stage_v) stage_v(v_s, v_cache, L, bt, t0, nc, kvh);
            };
            // A) scores of the chunk's keys, one thread per key.
            if (tid < nc) {
                const i64 t = t0 + tid;
                const i32 blk = bt[t / bs], r = (i32)(t % bs);
                blk_s[tid] = blk;
                row_s[tid] = r;
                float dot[DECODE_HG];
                token_dots<DECODE_HG, true, PAGED_2D_KBATCH>(dot, k_cache + k_offset(L, blk, r, kvh, 0), L, q_s, D, hg, a.k_scale,
                                                  stage);
                const bool vis = visible(t, ctx, true, a.window);
#pragma unroll
                for (int h = 0; h < DECODE_HG; ++h) {
                    if (h < hg) {
                        const float bias = a.has_alibi ? alibi_slopes[hbase + h] * ((float)t - (float)ctx) : 0.0f;
                        s_s[h * C + tid] = vis ? score(dot[h], a.scale, a.scale_log2, a.softcap, bias)
                                               : window_masked2 + bias * LOG2E;
                    }
                }
            } else {
                stage();
            }
            __syncthreads();
            // B1) tile maxima, one thread per (head, tile).
            for (int i = tid; i < hg * ntl; i += blockDim.x) {
                const int h = i / ntl, k = i % ntl, j1 = min((k + 1) * TILE, nc);
                float mx = f32_neg_inf();
                for (int j = k * TILE; j < j1; ++j) mx = fmaxf(mx, s_s[h * C + j]);
                tmax_s[h * NT + k] = mx;
            }
            __syncthreads();
            // B2) the running max, sequential over tiles per head.
            if (tid < hg) {
                float m = m_s[tid];
                for (int k = 0; k < ntl; ++k) {
                    const TileStats ts = tile_begin(m, tmax_s[tid * NT + k]);
                    mref_s[tid * NT + k] = ts.m_ref;
                    alpha_s[tid * NT + k] = ts.alpha;
                    m = ts.m_new;
                }
                m_s[tid] = m;
            }
            __syncthreads();
            // B3) p = exp2c(s - m_ref of its tile), one thread per (head, key).
            for (int i = tid; i < hg * nc; i += blockDim.x) {
                const int h = i / nc, j = i % nc;
                s_s[h * C + j] = exp2c(s_s[h * C + j] - mref_s[h * NT + j / TILE]);
            }
            __syncthreads();
            // B4) tile sums (keys ascending, unrounded p), then p -> round_q(p)
            // or the skip mark, one thread per (head, tile).
            for (int i = tid; i < hg * ntl; i += blockDim.x) {
                const int h = i / ntl, k = i % ntl, j1 = min((k + 1) * TILE, nc);
                float sum = 0.0f;
                for (int j = k * TILE; j < j1; ++j) {
                    const float p = s_s[h * C + j];
                    sum = sum + p;
                    s_s[h * C + j] = p != 0.0f ? round_to<Q_DTYPE>(p) : __uint_as_float(skip);
                }
                tsum_s[h * NT + k] = sum;
            }
            copy_async_wait();
            __syncthreads();
            // B5) l = fmaf(l, alpha, tile_sum) over tiles; C) PV per (head block, d).
            if (tid < hg) {
                float l = l_s[tid];
                for (int k = 0; k < ntl; ++k) l = fmaf(l, alpha_s[tid * NT + k], tsum_s[tid * NT + k]);
                l_s[tid] = l;
            }
            const int hpt = pv_heads_per_thread(hg, D);
#define PV_2D(HPT, VAT) pv_2d<HPT>(acc_s, s_s, alpha_s, hg, D, NT, TILE, ntl, nc, skip, vec_v, a.v_scale, VAT)
            if (a.stage_v) {
                const auto v_at = [&](int j, int d) { return v_s + vo_s[j] + staged_v_dim(Ls, d); };
                if (hpt == 4) PV_2D(4, v_at); else if (hpt == 2) PV_2D(2, v_at); else PV_2D(1, v_at);
            } else {
                const auto v_at = [&](int j, int d) {
                    return v_cache + v_offset(L, blk_s[j], row_s[j], kvh, 0) + v_offset(L, 0, 0, 0, d);
                };
                if (hpt == 4) PV_2D(4, v_at); else if (hpt == 2) PV_2D(2, v_at); else PV_2D(1, v_at);
            }
#undef PV_2D
            __syncthreads();
        }
        for (int i = tid; i < hg * D; i += blockDim.x) {
            const int h = i / D;
            out[(row * a.num_heads + hbase) * D + i] = Q::store(acc_s[i] / (l_s[h] + 1e-10f));
        }
        __syncthreads();
    }
}

// ------------------------------------------------------------- ll4mi kernels
// ll4mi PV, HPT chains per thread: tmp_out[h][d] = round_q([v_scale *] fmaf
// chain over t ascending of p_t * v_t[d]), p == 0 skipped. v_at(j, d):
// token j's V element of dim d.
template <int HPT, class VAt>
DEVICE void ll4mi_pv(float* tmp_out, const float* e_s, int hg, int D, int P, int n, bool vec_v, const PagedArgs& a,
                     i64 seq, i64 hbase, i64 part, VAt v_at) {
    const int hblocks = (hg + HPT - 1) / HPT;
    for (int u = threadIdx.x; u < hblocks * D; u += blockDim.x) {
        const int hb = u % hblocks, d = u / hblocks, hh0 = hb * HPT;
        float acc[DECODE_HPT];
#pragma unroll
        for (int hh = 0; hh < DECODE_HPT; ++hh) acc[hh] = 0.0f;
        pv_keys<HPT, false, LL4MI_VBATCH>(acc, e_s + hh0 * P, P, 0u, 0, n, [&](int j) { return v_at(j, d); }, vec_v, 0.0f);
#pragma unroll
        for (int hh = 0; hh < HPT; ++hh) {
            if (hh0 + hh < hg) {
                const i64 o = (seq * a.num_heads + hbase + hh0 + hh) * a.max_partitions + part;
                tmp_out[o * D + d] = round_to<Q_DTYPE>(KV_IS_FP8 ? acc[hh] * a.v_scale : acc[hh]);
            }
        }
    }
}

// L2 prefetch hints for the KV of tokens [t0, t0 + n) of kv head kvh (V, and
// K when with_k), 128-byte lines spread over the block's threads: the
// (block, head) runs of the x-packed layouts (D * bs contiguous elements;
// only where whole blocks make up the range), the token rows of NHD.
DEVICE void prefetch_l2(const void* p) {
#if defined(ATTNLAB_CUDA) && defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
    (void)p;
#endif
}
DEVICE void prefetch_partition_l2(const KVT* k_cache, const KVT* v_cache, const KvLayout& L, const i32* bt, i64 t0,
                                  int n, i64 kvh, bool with_k) {
    const int D = (int)L.head_size, bs = (int)L.block_size, LINE = 128 / (int)sizeof(KVT);
    const bool nhd = L.kind == LAYOUT_NHD;
    if (!nhd && (t0 % bs != 0 || (n % bs != 0 && n < bs))) return;
    const int runs = nhd ? n : (n + bs - 1) / bs, run_elems = nhd ? D : D * bs;
    const int lines = (run_elems + LINE - 1) / LINE;
    for (int i = threadIdx.x; i < runs * lines; i += blockDim.x) {
        const int r = i / lines, c = i % lines;
        const i64 t = nhd ? t0 + r : t0 + (i64)r * bs;
        const i64 blk = bt[t / bs], row = nhd ? t % bs : 0;
        prefetch_l2(v_cache + v_offset(L, blk, row, kvh, 0) + c * LINE);
        if (with_k) prefetch_l2(k_cache + k_offset(L, blk, row, kvh, 0) + c * LINE);
    }
}

// Shared memory (floats unless noted), HG = a.head_group (HGP: rounded up to
// DECODE_HPT), P = partition size, W = P / 64:
//   q_s[QS] (HG*D rounded up to 4), e_s[HGP*P] (e, then p), wmax_s/wsum_s/wscale_s[HG*W], inv_s[HG],
//   xchg[DECODE_HG*DECODE_THREADS] (butterfly offset 32 on 32-wide warps),
//   blk_s[P] i32, row_s[P] i32.
// V is read from the cache in PV, DECODE_HPT heads per thread: on the H100
// the 2D kernel's staged V (82 KB blocks, 2 per SM), 16 K loads in flight
// per thread and 2 heads per PV thread made this kernel slower (57.6% -> 41% of the copy at b64 x 8K, 32/8),
// and so did the knob variants above; ncu (b64 x 8K) saw it issue-bound as
// much as memory-bound (58% issue slots busy, 54% DRAM), so the next gains
// are fewer instructions per byte, not more loads in flight.
extern "C" __global__ void LL4MI_BOUNDS paged_attention_ll4mi_partition(
    const typename Q::T* __restrict__ query, const KVT* __restrict__ k_cache, const KVT* __restrict__ v_cache,
    const i32* __restrict__ block_table, const i32* __restrict__ qsl, const i32* __restrict__ seq_lens,
    const float* __restrict__ alibi_slopes, float* __restrict__ max_logits, float* __restrict__ exp_sums,
    float* __restrict__ tmp_out, PagedArgs a) {
    extern __shared__ float smem[];
    const i64 seq = blockIdx.x, part = blockIdx.y, kvh = blockIdx.z;
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const int P = (int)a.partition_size, D = (int)a.head_size, qpk = (int)(a.num_heads / a.num_kv_heads);
    const i64 row = qsl[seq], seq_len = seq_lens[seq], start = part * P;
    if (start >= seq_len) return;
    const int n = (int)(min(start + (i64)P, seq_len) - start), W = P / LL4MI_WAVE, tid = threadIdx.x;
    const int HG = a.head_group, HGP = (HG + DECODE_HPT - 1) / DECODE_HPT * DECODE_HPT;
    const KvLayout L = layout_of(a);
    const i32 bs = (i32)a.block_size;
    const i32* bt = block_table + seq * a.max_blocks;
    const int QS = (HG * D + 3) / 4 * 4;  // keeps e_s 16-byte aligned
    float* q_s = smem;
    float* e_s = q_s + QS;
    float* wmax_s = e_s + HGP * P;
    float* wsum_s = wmax_s + HG * W;
    float* wscale_s = wsum_s + HG * W;
    float* inv_s = wscale_s + HG * W;
    float* xchg = inv_s + HG;
    i32* blk_s = (i32*)(xchg + DECODE_HG * DECODE_THREADS);
    i32* row_s = blk_s + P;
    const bool vec_v = L.kind != LAYOUT_NHD && bs % KV_VEC == 0;
    if (LL4MI_PREFETCH) prefetch_partition_l2(k_cache, v_cache, L, bt, start, n, kvh, LL4MI_PREFETCH == 2);
    for (int j = tid; j < n; j += blockDim.x) {
        const i64 t = start + j;
        blk_s[j] = bt[t / bs];
        row_s[j] = (i32)(t % bs);
    }
    for_each_head_pass(qpk, HG, [&](auto hgt, auto full, int h0, int hg_pass) {
        constexpr int HGT = decltype(hgt)::value;
        const int hg = decltype(full)::value ? HGT : hg_pass;
        const i64 hbase = kvh * qpk + h0;
        load_q(q_s, query + (row * a.num_heads + hbase) * D, hg, D);
        __syncthreads();
        // Scores and the per-wave statistics, DECODE_THREADS tokens per round:
        // lane l of wave w is token 64w + l, as in the sim.
        for (int r0 = 0; r0 < P; r0 += DECODE_THREADS) {
            const int j = r0 + tid;
            float s[HGT];
#pragma unroll
            for (int h = 0; h < HGT; ++h) s[h] = LL4MI_MASKED;
            if (j < n) {
                const i64 t = start + j;
                float dot[HGT];
                token_dots<HGT, false, LL4MI_KBATCH>(dot, k_cache + k_offset(L, blk_s[j], row_s[j], kvh, 0), L, q_s, D, hg, 0.0f,
                                                [] {});
                if (visible(t, seq_len - 1, true, a.window)) {
#pragma unroll
                    for (int h = 0; h < HGT; ++h) {
                        if (h < hg) {
                            const float bias =
                                a.has_alibi ? alibi_slopes[hbase + h] * ((float)t - (float)(seq_len - 1)) : 0.0f;
                            s[h] = score(dot[h], a.scale, a.scale_log2, a.softcap, bias);
                        }
                    }
                }
            }
            // A wave with no token below n ends with -FLT_MAX and 0, as the
            // sim's skipped wave; lanes past n hold -FLT_MAX and e = 0.
            float m[HGT], e[HGT];
#pragma unroll
            for (int h = 0; h < HGT; ++h) m[h] = s[h];
            butterfly64<HGT, true>(m, xchg);  // wmax of the lane's wave
#pragma unroll
            for (int h = 0; h < HGT; ++h) e[h] = j < n ? exp2c(s[h] - m[h]) : 0.0f;
            if (j < P) {
#pragma unroll
                for (int h = 0; h < HGT; ++h)
                    if (h < hg) e_s[h * P + j] = e[h];
            }
            butterfly64<HGT, false>(e, xchg);  // wsum of the lane's wave
            if (j < P && j % LL4MI_WAVE == 0) {
#pragma unroll
                for (int h = 0; h < HGT; ++h) {
                    if (h < hg) {
                        wmax_s[h * W + j / LL4MI_WAVE] = m[h];
                        wsum_s[h * W + j / LL4MI_WAVE] = e[h];
                    }
                }
            }
        }
        __syncthreads();
        // Across the waves, ascending (one thread per head).
        if (tid < hg) {
            float pmax = LL4MI_MASKED;
            for (int w = 0; w < W; ++w) pmax = fmaxf(pmax, wmax_s[tid * W + w]);
            float psum = 0.0f;
            for (int w = 0; w < W; ++w) psum = fmaf(wsum_s[tid * W + w], exp2c(wmax_s[tid * W + w] - pmax), psum);
            for (int w = 0; w < W; ++w) wscale_s[tid * W + w] = exp2c(wmax_s[tid * W + w] - pmax);
            inv_s[tid] = 1.0f / (psum + 1e-6f);
            const i64 o = (seq * a.num_heads + hbase + tid) * a.max_partitions + part;
            max_logits[o] = pmax;
            exp_sums[o] = psum;
        }
        __syncthreads();
        for (int i = tid; i < hg * P; i += blockDim.x) {
            const int h = i / P, j = i % P;
            e_s[i] = j < n ? round_to<Q_DTYPE>((e_s[i] * inv_s[h]) * wscale_s[h * W + j / LL4MI_WAVE]) : 0.0f;
        }
        __syncthreads();
        // PV: tmp_out[h][d] = fmaf chain over t ascending of p_t * v_t[d], p == 0 skipped.
        const i64 dim_stride = v_offset(L, 0, 0, 0, 1);
        const auto v_at = [&](int j, int d) { return v_cache + v_offset(L, blk_s[j], row_s[j], kvh, 0) + d * dim_stride; };
        const int hpt = LL4MI_PV_SPREAD ? pv_heads_per_thread(hg, D) : DECODE_HPT;
#define LL4MI_PV(HPT) ll4mi_pv<HPT>(tmp_out, e_s, hg, D, P, n, vec_v, a, seq, hbase, part, v_at)
        if (hpt == 4) LL4MI_PV(4); else if (hpt == 2) LL4MI_PV(2); else LL4MI_PV(1);
#undef LL4MI_PV
        __syncthreads();
    });
}

// Reduce, grid (Hq, num_reqs), DECODE_THREADS threads; shared w_s[max_partitions]
// plus a few scratch floats and xchg[DECODE_THREADS].
extern "C" __global__ void __launch_bounds__(DECODE_THREADS) paged_attention_ll4mi_reduce(
    const float* __restrict__ max_logits, const float* __restrict__ exp_sums, const float* __restrict__ tmp_out,
    const i32* __restrict__ qsl, const i32* __restrict__ seq_lens, typename Q::T* __restrict__ out, PagedArgs a) {
    extern __shared__ float smem[];
    const i64 h = blockIdx.x, seq = blockIdx.y, D = a.head_size, P = a.partition_size;
    if (qsl[seq + 1] - qsl[seq] != 1) return;
    const int tid = threadIdx.x;
    const i64 seq_len = seq_lens[seq], np = (seq_len + P - 1) / P;
    const i64 base = (seq * a.num_heads + h) * a.max_partitions;
    float* xchg = smem;                 // [DECODE_THREADS]
    float* red = xchg + DECODE_THREADS;  // [DECODE_THREADS / 64]: per-wave maxima, then gmax, inv
    float* w_s = red + DECODE_THREADS / LL4MI_WAVE + 2;  // [np]
    // gmax: max is exact in any order (-FLT_MAX start, NaN-ignoring fmaxf).
    float mx[1] = {LL4MI_MASKED};
    for (i64 p = tid; p < np; p += blockDim.x) mx[0] = fmaxf(mx[0], max_logits[base + p]);
    butterfly64<1, true>(mx, xchg);
    if (tid % LL4MI_WAVE == 0) red[tid / LL4MI_WAVE] = mx[0];
    __syncthreads();
    float gmax = LL4MI_MASKED;
    for (int w = 0; w < DECODE_THREADS / LL4MI_WAVE; ++w) gmax = fmaxf(gmax, red[w]);
    for (i64 p = tid; p < np; p += blockDim.x) w_s[p] = exp_sums[base + p] * exp2c(max_logits[base + p] - gmax);
    __syncthreads();
    // gsum: lane l sums w_p for p = l, l + 64, .. ascending, then the 64-lane butterfly.
    float lane[1] = {0.0f};
    if (tid < LL4MI_WAVE)
        for (i64 p = tid; p < np; p += LL4MI_WAVE) lane[0] += w_s[p];
    butterfly64<1, false>(lane, xchg);
    if (tid == 0) red[DECODE_THREADS / LL4MI_WAVE] = 1.0f / (lane[0] + 1e-6f);
    __syncthreads();
    const float inv = red[DECODE_THREADS / LL4MI_WAVE];
    const i64 row = qsl[seq];
    for (i64 d = tid; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (i64 p = 0; p < np; ++p) acc = fmaf(tmp_out[(base + p) * D + d], w_s[p], acc);
        out[(row * a.num_heads + h) * D + d] = Q::store(acc * inv);
    }
}
