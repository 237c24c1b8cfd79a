// ex2_approx.cu: how NVIDIA's `ex2.approx.f32` (what Triton's tl.exp2, and
// tl.exp as a multiply by log2(e) then ex2, compile to on sm_80+/sm_90)
// relates to the arithmetic contract's exp2c (kernels/portable.h,
// sim/src/numerics/mod.rs), exhaustively over every f32 x in [-150, 0]:
// the range of a softmax weight's argument `s - m` (and of the reduce's
// `m_s - M`), 1,125,515,265 inputs.
//
// For each of `ex2.approx.f32` and `ex2.approx.ftz.f32` it prints a
// histogram of the distance in f32 ulps (|bits(ex2) - bits(exp2c)|, both
// non-negative floats), how often each is above, and how often the two
// differ after rounding to bf16 and to f16 (the storage of P before P·V in
// the tensor-core kernels), with the first input of each bucket.
// This is a measurement of vLLM's kernels against our contract, not a
// kernel of attnlab: gpu/probes/ex2-on-device.sh builds it with nvcc
// (-fmad=false, so exp2c's fmas stay the contract's) and runs it.
#include "../../kernels/portable.h"
#include <cstdio>
#include <cstring>
#include <cstdlib>

#define BUCKETS 12  // 0, 1, 2, 3-4, 5-8, 9-16, ..., >512
#define VARIANTS 2

struct Tally {
    unsigned long long hist[VARIANTS][BUCKETS];
    unsigned long long above[VARIANTS], bf16_diff[VARIANTS], f16_diff[VARIANTS];
    unsigned int first[VARIANTS][BUCKETS];  // bits of the first (lowest-index) input seen, 0xffffffff none
    unsigned int first_f16[VARIANTS];
};

__device__ int bucket(unsigned int d) {
    if (d <= 2) return (int)d;
    int b = 3;
    for (unsigned int lim = 4; lim < 1024 && d > lim; lim <<= 1) ++b;
    return b < BUCKETS ? b : BUCKETS - 1;
}

__device__ float ex2_approx(float x) {
    float y;
    asm("ex2.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ float ex2_approx_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__global__ void probe(unsigned int n, Tally* t) {
    __shared__ unsigned long long h[VARIANTS][BUCKETS];
    __shared__ unsigned long long ab[VARIANTS], bd[VARIANTS], fd[VARIANTS];
    for (int i = threadIdx.x; i < VARIANTS * BUCKETS; i += blockDim.x) h[i / BUCKETS][i % BUCKETS] = 0;
    if (threadIdx.x < VARIANTS) ab[threadIdx.x] = bd[threadIdx.x] = fd[threadIdx.x] = 0;
    __syncthreads();
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned int bits = 0x80000000u + i;  // -0 .. -150
        float x = __uint_as_float(bits);
        float want = exp2c(x);
        for (int v = 0; v < VARIANTS; ++v) {
            float got = v == 0 ? ex2_approx(x) : ex2_approx_ftz(x);
            unsigned int gb = __float_as_uint(got), wb = __float_as_uint(want);
            unsigned int d = gb > wb ? gb - wb : wb - gb;
            int b = bucket(d);
            atomicAdd(&h[v][b], 1ull);
            atomicMin(&t->first[v][b], bits);
            if (gb > wb) atomicAdd(&ab[v], 1ull);
            if (f32_to_bf16_bits(got) != f32_to_bf16_bits(want)) atomicAdd(&bd[v], 1ull);
            if (f32_to_f16_bits(got) != f32_to_f16_bits(want)) {
                atomicAdd(&fd[v], 1ull);
                atomicMin(&t->first_f16[v], bits);
            }
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < VARIANTS * BUCKETS; i += blockDim.x)
        atomicAdd(&t->hist[i / BUCKETS][i % BUCKETS], h[i / BUCKETS][i % BUCKETS]);
    if (threadIdx.x < VARIANTS) {
        atomicAdd(&t->above[threadIdx.x], ab[threadIdx.x]);
        atomicAdd(&t->bf16_diff[threadIdx.x], bd[threadIdx.x]);
        atomicAdd(&t->f16_diff[threadIdx.x], fd[threadIdx.x]);
    }
}

// Structure of ex2.approx.f32, the hypotheses a table model would rest on,
// over the same inputs:
// - scaling: for x in [-126, -1], ex2(x) == ex2(f) * 2^n with n = floor(x),
//   f = x - n in [0, 1) (both exact), i.e. only the fraction is looked up;
// - input quantisation: the unit reads x as a fixed-point number with K
//   fraction bits: ex2(x) == ex2(q_K(x)) where q_K truncates (mode 0) or
//   rounds to nearest even (mode 1) x to a multiple of 2^-K (exact in f32:
//   where x has finer bits than 2^-K, |x| < 2^(24-K)).
#define K_LO 18
#define K_N 10
struct Structure {
    unsigned long long scale_checked, scale_bad;
    unsigned long long quant_bad[2][K_N];
    unsigned int scale_first, quant_first[2][K_N];
};

__global__ void structure(unsigned int n, Structure* t) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned int bits = 0x80000000u + i;
        float x = __uint_as_float(bits);
        float y = ex2_approx(x);
        if (x <= -1.0f && x >= -126.0f) {
            float nf = floorf(x), f = x - nf;
            float z = ldexpf(ex2_approx(f), (int)nf);
            atomicAdd(&t->scale_checked, 1ull);
            if (__float_as_uint(z) != __float_as_uint(y)) {
                atomicAdd(&t->scale_bad, 1ull);
                atomicMin(&t->scale_first, bits);
            }
        }
        for (int k = 0; k < K_N; ++k) {
            float s = ldexpf(1.0f, K_LO + k), xs = x * s;
            for (int mode = 0; mode < 2; ++mode) {
                float q = (mode == 0 ? truncf(xs) : rintf(xs)) / s;
                if (__float_as_uint(ex2_approx(q)) != __float_as_uint(y)) {
                    atomicAdd(&t->quant_bad[mode][k], 1ull);
                    atomicMin(&t->quant_first[mode][k], bits);
                }
            }
        }
    }
}

// The table model: with the input read as fixed point with 23 fraction bits
// truncated toward zero (confirmed above), x = n + f with n = trunc(x) and
// f = x - n in (-1, 0] reads as f = -j * 2^-23, j in [0, 2^23). If
// ex2(x) == ldexp(T[j], n) with T[j] = ex2(-j * 2^-23), the 2^23 values of T
// are the whole function. `trunc_scale` counts where that fails, apart on
// [-126, 0] (normal results) and [-150, -126) (subnormal results);
// `table` writes T as each entry's distance in ulps from exp2c at the same
// point, one signed byte per j (sim/src/numerics/ex2_approx.rs reads it).
struct TruncScale {
    unsigned long long checked[2], bad[2];
    unsigned int first[2];
};
__global__ void trunc_scale(unsigned int n, TruncScale* t) {
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned int bits = 0x80000000u + i;
        float x = __uint_as_float(bits);
        float nf = truncf(x), f = x - nf;
        float z = ldexpf(ex2_approx(f), (int)nf);
        int r = x < -126.0f ? 1 : 0;
        atomicAdd(&t->checked[r], 1ull);
        if (__float_as_uint(z) != __float_as_uint(ex2_approx(x))) {
            atomicAdd(&t->bad[r], 1ull);
            atomicMin(&t->first[r], bits);
        }
    }
}
__global__ void table(signed char* out, unsigned long long* out_of_range) {
    unsigned int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= (1u << 23)) return;
    float f = -(float)j * 0x1p-23f;
    int d = (int)(__float_as_uint(ex2_approx(f)) - __float_as_uint(exp2c(f)));
    if (d < -128 || d > 127) atomicAdd(out_of_range, 1ull);
    out[j] = (signed char)d;
}

// The inputs whose first f16 difference the tally names, re-evaluated.
__global__ void show(unsigned int bits, float* out) {
    float x = __uint_as_float(bits);
    out[0] = exp2c(x);
    out[1] = ex2_approx(x);
    out[2] = ex2_approx_ftz(x);
}

// Host-side bit casts (the __uint_as_float intrinsics are device-only).
static float u2f(unsigned int b) {
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}
static unsigned int f2u(float f) {
    unsigned int b;
    memcpy(&b, &f, sizeof b);
    return b;
}

int main() {
    const unsigned int n = 0x43160000u + 1u;  // bits of -150.0 minus 0x80000000, inclusive
    Tally h = {};
    for (int v = 0; v < VARIANTS; ++v) {
        for (int b = 0; b < BUCKETS; ++b) h.first[v][b] = 0xffffffffu;
        h.first_f16[v] = 0xffffffffu;
    }
    Tally* d;
    if (cudaMalloc(&d, sizeof(Tally)) != cudaSuccess) return 2;
    cudaMemcpy(d, &h, sizeof(Tally), cudaMemcpyHostToDevice);
    probe<<<132 * 8, 256>>>(n, d);
    if (cudaDeviceSynchronize() != cudaSuccess) {
        printf("probe failed: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 2;
    }
    cudaMemcpy(&h, d, sizeof(Tally), cudaMemcpyDeviceToHost);
    const char* names[VARIANTS] = {"ex2.approx.f32", "ex2.approx.ftz.f32"};
    const char* labels[BUCKETS] = {"0", "1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65-128", "129-256", "257-512", ">512"};
    float* o;
    cudaMalloc(&o, 3 * sizeof(float));
    printf("inputs: every f32 x in [-150, 0], %u values; distance = |bits(ex2) - bits(exp2c)| in f32 ulps\n", n);
    for (int v = 0; v < VARIANTS; ++v) {
        printf("%s vs exp2c:\n", names[v]);
        for (int b = 0; b < BUCKETS; ++b)
            if (h.hist[v][b])
                printf("  ulp %-8s %12llu (%.6f%%)  first x = %.9g (0x%08x)\n", labels[b], h.hist[v][b],
                       100.0 * h.hist[v][b] / n, u2f(h.first[v][b]), h.first[v][b]);
        printf("  above exp2c: %llu; differ after rounding to bf16: %llu (%.6f%%), to f16: %llu (%.6f%%)\n",
               h.above[v], h.bf16_diff[v], 100.0 * h.bf16_diff[v] / n, h.f16_diff[v], 100.0 * h.f16_diff[v] / n);
        if (h.first_f16[v] != 0xffffffffu) {
            float r[3];
            show<<<1, 1>>>(h.first_f16[v], o);
            cudaMemcpy(r, o, sizeof(r), cudaMemcpyDeviceToHost);
            printf("  first f16 difference: x = %.9g: exp2c %.9g (0x%08x), ex2 %.9g (0x%08x), ftz %.9g (0x%08x)\n",
                   u2f(h.first_f16[v]), r[0], f2u(r[0]), r[1], f2u(r[1]), r[2],
                   f2u(r[2]));
        }
    }
    Structure st = {};
    st.scale_first = 0xffffffffu;
    for (int m = 0; m < 2; ++m)
        for (int k = 0; k < K_N; ++k) st.quant_first[m][k] = 0xffffffffu;
    Structure* ds;
    if (cudaMalloc(&ds, sizeof(Structure)) != cudaSuccess) return 2;
    cudaMemcpy(ds, &st, sizeof(Structure), cudaMemcpyHostToDevice);
    structure<<<132 * 8, 256>>>(n, ds);
    if (cudaDeviceSynchronize() != cudaSuccess) {
        printf("structure failed: %s\n", cudaGetErrorString(cudaGetLastError()));
        return 2;
    }
    cudaMemcpy(&st, ds, sizeof(Structure), cudaMemcpyDeviceToHost);
    printf("structure of ex2.approx.f32:\n  scaling ex2(x) == ex2(x - floor(x)) * 2^floor(x) on [-126, -1]: %llu of %llu differ",
           st.scale_bad, st.scale_checked);
    if (st.scale_bad) printf(" (first x = %.9g)", u2f(st.scale_first));
    printf("\n");
    for (int m = 0; m < 2; ++m)
        for (int k = 0; k < K_N; ++k) {
            printf("  input read with %d fraction bits (%s): %llu inputs differ", K_LO + k, m ? "nearest" : "truncated",
                   st.quant_bad[m][k]);
            if (st.quant_bad[m][k]) printf(" (first x = %.9g)", u2f(st.quant_first[m][k]));
            printf("\n");
        }
    TruncScale ts = {};
    ts.first[0] = ts.first[1] = 0xffffffffu;
    TruncScale* dts;
    if (cudaMalloc(&dts, sizeof(TruncScale)) != cudaSuccess) return 2;
    cudaMemcpy(dts, &ts, sizeof(TruncScale), cudaMemcpyHostToDevice);
    trunc_scale<<<132 * 8, 256>>>(n, dts);
    cudaMemcpy(&ts, dts, sizeof(TruncScale), cudaMemcpyDeviceToHost);
    for (int r = 0; r < 2; ++r) {
        printf("  ex2(x) == ldexp(ex2(x - trunc(x)), trunc(x)) on %s: %llu of %llu differ", r ? "[-150, -126)" : "[-126, 0]",
               ts.bad[r], ts.checked[r]);
        if (ts.bad[r]) printf(" (first x = %.9g)", u2f(ts.first[r]));
        printf("\n");
    }
    const char* path = getenv("EX2_TABLE");
    if (path) {
        const unsigned int N = 1u << 23;
        signed char* dt;
        unsigned long long* door;
        if (cudaMalloc(&dt, N) != cudaSuccess || cudaMalloc(&door, sizeof(unsigned long long)) != cudaSuccess) return 2;
        cudaMemset(door, 0, sizeof(unsigned long long));
        table<<<N / 256, 256>>>(dt, door);
        signed char* ht = (signed char*)malloc(N);
        unsigned long long oor = 0;
        if (!ht) return 2;
        cudaMemcpy(ht, dt, N, cudaMemcpyDeviceToHost);
        cudaMemcpy(&oor, door, sizeof oor, cudaMemcpyDeviceToHost);
        unsigned long long hist[5] = {0, 0, 0, 0, 0};  // <= -2, -1, 0, 1, >= 2
        for (unsigned int j = 0; j < N; ++j) hist[ht[j] <= -2 ? 0 : ht[j] >= 2 ? 4 : ht[j] + 2]++;
        FILE* f = fopen(path, "wb");
        if (!f) return 2;
        fwrite(ht, 1, N, f);
        fclose(f);
        printf("  table: ex2(-j * 2^-23) - exp2c(same) in ulps over j < 2^23: <=-2 %llu, -1 %llu, 0 %llu, +1 %llu, >=+2 %llu; "
               "%llu outside int8; written to %s\n",
               hist[0], hist[1], hist[2], hist[3], hist[4], oor, path);
    }
    return 0;
}
