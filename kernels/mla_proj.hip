// mla_proj.hip: sim/src/kernels/mla_proj.rs, the MLA projections vLLM runs
// as hipBLASLt GEMMs (kv_b_proj, the W_UK absorption bmm, the W_UV bmm),
// all as one batched GEMM with strides:
//
//   out[h, m, n] = round_DTYPE(sum_k A[h, m, k] * B[h, k, n])
//   acc = +0; for k = 0 .. K-1 ascending: acc = fmaf(A[h,m,k], B[h,k,n], acc)
//
// which is softmax.rs lane_dots' chain for every output (one f32 lane per
// output column, an fma chain from 0 over the reduction index ascending,
// one rounding at the end). The launcher maps each projection onto it:
//   kv_b_proj : H 1, A = kv_c [T, Lkv], B[k, r] = W[r, k], out [T, N(P+V)]
//   absorb    : H N, A = q_nope [B, n, P], B[p, c] = W[n(P+V)+p, c], out ql_nope [B, n, Lkv]
//   W_UV      : H N, A = o_latent [B, n, Lkv], B[c, i] = W[n(P+V)+P+i, c], out [B, n, V]
//
// Tiling (free: it never reorders a chain): a 256-thread block owns a
// 64 x 64 output tile, 4 x 4 outputs per thread (16 independent chains for
// ILP); A and B tiles of TK = 16 reduction steps are staged in shared memory
// as f32 (loads widen exactly), and each thread walks k ascending within a
// tile and tiles ascending, stopping at K (no padded terms enter a chain).
// Out-of-range rows/columns load 0 and are never stored. No wave-level
// operations: correct for any WAVE_SIZE. Offsets are 64-bit.
// Compile-time constant: DTYPE (inputs, weight and output; exact in it).

typedef Storage<DTYPE> S;

#define PROJ_TM 64
#define PROJ_TN 64
#define PROJ_TK 16
#define PROJ_THREADS 256

// Field order = the launcher's ArgStruct order (all i64: no padding).
struct ProjGemm {
    i64 M, N, K;
    i64 a_sh, a_sm, a_sk;
    i64 b_off, b_sh, b_sk, b_sn;
    i64 o_sh, o_sm;
};

extern "C" __global__ void __launch_bounds__(PROJ_THREADS)
mla_proj_gemm(const S::T* __restrict__ a, const S::T* __restrict__ b, S::T* __restrict__ out, ProjGemm g) {
    __shared__ float As[PROJ_TK][PROJ_TM + 1];
    __shared__ float Bs[PROJ_TK][PROJ_TN + 1];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const i64 h = blockIdx.z, m0 = (i64)blockIdx.y * PROJ_TM, n0 = (i64)blockIdx.x * PROJ_TN;
    const S::T* A = a + h * g.a_sh;
    const S::T* B = b + g.b_off + h * g.b_sh;
    // B tiles are read along whichever of k / n is contiguous in memory.
    const bool b_k_fast = g.b_sk == 1;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    for (i64 k0 = 0; k0 < g.K; k0 += PROJ_TK) {
        const int kn = g.K - k0 < PROJ_TK ? (int)(g.K - k0) : PROJ_TK;
#pragma unroll
        for (int r = 0; r < (PROJ_TM * PROJ_TK) / PROJ_THREADS; ++r) {
            const int e = tid + r * PROJ_THREADS;
            const int mm = e / PROJ_TK, kk = e % PROJ_TK;
            const i64 gm = m0 + mm, gk = k0 + kk;
            As[kk][mm] = (gm < g.M && kk < kn) ? S::load(A[gm * g.a_sm + gk * g.a_sk]) : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < (PROJ_TN * PROJ_TK) / PROJ_THREADS; ++r) {
            const int e = tid + r * PROJ_THREADS;
            const int nn = b_k_fast ? e / PROJ_TK : e % PROJ_TN;
            const int kk = b_k_fast ? e % PROJ_TK : e / PROJ_TN;
            const i64 gn = n0 + nn, gk = k0 + kk;
            Bs[kk][nn] = (gn < g.N && kk < kn) ? S::load(B[gk * g.b_sk + gn * g.b_sn]) : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < kn; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const i64 gm = m0 + ty + 16 * i;
        if (gm >= g.M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const i64 gn = n0 + tx + 16 * j;
            if (gn < g.N) out[h * g.o_sh + gm * g.o_sm + gn] = S::store(acc[i][j]);
        }
    }
}
