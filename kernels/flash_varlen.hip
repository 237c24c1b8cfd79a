// flash_varlen.hip: sim/src/kernels/flash_varlen.rs (AITER's
// flash_attn_varlen_func with LSE), FA's bottom-right causal alignment.
// Per-row contract (what every entry below keeps, element for element):
//   offset = sk - sq; p_i = i + offset
//   for key tile n in [n_min, n_max), keys j0 = n * block_n .. + len:
//     A) per (row, key): s = fmaf chain over d ascending from 0 of q[d] * k[d];
//        -inf unless visible (p_i < 0: visible iff non-causal), else
//        score(s, -slope |p_i - t|)
//     B) per row: tile_max (any order), tile_begin, p_j = exp2c(s_j - m_ref),
//        tile_sum = ((0 + p_0) + p_1) + ... in ascending j (unrounded p),
//        l = fmaf(l, alpha, tile_sum), m = m_new
//     C) per (row, dv): acc = acc * alpha, then fmaf(round(p_j), v_j[dv], acc)
//        for j ascending, skipping keys whose unrounded p_j == 0
//   out = round(acc / l) (0 if l == 0); lse = (m + log2c(l)) * LN2 (-inf if l == 0)
// Key tiles start at multiples of the sim's block_n, which the per-row
// results depend on (B's statistics are per tile). The row block does not
// matter: a tile fully masked for a row leaves (m, l, acc) unchanged
// (alpha = 1, or 0 on a still-empty row whose acc is 0; tile_sum = 0; every
// p skipped), so programs of any BLOCK_M
// that skip the tiles masked for all their rows give the sim's bits.
//
// flash_attn_varlen (the tiled kernel, SGEMM-style): a program owns
// FV_BM = 64 rows of one sequence and one head, 256 threads; thread
// (tr, tc) = (tid / 16, tid % 16) owns rows 4 tr .. 4 tr + 3 and, in A, keys
// {g 16 KW + tc KW + e} (BN / 16 of them), in C, dims {g 16 VW + tc VW + e}
// (DV / 16 of them), with acc in registers for the whole program.
//   A) Q and K^T are staged in shared memory FV_DK = 8 dims at a time (one
//      8-element vector load per row / key, double buffered through
//      registers); each thread's 4 x BN/16 scores are fma chains over the
//      chunks in ascending d, so each score is the sim's chain. Scores (or
//      -inf) go to P_s[64][BN + 4] in shared memory.
//   B) 4 lanes per row: tile_max by lane then xor-shuffle (max is order
//      free), p = exp2c(s - m_ref) by lane; then ONE lane per row sums the
//      unrounded p in ascending j (the sim's chain) and updates m, l; then
//      the lanes overwrite p with round(p), or with -0.0 when p == 0 (a
//      skip mark: a rounded positive p is never -0.0).
//   C) V staged FV_VK = 8 keys at a time; acc = acc * alpha, then fma over
//      keys ascending. A thread none of whose 4 rows skips a key in this
//      tile (no p == 0, len a multiple of FV_VK) runs the branch-free loop;
//      others test the mark per (row, key) exactly where the sim tests
//      p != 0.
// Compile-time constants: DTYPE (q, k, v, out, P rounding); FV_D, FV_DV,
// FV_BN (head sizes and block_n; the launcher passes them, the defaults are
// the bench's shape). Needs FV_D % 8 == 0, FV_DV % 16 == 0, FV_BN % 16 == 0,
// FV_BN <= 128; other shapes use flash_attn_varlen_scalar.
//
// flash_attn_varlen_scalar: the straightforward port (one thread per
// (row, key) dot from global memory), kept for the shapes above that the
// tiled kernel does not take. Grid (cdiv(max_seqlen_q, 16), batch, Hq).

typedef Storage<DTYPE> E;

struct VarlenArgs {
    i64 num_heads, num_kv_heads, head_size, head_size_v, block_n, window, total_q;
    i32 causal, has_sinks, has_alibi, pad;
    float scale, scale_log2, softcap, pad2;
};

#ifndef FV_D
#define FV_D 128
#endif
#ifndef FV_DV
#define FV_DV FV_D
#endif
#ifndef FV_BN
#define FV_BN 128
#endif
#define FV_BM 64
#define FV_THREADS 256
#define FV_DK 8
#define FV_VK 8
#define FV_SCALAR_ROWS 16
#define FV_PS (FV_BN + 4)                                  // P_s row stride (banks)
#define FV_KN (FV_BN / 16)                                 // keys per thread in A
#define FV_KW (FV_KN % 4 == 0 ? 4 : (FV_KN % 2 == 0 ? 2 : 1))  // their vector width
#define FV_VN (FV_DV / 16)                                 // dims per thread in C
#define FV_VW (FV_VN % 4 == 0 ? 4 : (FV_VN % 2 == 0 ? 2 : 1))
#define FV_QK_STAGE (2 * FV_DK * (FV_BM + FV_BN))
#define FV_V_STAGE (2 * FV_VK * FV_DV)
#define FV_STAGE (FV_QK_STAGE > FV_V_STAGE ? FV_QK_STAGE : FV_V_STAGE)
#define FV_SKIP_MARK 0x80000000u  // -0.0f in P_s: key skipped (unrounded p == 0)

#if FV_D % 8 != 0 || FV_DV % 16 != 0 || FV_BN % 16 != 0 || FV_BN > 128
#error "flash_attn_varlen: FV_D % 8, FV_DV % 16, FV_BN % 16 must be 0 and FV_BN <= 128"
#endif

#if defined(ATTNLAB_CUDA)
#define FV_LAUNCH_BOUNDS __launch_bounds__(FV_THREADS, 2)
#else
#define FV_LAUNCH_BOUNDS __launch_bounds__(FV_THREADS)
#endif

// N (1, 2 or 4) consecutive shared-memory floats in one access.
struct __attribute__((aligned(16))) fv_f4 { float v[4]; };
struct __attribute__((aligned(8))) fv_f2 { float v[2]; };
template <int N> DEVICE void fv_lds(const float* p, float* out) {
    if constexpr (N == 4) {
        const fv_f4 t = *reinterpret_cast<const fv_f4*>(p);
        out[0] = t.v[0], out[1] = t.v[1], out[2] = t.v[2], out[3] = t.v[3];
    } else if constexpr (N == 2) {
        const fv_f2 t = *reinterpret_cast<const fv_f2*>(p);
        out[0] = t.v[0], out[1] = t.v[1];
    } else {
        out[0] = p[0];
    }
}

template <int N> DEVICE void fv_sts(float* p, const float* in) {
    if constexpr (N == 4) {
        *reinterpret_cast<fv_f4*>(p) = fv_f4{{in[0], in[1], in[2], in[3]}};
    } else if constexpr (N == 2) {
        *reinterpret_cast<fv_f2*>(p) = fv_f2{{in[0], in[1]}};
    } else {
        p[0] = in[0];
    }
}

// 8 consecutive storage elements (one aligned 8 * sizeof(T)-byte load),
// kept as raw words until they are widened (exactly) into shared memory.
struct __attribute__((aligned(16))) fv_u4 { u32 w[4]; };
struct __attribute__((aligned(8))) fv_u2 { u32 w[2]; };
struct FvPack8 {
    typedef typename E::T T;
    static constexpr int WORDS = 2 * (int)sizeof(T);
    u32 w[WORDS];
    DEVICE void zero() {
#pragma unroll
        for (int i = 0; i < WORDS; ++i) w[i] = 0u;
    }
    DEVICE void load(const T* p) {
        if constexpr (WORDS >= 4) {
#pragma unroll
            for (int i = 0; i < WORDS / 4; ++i) {
                const fv_u4 u = reinterpret_cast<const fv_u4*>(p)[i];
                w[4 * i] = u.w[0], w[4 * i + 1] = u.w[1], w[4 * i + 2] = u.w[2], w[4 * i + 3] = u.w[3];
            }
        } else {
            const fv_u2 u = *reinterpret_cast<const fv_u2*>(p);
            w[0] = u.w[0], w[1] = u.w[1];
        }
    }
    DEVICE float get(int e) const {
        if constexpr (sizeof(T) == 4) {
            return __uint_as_float(w[e]);
        } else {
            constexpr int PER = 4 / (int)sizeof(T), BITS = 8 * (int)sizeof(T);
            return E::load((T)((w[e / PER] >> (BITS * (e % PER))) & ((1u << BITS) - 1u)));
        }
    }
};

extern "C" __global__ void FV_LAUNCH_BOUNDS flash_attn_varlen(
    const typename E::T* __restrict__ q, const typename E::T* __restrict__ k, const typename E::T* __restrict__ v,
    const i32* __restrict__ cu_q, const i32* __restrict__ cu_k, const float* __restrict__ sinks,
    const float* __restrict__ alibi_slopes, typename E::T* __restrict__ out, float* __restrict__ lse, VarlenArgs a) {
    extern __shared__ fv_f4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    // Heaviest (last, under causal masking) row blocks first: bit-neutral.
    const i64 mb = (i64)gridDim.x - 1 - blockIdx.x, b = blockIdx.y, h = blockIdx.z;
    const i64 hq = a.num_heads, hk = a.num_kv_heads;
    const i64 g = h / (hq / hk);
    const i64 sq = cu_q[b + 1] - cu_q[b], sk = cu_k[b + 1] - cu_k[b], q0 = cu_q[b], k0 = cu_k[b];
    const i64 r0 = mb * FV_BM;
    if (r0 >= sq) return;
    const i64 r1 = min(r0 + FV_BM, sq), offset = sk - sq;
    const int rows = (int)(r1 - r0);
    const bool causal = a.causal || a.window > 0;
    i64 last_key = sk;
    if (causal) last_key = min(max(r1 - 1 + offset + 1, (i64)0), sk);
    i64 first_key = 0;
    if (a.window > 0) first_key = min(max(r0 + offset - a.window + 1, (i64)0), sk);
    const i64 n_min = first_key / FV_BN, n_max = (last_key + FV_BN - 1) / FV_BN;

    float* P_s = smem;                       // [FV_BM][FV_PS]: scores, then p
    float* stage = P_s + FV_BM * FV_PS;      // A: Q_s[2][DK][BM], K_s[2][DK][BN]; C: V_s[2][VK][DV]
    float* m_i = stage + FV_STAGE;
    float* l_i = m_i + FV_BM;
    float* alpha_i = l_i + FV_BM;
    int* skip_i = reinterpret_cast<int*>(alpha_i + FV_BM);
    for (int r = tid; r < FV_BM; r += FV_THREADS) {
        m_i[r] = a.has_sinks ? sinks[h] * LOG2E : f32_neg_inf();
        l_i[r] = a.has_sinks ? 1.0f : 0.0f;
        alpha_i[r] = 1.0f;
        skip_i[r] = 0;
    }
    float acc[4][FV_VN];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < FV_VN; ++c) acc[i][c] = 0.0f;
    __syncthreads();

    const float slope = a.has_alibi ? alibi_slopes[h] : 0.0f;
    const typename E::T* q_rows = q + (q0 + r0) * hq * FV_D + h * FV_D;   // + r * hq * FV_D
    for (i64 n = n_min; n < n_max; ++n) {
        const i64 j0 = n * FV_BN;
        const int len = (int)min((i64)FV_BN, sk - j0);
        const typename E::T* k_keys = k + (k0 + j0) * hk * FV_D + g * FV_D;  // + j * hk * FV_D
        const typename E::T* v_keys = v + (k0 + j0) * hk * FV_DV + g * FV_DV;

        // ---- A: S = Q K^T, FV_DK dims per staged chunk, d ascending.
        FvPack8 pk;
        auto qk_load = [&](int d0) {
            pk.zero();
            if (tid < FV_BM) {
                if (tid < rows) pk.load(q_rows + (i64)tid * hq * FV_D + d0);
            } else if (tid < FV_BM + FV_BN) {
                if (tid - FV_BM < len) pk.load(k_keys + (i64)(tid - FV_BM) * hk * FV_D + d0);
            }
        };
        auto qk_store = [&](int buf) {
            float* q_s = stage + buf * FV_DK * FV_BM;
            float* k_s = stage + 2 * FV_DK * FV_BM + buf * FV_DK * FV_BN;
            if (tid < FV_BM) {
#pragma unroll
                for (int e = 0; e < 8; ++e) q_s[e * FV_BM + tid] = pk.get(e);
            } else if (tid < FV_BM + FV_BN) {
#pragma unroll
                for (int e = 0; e < 8; ++e) k_s[e * FV_BN + tid - FV_BM] = pk.get(e);
            }
        };
        float s[4][FV_KN];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int c = 0; c < FV_KN; ++c) s[i][c] = 0.0f;
        qk_load(0);
        qk_store(0);
        __syncthreads();
        for (int dc = 0; dc < FV_D / FV_DK; ++dc) {
            const int buf = dc & 1;
            if (dc + 1 < FV_D / FV_DK) qk_load((dc + 1) * FV_DK);
            const float* q_s = stage + buf * FV_DK * FV_BM;
            const float* k_s = stage + 2 * FV_DK * FV_BM + buf * FV_DK * FV_BN;
#pragma unroll
            for (int dd = 0; dd < FV_DK; ++dd) {
                float qa[4], kb[FV_KN];
                fv_lds<4>(q_s + dd * FV_BM + 4 * tr, qa);
#pragma unroll
                for (int c = 0; c < FV_KN; c += FV_KW) fv_lds<FV_KW>(k_s + dd * FV_BN + c * 16 + tc * FV_KW, kb + c);
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int c = 0; c < FV_KN; ++c) s[i][c] = fmaf(qa[i], kb[c], s[i][c]);
            }
            if (dc + 1 < FV_D / FV_DK) qk_store(buf ^ 1);
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = 4 * tr + i;
            const i64 pi = r0 + r + offset;
            float sc[FV_KN];
#pragma unroll
            for (int c = 0; c < FV_KN; ++c) {
                const int j = (c / FV_KW) * 16 * FV_KW + tc * FV_KW + c % FV_KW;
                const i64 t = j0 + j;
                const bool vis = j < len && (pi < 0 ? !causal : visible(t, pi, causal, a.window));
                sc[c] = f32_neg_inf();
                if (vis) {
                    const i64 dist = pi - t < 0 ? t - pi : pi - t;
                    const float bias = a.has_alibi ? -(slope * (float)dist) : 0.0f;
                    sc[c] = score(s[i][c], a.scale, a.scale_log2, a.softcap, bias);
                }
            }
#pragma unroll
            for (int c = 0; c < FV_KN; c += FV_KW) fv_sts<FV_KW>(P_s + r * FV_PS + c * 16 + tc * FV_KW, sc + c);
        }
        __syncthreads();

        // ---- B: row statistics; 4 lanes per row, one lane for the sum chain.
        {
            const int srow = tid >> 2, lane4 = tid & 3;
            const bool active = srow < rows;
            float* prow = P_s + srow * FV_PS;
            float mx = f32_neg_inf();
            if (active)
#pragma unroll
                for (int jj = 0; jj < FV_BN / 4; ++jj)
                    if (lane4 + 4 * jj < len) mx = fmaxf(mx, prow[lane4 + 4 * jj]);
            mx = fmaxf(mx, SHFL_XOR(mx, 1));
            mx = fmaxf(mx, SHFL_XOR(mx, 2));
            const TileStats ts = tile_begin(active ? m_i[srow] : 0.0f, mx);
            float pr[FV_BN / 4];
#pragma unroll
            for (int jj = 0; jj < FV_BN / 4; ++jj) {
                pr[jj] = 0.0f;
                if (active && lane4 + 4 * jj < len) {
                    pr[jj] = exp2c(prow[lane4 + 4 * jj] - ts.m_ref);
                    prow[lane4 + 4 * jj] = pr[jj];
                }
            }
            __syncthreads();
            if (active && lane4 == 0) {
                float tile_sum = 0.0f;
                bool skip = len % FV_VK != 0;
                int j = 0;
                for (; j + 4 <= len; j += 4) {
                    float p4[4];
                    fv_lds<4>(prow + j, p4);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        tile_sum = tile_sum + p4[e];
                        skip = skip || p4[e] == 0.0f;
                    }
                }
                for (; j < len; ++j) {
                    tile_sum = tile_sum + prow[j];
                    skip = skip || prow[j] == 0.0f;
                }
                l_i[srow] = fmaf(l_i[srow], ts.alpha, tile_sum);
                m_i[srow] = ts.m_new;
                alpha_i[srow] = ts.alpha;
                skip_i[srow] = skip;
            }
            __syncthreads();
            const int len_vk = (len + FV_VK - 1) / FV_VK * FV_VK;
            if (active)
#pragma unroll
                for (int jj = 0; jj < FV_BN / 4; ++jj) {
                    const int j = lane4 + 4 * jj;
                    if (j < len)
                        prow[j] = pr[jj] != 0.0f ? round_to<DTYPE>(pr[jj]) : __uint_as_float(FV_SKIP_MARK);
                    else if (j < len_vk)
                        prow[j] = __uint_as_float(FV_SKIP_MARK);
                }
        }

        // ---- C: acc = acc * alpha, then P V over FV_VK-key chunks, j ascending.
        FvPack8 pv;
        const int v_row = tid / (FV_DV / 8), v_col = tid % (FV_DV / 8) * 8;
        auto v_load = [&](int kc) {
            pv.zero();
            if (tid < FV_VK * FV_DV / 8 && kc * FV_VK + v_row < len)
                pv.load(v_keys + (i64)(kc * FV_VK + v_row) * hk * FV_DV + v_col);
        };
        auto v_store = [&](int buf) {
            if (tid < FV_VK * FV_DV / 8) {
                float* dst = stage + buf * FV_VK * FV_DV + v_row * FV_DV + v_col;
                float x[8];
#pragma unroll
                for (int e = 0; e < 8; ++e) x[e] = pv.get(e);
                fv_sts<4>(dst, x);
                fv_sts<4>(dst + 4, x + 4);
            }
        };
        const int n_kc = (len + FV_VK - 1) / FV_VK;
        v_load(0);
        v_store(0);
        __syncthreads();
        bool slow = false;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float al = alpha_i[4 * tr + i];
            slow = slow || skip_i[4 * tr + i] != 0;
#pragma unroll
            for (int c = 0; c < FV_VN; ++c) acc[i][c] = acc[i][c] * al;
        }
        for (int kc = 0; kc < n_kc; ++kc) {
            const int buf = kc & 1;
            if (kc + 1 < n_kc) v_load(kc + 1);
            const float* v_s = stage + buf * FV_VK * FV_DV;
            const float* p_s = P_s + 4 * tr * FV_PS + kc * FV_VK;
#pragma unroll
            for (int k4 = 0; k4 < FV_VK; k4 += 4) {
                float p[4][4];
#pragma unroll
                for (int i = 0; i < 4; ++i) fv_lds<4>(p_s + i * FV_PS + k4, p[i]);
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float vv[FV_VN];
#pragma unroll
                    for (int c = 0; c < FV_VN; c += FV_VW)
                        fv_lds<FV_VW>(v_s + (k4 + e) * FV_DV + c * 16 + tc * FV_VW, vv + c);
                    if (!slow) {
#pragma unroll
                        for (int i = 0; i < 4; ++i)
#pragma unroll
                            for (int c = 0; c < FV_VN; ++c) acc[i][c] = fmaf(p[i][e], vv[c], acc[i][c]);
                    } else {
#pragma unroll
                        for (int i = 0; i < 4; ++i)
                            if (__float_as_uint(p[i][e]) != FV_SKIP_MARK)
#pragma unroll
                                for (int c = 0; c < FV_VN; ++c) acc[i][c] = fmaf(p[i][e], vv[c], acc[i][c]);
                    }
                }
            }
            if (kc + 1 < n_kc) v_store(buf ^ 1);
            __syncthreads();
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = 4 * tr + i;
        if (r < rows) {
            const float l = l_i[r];
            typename E::T* orow = out + ((q0 + r0 + r) * hq + h) * FV_DV;
#pragma unroll
            for (int c = 0; c < FV_VN; ++c) orow[(c / FV_VW) * 16 * FV_VW + tc * FV_VW + c % FV_VW] = E::store(row_out(acc[i][c], l));
        }
    }
    for (int r = tid; r < rows; r += FV_THREADS) lse[h * a.total_q + q0 + r0 + r] = row_lse2(m_i[r], l_i[r]) * LN2;
}

extern "C" __global__ void flash_attn_varlen_scalar(
    const typename E::T* __restrict__ q, const typename E::T* __restrict__ k, const typename E::T* __restrict__ v,
    const i32* __restrict__ cu_q, const i32* __restrict__ cu_k, const float* __restrict__ sinks,
    const float* __restrict__ alibi_slopes, typename E::T* __restrict__ out, float* __restrict__ lse, VarlenArgs a) {
    extern __shared__ float smem[];
    const i64 mb = blockIdx.x, b = blockIdx.y, h = blockIdx.z;
    const i64 hq = a.num_heads, hk = a.num_kv_heads, D = a.head_size, DV = a.head_size_v, BN = a.block_n;
    const i64 g = h / (hq / hk);
    const i64 sq = cu_q[b + 1] - cu_q[b], sk = cu_k[b + 1] - cu_k[b], q0 = cu_q[b], k0 = cu_k[b];
    const i64 r0 = mb * FV_SCALAR_ROWS;
    if (r0 >= sq) return;
    const i64 r1 = min(r0 + FV_SCALAR_ROWS, sq), rows = r1 - r0, offset = sk - sq;
    const bool causal = a.causal || a.window > 0;
    i64 last_key = sk;
    if (causal) last_key = min(max(r1 - 1 + offset + 1, (i64)0), sk);
    i64 first_key = 0;
    if (a.window > 0) first_key = min(max(r0 + offset - a.window + 1, (i64)0), sk);
    const i64 n_min = first_key / BN, n_max = (last_key + BN - 1) / BN;

    float* s_tile = smem;             // [rows][BN]
    float* acc = s_tile + rows * BN;  // [rows][DV]
    float* m_i = acc + rows * DV;
    float* l_i = m_i + rows;
    float* alpha_i = l_i + rows;
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
        m_i[r] = a.has_sinks ? sinks[h] * LOG2E : f32_neg_inf();
        l_i[r] = a.has_sinks ? 1.0f : 0.0f;
    }
    for (i64 i = threadIdx.x; i < rows * DV; i += blockDim.x) acc[i] = 0.0f;
    __syncthreads();
    for (i64 n = n_min; n < n_max; ++n) {
        const i64 j0 = n * BN, len = min(BN, sk - j0);
        for (i64 idx = threadIdx.x; idx < rows * len; idx += blockDim.x) {
            const i64 r = idx / len, j = idx % len, i = r0 + r, t = j0 + j, pi = i + offset;
            const bool vis = pi < 0 ? !causal : visible(t, pi, causal, a.window);
            float s = f32_neg_inf();
            if (vis) {
                float dot = 0.0f;
                const typename E::T* qr = q + ((q0 + i) * hq + h) * D;
                const typename E::T* kr = k + ((k0 + t) * hk + g) * D;
                for (i64 d = 0; d < D; ++d) dot = fmaf(E::load(qr[d]), E::load(kr[d]), dot);
                const i64 dist = pi - t < 0 ? t - pi : pi - t;
                const float bias = a.has_alibi ? -(alibi_slopes[h] * (float)dist) : 0.0f;
                s = score(dot, a.scale, a.scale_log2, a.softcap, bias);
            }
            s_tile[r * BN + j] = s;
        }
        __syncthreads();
        for (i64 r = threadIdx.x; r < rows; r += blockDim.x) {
            float tile_max = f32_neg_inf();
            for (i64 j = 0; j < len; ++j) tile_max = fmaxf(tile_max, s_tile[r * BN + j]);
            const TileStats ts = tile_begin(m_i[r], tile_max);
            float tile_sum = 0.0f;
            for (i64 j = 0; j < len; ++j) {
                const float p = exp2c(s_tile[r * BN + j] - ts.m_ref);
                tile_sum = tile_sum + p;
                s_tile[r * BN + j] = p;
            }
            l_i[r] = fmaf(l_i[r], ts.alpha, tile_sum);
            m_i[r] = ts.m_new;
            alpha_i[r] = ts.alpha;
        }
        __syncthreads();
        for (i64 idx = threadIdx.x; idx < rows * DV; idx += blockDim.x) {
            const i64 r = idx / DV, d = idx % DV;
            float acc_d = acc[idx] * alpha_i[r];
            for (i64 j = 0; j < len; ++j) {
                const float p = s_tile[r * BN + j];
                if (p != 0.0f) acc_d = fmaf(round_to<DTYPE>(p), E::load(v[((k0 + j0 + j) * hk + g) * DV + d]), acc_d);
            }
            acc[idx] = acc_d;
        }
        __syncthreads();
    }
    for (i64 idx = threadIdx.x; idx < rows * DV; idx += blockDim.x) {
        const i64 r = idx / DV, d = idx % DV;
        out[((q0 + r0 + r) * hq + h) * DV + d] = E::store(row_out(acc[idx], l_i[r]));
    }
    for (i64 r = threadIdx.x; r < rows; r += blockDim.x) lse[h * a.total_q + q0 + r0 + r] = row_lse2(m_i[r], l_i[r]) * LN2;
}
