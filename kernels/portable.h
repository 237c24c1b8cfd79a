// portable.h: the one header every attnlab kernel includes (attnlab-gpu
// pastes it in front of each kernels/*.hip source before compiling).
//
// It hides the few differences between HIP on AMD (hipRTC / hipcc) and
// NVRTC on NVIDIA, and holds the GPU half of the arithmetic contract
// (shared/spec/numerics.md), mirroring sim/src/numerics.rs and
// sim/src/kernels/softmax.rs line by line:
//   - wave width and xor shuffles (32 on NVIDIA, 64 on CDNA);
//   - storage types f32/f16/bf16/fp8 with loads that widen exactly and stores
//     that round to nearest even, written with integer operations so that no
//     vendor header (cuda_fp16.h, hip_bf16.h) is needed and the rounding is
//     the `half` crate's and shared/src/dtype.rs's, bit for bit;
//   - exp2c / log2c / tanhc with the SAME coefficients as numerics.rs
//     (gpu/tests/portable_h.rs parses this file and compares the numbers);
//   - score(), dot() and the online-softmax row update of softmax.rs.
// Compile flags (gpu/src/kernels.rs): NVRTC --fmad=false --ftz=false
// --prec-div=true --prec-sqrt=true; hipRTC/hipcc -ffp-contract=off, no fast
// math. Every fma below is written out as fmaf.
#pragma once

#if defined(__HIPCC__) || defined(__HIP_DEVICE_COMPILE__) || defined(__HIPCC_RTC__)
#define ATTNLAB_HIP 1
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>  // hipRTC pre-includes it; offline hipcc needs it
#endif
#define WAVE_SIZE __AMDGCN_WAVEFRONT_SIZE
#define SHFL_XOR(v, off) __shfl_xor((v), (off))
#elif defined(ATTNLAB_HOST)
// The CPU (attnlab-gpu's host device, gpu/src/runtime/host.rs): the unit is
// compiled by the system c++ with -ffp-contract=off and no fast math, each
// GPU thread of a block runs as a fiber, and runtime/host_shim.cpp defines
// what is declared here. WAVE_SIZE is -DATTNLAB_HOST_WAVE (32 or 64), so the
// AMD wave-64 paths run without AMD hardware. Blocks of one OS thread run one
// at a time, so static __shared__ arrays are per-thread statics.
#if ATTNLAB_HOST_WAVE != 32 && ATTNLAB_HOST_WAVE != 64
#error "ATTNLAB_HOST_WAVE must be 32 or 64"
#endif
#include <math.h>
#include <string.h>
#define WAVE_SIZE ATTNLAB_HOST_WAVE
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local
struct attnlab_dim3 {
    unsigned x, y, z;
};
extern __thread attnlab_dim3 threadIdx, blockIdx, blockDim, gridDim;
void attnlab_host_syncthreads();
void* attnlab_host_dynamic_shared();  // dynamic shared declarations are rewritten to it
unsigned long long attnlab_host_shfl_xor_bits(unsigned long long bits, int lane_mask);
#define __syncthreads() attnlab_host_syncthreads()
template <typename T> inline T attnlab_host_shfl_xor(T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = attnlab_host_shfl_xor_bits(bits, lane_mask);
    memcpy(&v, &bits, sizeof v);
    return v;
}
#define SHFL_XOR(v, off) attnlab_host_shfl_xor((v), (off))
inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
template <typename T> inline T min(T a, T b) { return b < a ? b : a; }
template <typename T> inline T max(T a, T b) { return a < b ? b : a; }
#else
#define ATTNLAB_CUDA 1
#define WAVE_SIZE 32
#define SHFL_XOR(v, off) __shfl_xor_sync(0xffffffffu, (v), (off))
#endif

#define DEVICE __device__ __forceinline__

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;

// ---------------------------------------------------------------- constants
// Same numbers as sim/src/numerics.rs (checked by gpu/tests/portable_h.rs).
#define LOG2E 1.442695022e+00f
#define LN2 6.931471825e-01f
#define SQRT2 1.414213538e+00f
#define EXP2C_MIN_X -150.0f
// EXP2C_COEFFS, highest degree first: ln2^k / k!, k = 7..0.
#define EXP2C_C0 1.525273365e-05f
#define EXP2C_C1 1.540352969e-04f
#define EXP2C_C2 1.333355787e-03f
#define EXP2C_C3 9.618128650e-03f
#define EXP2C_C4 5.550410971e-02f
#define EXP2C_C5 2.402265072e-01f
#define EXP2C_C6 6.931471825e-01f
#define EXP2C_C7 1.000000000e+00f
// LOG2C_COEFFS, highest first: 2 / ((2k+1) ln 2), k = 4..0.
#define LOG2C_C0 3.205989003e-01f
#define LOG2C_C1 4.121985734e-01f
#define LOG2C_C2 5.770780444e-01f
#define LOG2C_C3 9.617967010e-01f
#define LOG2C_C4 2.885390043e+00f

DEVICE float f32_inf() { return __uint_as_float(0x7f800000u); }
DEVICE float f32_neg_inf() { return __uint_as_float(0xff800000u); }
// Rust's f32::NAN: the bit pattern the sim produces for a fresh NaN.
DEVICE float f32_nan() { return __uint_as_float(0x7fc00000u); }
DEVICE bool is_nan(float x) { return x != x; }

// ------------------------------------------------------ contract functions
// 2^n for n in [-126, 127] from exponent bits (numerics.rs pow2i).
DEVICE float pow2i(i32 n) { return __uint_as_float((u32)(n + 127) << 23); }

// numerics.rs exp2c: x = n + f, Horner with fmaf, scale by exponent bits.
DEVICE float exp2c(float x) {
    if (is_nan(x)) return x;
    if (x < EXP2C_MIN_X) return 0.0f;
    if (x >= 128.0f) return f32_inf();
    float n = rintf(x);  // round half to even, as round_ties_even
    float f = x - n;     // exact
    float p = EXP2C_C0;
    p = fmaf(p, f, EXP2C_C1);
    p = fmaf(p, f, EXP2C_C2);
    p = fmaf(p, f, EXP2C_C3);
    p = fmaf(p, f, EXP2C_C4);
    p = fmaf(p, f, EXP2C_C5);
    p = fmaf(p, f, EXP2C_C6);
    p = fmaf(p, f, EXP2C_C7);
    i32 ni = (i32)n;
    if (ni > 127) return p * pow2i(127) * 2.0f;
    if (ni < -126) return p * pow2i(-126) * pow2i(ni + 126);
    return p * pow2i(ni);
}

// numerics.rs log2c: exponent bits, mantissa in [sqrt(1/2), sqrt(2)),
// t = (m-1)/(m+1), result = fma(t, P(t^2), e).
DEVICE float log2c(float x) {
    if (is_nan(x) || x < 0.0f) return f32_nan();
    if (x == 0.0f) return f32_neg_inf();
    if (x == f32_inf()) return x;
    i32 bias = 0;
    if (x < 1.175494351e-38f) {  // f32::MIN_POSITIVE: rescale subnormals exactly
        x = x * pow2i(23);
        bias = 23;
    }
    u32 bits = __float_as_uint(x);
    i32 e = (i32)((bits >> 23) & 0xffu) - 127 - bias;
    float m = __uint_as_float((bits & 0x007fffffu) | 0x3f800000u);
    if (m > SQRT2) {
        m = m * 0.5f;
        e += 1;
    }
    float t = (m - 1.0f) / (m + 1.0f);
    float t2 = t * t;
    float p = LOG2C_C0;
    p = fmaf(p, t2, LOG2C_C1);
    p = fmaf(p, t2, LOG2C_C2);
    p = fmaf(p, t2, LOG2C_C3);
    p = fmaf(p, t2, LOG2C_C4);
    return fmaf(t, p, (float)e);
}

// numerics.rs tanhc: e = exp2c(-2|y| log2e); (1 - e) / (1 + e), sign of y.
DEVICE float tanhc(float y) {
    if (is_nan(y)) return y;
    float a = fabsf(y);
    float e = exp2c((-2.0f * a) * LOG2E);
    float t = (1.0f - e) / (1.0f + e);
    return copysignf(t, y);
}

// numerics.rs expc: exp2c(x * LOG2E). A NaN passes through quieted, as the
// CPU's multiply propagates it; NVIDIA's multiply would return the canonical
// 0x7fffffff instead and lose the payload bit-exactness needs.
DEVICE float expc(float x) {
    if (is_nan(x)) return __uint_as_float(__float_as_uint(x) | 0x00400000u);
    return exp2c(x * LOG2E);
}
DEVICE float softcap(float s, float cap) { return cap * tanhc(s / cap); }

// ------------------------------------------------------------ storage types
// Codes as shared/src/dtype.rs orders DType (attnlab-gpu passes them as -D).
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2
#define DT_FP8_FNUZ 3
#define DT_FP8_FN 4

// half::f16::from_f32 (f32_to_f16_fallback), integer only.
DEVICE u16 f32_to_f16_bits(float value) {
    u32 x = __float_as_uint(value);
    u32 sign = x & 0x80000000u, exp = x & 0x7f800000u, man = x & 0x007fffffu;
    if (exp == 0x7f800000u) {
        u32 nan_bit = man == 0 ? 0u : 0x0200u;
        return (u16)((sign >> 16) | 0x7c00u | nan_bit | (man >> 13));
    }
    u32 half_sign = sign >> 16;
    i32 half_exp = (i32)(exp >> 23) - 127 + 15;
    if (half_exp >= 0x1f) return (u16)(half_sign | 0x7c00u);
    if (half_exp <= 0) {
        if (14 - half_exp > 24) return (u16)half_sign;
        man = man | 0x00800000u;
        u32 half_man = man >> (14 - half_exp);
        u32 round_bit = 1u << (13 - half_exp);
        if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) half_man += 1;
        return (u16)(half_sign | half_man);
    }
    u32 h = half_sign | ((u32)half_exp << 10) | (man >> 13);
    u32 round_bit = 0x00001000u;
    if ((man & round_bit) != 0 && (man & (3u * round_bit - 1u)) != 0) h += 1;
    return (u16)h;
}

// Exact widening (half::f16::to_f32).
DEVICE float f16_bits_to_f32(u16 h) {
    u32 sign = (u32)(h & 0x8000u) << 16;
    u32 e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        if (m == 0) return __uint_as_float(sign);
        float v = (float)m * 5.960464478e-08f;  // m * 2^-24, exact
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}

// half::bf16::from_f32: NaN keeps its high bits with the quiet bit set.
DEVICE u16 f32_to_bf16_bits(float value) {
    u32 x = __float_as_uint(value);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x0040u);
    u32 round_bit = 0x00008000u;
    if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) return (u16)((x >> 16) + 1u);
    return (u16)(x >> 16);
}
DEVICE float bf16_bits_to_f32(u16 b) { return __uint_as_float((u32)b << 16); }

// fp8 e4m3 (dtype.rs Fp8Format): bias 8 "fnuz" (MI300) or 7 "fn" (OCP).
// Decode is exact; encode rounds to nearest, ties to even code, and saturates
// to the largest finite value (HIP's __HIP_SATFINITE).
DEVICE float fp8_magnitude(u32 code, i32 bias) {
    u32 e = (code >> 3) & 0xfu, m = code & 7u;
    if (e == 0) return (float)m * pow2i(1 - bias - 3);
    return (float)(8u + m) * pow2i((i32)e - bias - 3);
}
DEVICE float fp8_decode(u8 b, bool fnuz) {
    if (fnuz ? b == 0x80 : (b & 0x7f) == 0x7f) return f32_nan();
    float v = fp8_magnitude(b & 0x7fu, fnuz ? 8 : 7);
    return (b & 0x80) ? -v : v;
}
DEVICE u8 fp8_encode(float x, bool fnuz) {
    if (is_nan(x)) return fnuz ? 0x80 : 0x7f;
    i32 bias = fnuz ? 8 : 7;
    u32 max_code = fnuz ? 0x7fu : 0x7eu;
    u32 sign = (__float_as_uint(x) >> 24) & 0x80u;
    float a = fabsf(x);
    u32 code;
    if (a >= fp8_magnitude(max_code, bias)) {
        code = max_code;
    } else {
        // Quantum at a's exponent (2^(E-3)), or the subnormal step 2^(-bias-2).
        i32 E = (i32)((__float_as_uint(a) >> 23) & 0xffu) - 127;
        i32 qexp = E < 1 - bias ? -bias - 2 : E - 3;
        float k = rintf(a * pow2i(-qexp));  // exact scaling, RNE on the code
        u32 ki = (u32)k;
        code = E < 1 - bias ? ki : (((u32)(E + bias)) << 3) + ki - 8u;
        if (code > max_code) code = max_code;
    }
    if (code == 0 && fnuz) return 0;  // fnuz has no negative zero
    return (u8)(code | sign);
}

// Storage<DT>: the element type in memory, an exact load and a rounding store.
template <int DT> struct Storage;
template <> struct Storage<DT_F32> {
    typedef float T;
    static DEVICE float load(T v) { return v; }
    static DEVICE T store(float x) { return x; }
};
template <> struct Storage<DT_F16> {
    typedef u16 T;
    static DEVICE float load(T v) { return f16_bits_to_f32(v); }
    static DEVICE T store(float x) { return f32_to_f16_bits(x); }
};
template <> struct Storage<DT_BF16> {
    typedef u16 T;
    static DEVICE float load(T v) { return bf16_bits_to_f32(v); }
    static DEVICE T store(float x) { return f32_to_bf16_bits(x); }
};
template <> struct Storage<DT_FP8_FNUZ> {
    typedef u8 T;
    static DEVICE float load(T v) { return fp8_decode(v, true); }
    static DEVICE T store(float x) { return fp8_encode(x, true); }
};
template <> struct Storage<DT_FP8_FN> {
    typedef u8 T;
    static DEVICE float load(T v) { return fp8_decode(v, false); }
    static DEVICE T store(float x) { return fp8_encode(x, false); }
};
// DType::round: store then load (the one rounding point of a value).
template <int DT> DEVICE float round_to(float x) { return Storage<DT>::load(Storage<DT>::store(x)); }

// ------------------------------------------------------------ wave reduction
// numerics.rs wave_butterfly: xor offsets W/2 .. 1, every lane ends equal.
DEVICE float wave_sum(float v) {
    for (int off = WAVE_SIZE / 2; off >= 1; off /= 2) v = v + SHFL_XOR(v, off);
    return v;
}
DEVICE float wave_max(float v) {
    for (int off = WAVE_SIZE / 2; off >= 1; off /= 2) v = fmaxf(v, SHFL_XOR(v, off));
    return v;
}

// ------------------------------------------------ softmax.rs building blocks
// ScoreParams::score: base-2 score from a raw dot product. With soft-cap the
// cap applies to the natural score dot * scale, then * LOG2E.
DEVICE float score(float dot, float scale, float scale_log2, float cap, float alibi_bias) {
    if (cap == 0.0f) return (dot * scale_log2) + alibi_bias * LOG2E;
    float s = softcap(dot * scale, cap);
    return (s + alibi_bias) * LOG2E;
}

// softmax.rs visible: causal t <= p, window p - t < w (w == 0: none).
DEVICE bool visible(i64 t, i64 p, bool causal, i64 window) {
    if (causal && t > p) return false;
    return window == 0 || p < t + window;
}

// softmax.rs dequant_kv: an fp8 cache value times its scale, rounded to the
// query dtype; other caches enter as stored.
template <int QD, int KVD> DEVICE float dequant_kv(typename Storage<KVD>::T raw, float scale) {
    float x = Storage<KVD>::load(raw);
    return (KVD == DT_FP8_FNUZ || KVD == DT_FP8_FN) ? round_to<QD>(x * scale) : x;
}

// RowState::update, split into the per-row statistics (every thread of a
// row computes them identically, ascending j) and the per-dimension acc
// update (any thread mapping over d gives the same bits: each acc[d] sees
// the same operations in the same order).
struct TileStats {
    float m_new, m_ref, alpha;
};
DEVICE TileStats tile_begin(float m, float tile_max) {
    TileStats t;
    t.m_new = fmaxf(m, tile_max);
    t.m_ref = t.m_new > f32_neg_inf() ? t.m_new : 0.0f;
    t.alpha = exp2c(m - t.m_ref);
    return t;
}
// RowState::normalized / lse2 for one element / one row.
DEVICE float row_out(float acc, float l) { return l == 0.0f ? 0.0f : acc / l; }
DEVICE float row_lse2(float m, float l) { return l == 0.0f ? f32_neg_inf() : m + log2c(l); }

// ---------------------------------------------------------------- KV layouts
// shared/src/layout/mod.rs KvLayout: (block, row, kv head, dim) -> element
// offset, 64-bit. kind: 0 NHD [nb, bs, h, d]; 1 ROCm paged (K [nb, h, d/x,
// bs, x], V [nb, h, d, bs]); 2 AITER shuffled (K as 1, V [nb, h, bs/x, d, x]).
#define LAYOUT_NHD 0
#define LAYOUT_ROCM_PAGED 1
#define LAYOUT_AITER_SHUFFLED 2
struct KvLayout {
    i32 kind;
    i64 block_size, num_kv_heads, head_size, x;
};
DEVICE i64 k_offset(const KvLayout& L, i64 block, i64 row, i64 head, i64 dim) {
    i64 bs = L.block_size, h = L.num_kv_heads, d = L.head_size;
    if (L.kind == LAYOUT_NHD) return ((block * bs + row) * h + head) * d + dim;
    return block * (h * d * bs) + head * (d * bs) + (dim / L.x) * (bs * L.x) + row * L.x + dim % L.x;
}
DEVICE i64 v_offset(const KvLayout& L, i64 block, i64 row, i64 head, i64 dim) {
    i64 bs = L.block_size, h = L.num_kv_heads, d = L.head_size;
    if (L.kind == LAYOUT_NHD) return ((block * bs + row) * h + head) * d + dim;
    if (L.kind == LAYOUT_ROCM_PAGED) return block * (h * d * bs) + head * (d * bs) + dim * bs + row;
    return block * (h * d * bs) + head * (d * bs) + (row / L.x) * (d * L.x) + dim * L.x + row % L.x;
}

// numerics.rs wave_butterfly, emulated by one thread over `w` (<= 64) values:
// for kernels whose sim models a 64-lane wave even where the hardware wave
// is 32 wide (the ll4mi kernels). op 0: sum, 1: max. Returns lanes[0].
DEVICE float emulated_butterfly(float* lanes, int w, int op) {
    float tmp[64];
    for (int offset = w / 2; offset >= 1; offset /= 2) {
        for (int l = 0; l < w; ++l) tmp[l] = op == 0 ? lanes[l] + lanes[l ^ offset] : fmaxf(lanes[l], lanes[l ^ offset]);
        for (int l = 0; l < w; ++l) lanes[l] = tmp[l];
    }
    return lanes[0];
}

// ---- decode helpers (kernels/paged_decode.hip)
// 16-byte vector loads of storage elements: every KV layout stores 16 / sizeof(T)
// consecutive dims of one K row (x-packed K, NHD) or consecutive rows of one V dim
// (ROCm V, AITER V) contiguously, so one load feeds that many exact widenings.
struct __attribute__((aligned(16))) u32x4 {
    u32 w[4];
};
DEVICE u32x4 load16(const void* p) { return *reinterpret_cast<const u32x4*>(p); }
// Four floats of shared memory in one access (16-byte aligned address).
struct __attribute__((aligned(16))) f32x4 {
    float v[4];
};
DEVICE f32x4 load_f32x4(const float* p) { return *reinterpret_cast<const f32x4*>(p); }
template <typename T> struct Vec16Elem;
template <> struct Vec16Elem<float> {
    static DEVICE float at(const u32x4& v, int i) { return __uint_as_float(v.w[i]); }
};
template <> struct Vec16Elem<u16> {
    static DEVICE u16 at(const u32x4& v, int i) { return (u16)(v.w[i >> 1] >> ((i & 1) * 16)); }
};
template <> struct Vec16Elem<u8> {
    static DEVICE u8 at(const u32x4& v, int i) { return (u8)(v.w[i >> 2] >> ((i & 3) * 8)); }
};

// numerics.rs wave_butterfly over 64 lanes (the sim's wave on every vendor),
// for N values per thread at once, lane = threadIdx.x % 64. Step `offset`:
// v = op(v, v of lane ^ offset), offsets 32, 16, .., 1: exactly the sim's
// sequence; op is commutative, so lanes l and l ^ offset hold the same bits
// after each step and every lane ends with the sim's lanes[0]. On a wave of
// 64 all steps are shuffles; on 32-wide NVIDIA warps offset 32 pairs the two
// warps of a 64-thread group through `xchg` (N x blockDim floats). Every
// thread of the block must call it (it holds __syncthreads on NVIDIA), and
// blockDim.x must be a multiple of 64.
template <int N, bool MAX> DEVICE void butterfly64(float (&v)[N], float* xchg) {
    int off = 32;
    if (WAVE_SIZE < 64) {
        const u32 nt = blockDim.x, t = threadIdx.x;
#pragma unroll
        for (int i = 0; i < N; ++i) xchg[i * nt + t] = v[i];
        __syncthreads();
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const float o = xchg[i * nt + (t ^ 32u)];
            v[i] = MAX ? fmaxf(v[i], o) : v[i] + o;
        }
        __syncthreads();
        off = 16;
    }
    for (; off >= 1; off /= 2) {
#pragma unroll
        for (int i = 0; i < N; ++i) {
            const float o = SHFL_XOR(v[i], off);
            v[i] = MAX ? fmaxf(v[i], o) : v[i] + o;
        }
    }
}
