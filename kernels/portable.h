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
// Lanes per wave: clang's __AMDGCN_WAVEFRONT_SIZE where it still exists
// (LLVM 22 removed it); else GCN/CDNA (gfx9 and older) run 64-lane waves
// only and RDNA (gfx10-12) compiles HIP for 32 unless told otherwise.
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define WAVE_SIZE __AMDGCN_WAVEFRONT_SIZE
#elif defined(__GFX10__) || defined(__GFX11__) || defined(__GFX12__)
#define WAVE_SIZE 32
#else
#define WAVE_SIZE 64
#endif
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

// unified_attention.rs nan_fresh: a NaN from an invalid operation has
// vendor-dependent bits, so where a kernel can make one it stores f32_nan().
DEVICE float nan_fresh(float x) { return is_nan(x) ? f32_nan() : x; }

// numerics.rs SoftcapFormula / softcap_with: how a kernel spells c tanh(s / c).
// s: natural score, s2: base-2 score (AITER only); result natural, NaN fresh.
#define SOFTCAP_TANH 0         // c * tanhc(s / c)
#define SOFTCAP_VLLM_TWO_EXP 1 // seed-era vLLM: c (e^y - e^-y) / (e^y + e^-y), y = s / c
#define SOFTCAP_VLLM_ONE_EXP 2 // vLLM 0.34: c (1 - 2 / (e^(2y) + 1))
#define SOFTCAP_AITER_TWO_EXP2 3 // AITER: the two-exp form on y2 = s2 / c with exp2
DEVICE float two_exp_ratio(float cap, float p1, float p2) { return nan_fresh((cap * (p1 - p2)) / (p1 + p2)); }
DEVICE float softcap_with(int formula, float s, float s2, float cap) {
    if (formula == SOFTCAP_VLLM_TWO_EXP) {
        const float y = s / cap;
        return two_exp_ratio(cap, expc(y), expc(-y));
    }
    if (formula == SOFTCAP_VLLM_ONE_EXP) {
        const float y = s / cap;
        return nan_fresh(cap * (1.0f - 2.0f / (expc(2.0f * y) + 1.0f)));
    }
    if (formula == SOFTCAP_AITER_TWO_EXP2) {
        const float y2 = s2 / cap;
        return two_exp_ratio(cap, exp2c(y2), exp2c(-y2));
    }
    return softcap(s, cap);
}

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
// The same with the soft-cap spelled as `formula` (ScoreParams::softcap_formula).
DEVICE float score_f(float dot, float scale, float scale_log2, float cap, float alibi_bias, int formula) {
    if (cap == 0.0f) return (dot * scale_log2) + alibi_bias * LOG2E;
    float s = softcap_with(formula, dot * scale, dot * scale_log2, cap);
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
// softmax.rs MaskedRowMax::apply with KeepZero: where(m > -inf, m, 0).
DEVICE float keep_zero_max(float m) { return m > f32_neg_inf() ? m : 0.0f; }
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

// ---- arrival counters (a grid's last wave of a group reduces what the others wrote)
// Protocol (kernels/paged_decode_tc.hip): every lane stores, then
// device_fence(); wave_sync(); one lane's arrive() returns the count before
// its own; the wave that sees n - 1 calls device_fence() again and reads the
// others' stores with load_l2_f32 (past the multiprocessor's own L1, which
// is not coherent across multiprocessors).
#if defined(ATTNLAB_HOST)
DEVICE void device_fence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
// Lanes are fibers: a shuffle is the barrier that makes every lane's stores
// come before what one lane does next.
DEVICE void wave_sync() { (void)attnlab_host_shfl_xor_bits(0ull, 1); }
DEVICE u32 arrive(u32* counter) { return __atomic_fetch_add(counter, 1u, __ATOMIC_SEQ_CST); }
DEVICE void reset_counter(u32* counter) { __atomic_store_n(counter, 0u, __ATOMIC_SEQ_CST); }
DEVICE float load_l2_f32(const float* p) { return *p; }
#elif defined(ATTNLAB_HIP)
DEVICE void device_fence() { __threadfence(); }
DEVICE void wave_sync() { __builtin_amdgcn_wave_barrier(); }
DEVICE u32 arrive(u32* counter) { return atomicAdd(counter, 1u); }
DEVICE void reset_counter(u32* counter) { atomicExch(counter, 0u); }
DEVICE float load_l2_f32(const float* p) {
    return __hip_atomic_load(p, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_AGENT);
}
#else
DEVICE void device_fence() { __threadfence(); }
DEVICE void wave_sync() { __syncwarp(); }
DEVICE u32 arrive(u32* counter) { return atomicAdd(counter, 1u); }
DEVICE void reset_counter(u32* counter) { atomicExch(counter, 0u); }
DEVICE float load_l2_f32(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
#endif
// N consecutive floats (N * 4-byte aligned) past L1: one 16-byte load on NVIDIA for N = 4.
template <int N> DEVICE void load_l2_f32n(const float* p, float (&v)[N]) {
#if defined(ATTNLAB_CUDA) && !defined(ATTNLAB_HOST)
    if constexpr (N == 4) {
        asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];"
                     : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3])
                     : "l"(p));
        return;
    }
#endif
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = load_l2_f32(p + i);
}
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

// ---- tile helpers (register-tiled attention)
// The building blocks of the register-tiled kernels (flash_varlen.hip's
// flash_attn_varlen, unified_attention.hip's unified_attention_tiled). A
// program owns TILE_BM = 64 rows of one KV head, TILE_THREADS = 256 threads;
// thread (tr, tc) = (tid / 16, tid % 16) owns rows 4 tr .. 4 tr + 3, in A
// keys {g 16 KW + tc KW + e} (BN / 16 of them), in C dims {g 16 VW + tc VW +
// e} (DV / 16 of them), with acc in registers for the whole program. One
// staged key block of BN keys holds BN / TILE softmax tiles (the sim's
// tiles, whose statistics the per-row results depend on): their scores are
// computed together (scores do not depend on the running state), their
// statistics and P V updates one tile after the other, ascending.
//   A) tile_qk: Q and K^T staged TILE_DK = 8 dims at a time (one 8-element
//      vector load per row / key, double buffered through registers); each
//      thread's 4 x BN/16 scores are fma chains over the chunks in ascending
//      d, so each score is the sim's chain.
//   B) tile_softmax: 4 lanes per row: per tile, tile_max by lane then
//      xor-shuffle (max is order free), tile_begin, p = exp2c(s - m_ref) by
//      lane; then ONE lane per row sums the unrounded p of each tile in
//      ascending j (the sim's chain) and updates l per tile; then the lanes
//      overwrite p with round(p), or with -0.0 when p == 0 (a skip mark: a
//      rounded positive p is never -0.0).
//   C) tile_pv: V staged TILE_VK = 8 keys at a time; at each tile's first
//      key acc = acc * alpha(tile), then fma over keys ascending. A thread
//      none of whose 4 rows skips a key of the block (no p == 0, len a
//      multiple of TILE_VK) runs the branch-free loop; others test the mark
//      per (row, key) exactly where the sim tests p != 0.
// Every thread of the block calls A, B and C (they hold __syncthreads).
#define TILE_BM 64
#define TILE_THREADS 256
#define TILE_DK 8
#define TILE_VK 8
#define TILE_SKIP_MARK 0x80000000u  // -0.0f in P_s: key skipped (unrounded p == 0)

// Vector width (4, 2 or 1) of n consecutive per-thread elements.
#define TILE_VEC_WIDTH(n) ((n) % 4 == 0 ? 4 : ((n) % 2 == 0 ? 2 : 1))
// Floats of the A staging (Q_s[2][DK][BM], K_s[2][DK][BN]) or the C staging
// (V_s[2][VK][DV]), whichever is larger: they share one buffer.
#define TILE_STAGE(bn, dv) \
    (2 * TILE_DK * (TILE_BM + (bn)) > 2 * TILE_VK * (dv) ? 2 * TILE_DK * (TILE_BM + (bn)) : 2 * TILE_VK * (dv))
// Key of a block that score slot c of column thread tc holds (A's mapping).
template <int KW> DEVICE int tile_key(int c, int tc) { return (c / KW) * 16 * KW + tc * KW + c % KW; }

// N (1, 2 or 4) consecutive shared-memory floats in one access.
struct __attribute__((aligned(16))) tile_f4 { float v[4]; };
struct __attribute__((aligned(8))) tile_f2 { float v[2]; };
template <int N> DEVICE void tile_lds(const float* p, float* out) {
    if constexpr (N == 4) {
        const tile_f4 t = *reinterpret_cast<const tile_f4*>(p);
        out[0] = t.v[0], out[1] = t.v[1], out[2] = t.v[2], out[3] = t.v[3];
    } else if constexpr (N == 2) {
        const tile_f2 t = *reinterpret_cast<const tile_f2*>(p);
        out[0] = t.v[0], out[1] = t.v[1];
    } else {
        out[0] = p[0];
    }
}
template <int N> DEVICE void tile_sts(float* p, const float* in) {
    if constexpr (N == 4) {
        *reinterpret_cast<tile_f4*>(p) = tile_f4{{in[0], in[1], in[2], in[3]}};
    } else if constexpr (N == 2) {
        *reinterpret_cast<tile_f2*>(p) = tile_f2{{in[0], in[1]}};
    } else {
        p[0] = in[0];
    }
}

// 8 consecutive storage elements of Storage S (one aligned 8 * sizeof(T)-byte
// load), kept as raw words until they are widened (exactly) by get.
struct __attribute__((aligned(16))) tile_u4 { u32 w[4]; };
struct __attribute__((aligned(8))) tile_u2 { u32 w[2]; };
template <typename S> struct Pack8 {
    typedef typename S::T T;
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
                const tile_u4 u = reinterpret_cast<const tile_u4*>(p)[i];
                w[4 * i] = u.w[0], w[4 * i + 1] = u.w[1], w[4 * i + 2] = u.w[2], w[4 * i + 3] = u.w[3];
            }
        } else {
            const tile_u2 u = *reinterpret_cast<const tile_u2*>(p);
            w[0] = u.w[0], w[1] = u.w[1];
        }
    }
    DEVICE float get(int e) const {
        if constexpr (sizeof(T) == 4) {
            return __uint_as_float(w[e]);
        } else {
            constexpr int PER = 4 / (int)sizeof(T), BITS = 8 * (int)sizeof(T);
            return S::load((T)((w[e / PER] >> (BITS * (e % PER))) & ((1u << BITS) - 1u)));
        }
    }
};

// A) s[i][c] = sum over d ascending of q[4 tr + i][d] * k[tile_key(c)][d], as
// fma chains from 0. load(role, idx, d0) fetches 8 dims from d0 into the
// caller's registers (role 0: Q row idx < rows; 1: K key idx < len; -1:
// none of them for this thread: zeros), widen(x) turns them into 8 floats.
template <int D, int BN, typename Load, typename Widen>
DEVICE void tile_qk(float (&s)[4][BN / 16], float* stage, int rows, int len, Load load, Widen widen) {
    constexpr int KN = BN / 16, KW = TILE_VEC_WIDTH(KN);
    const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    auto fetch = [&](int d0) {
        if (tid < TILE_BM) load(tid < rows ? 0 : -1, tid, d0);
        else if (tid < TILE_BM + BN) load(tid - TILE_BM < len ? 1 : -1, tid - TILE_BM, d0);
    };
    auto store = [&](int buf) {
        float x[8];
        if (tid < TILE_BM) {
            float* q_s = stage + buf * TILE_DK * TILE_BM;
            widen(x);
#pragma unroll
            for (int e = 0; e < 8; ++e) q_s[e * TILE_BM + tid] = x[e];
        } else if (tid < TILE_BM + BN) {
            float* k_s = stage + 2 * TILE_DK * TILE_BM + buf * TILE_DK * BN;
            widen(x);
#pragma unroll
            for (int e = 0; e < 8; ++e) k_s[e * BN + tid - TILE_BM] = x[e];
        }
    };
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < KN; ++c) s[i][c] = 0.0f;
    fetch(0);
    store(0);
    __syncthreads();
    for (int dc = 0; dc < D / TILE_DK; ++dc) {
        const int buf = dc & 1;
        if (dc + 1 < D / TILE_DK) fetch((dc + 1) * TILE_DK);
        const float* q_s = stage + buf * TILE_DK * TILE_BM;
        const float* k_s = stage + 2 * TILE_DK * TILE_BM + buf * TILE_DK * BN;
#pragma unroll
        for (int dd = 0; dd < TILE_DK; ++dd) {
            float qa[4], kb[KN];
            tile_lds<4>(q_s + dd * TILE_BM + 4 * tr, qa);
#pragma unroll
            for (int c = 0; c < KN; c += KW) tile_lds<KW>(k_s + dd * BN + c * 16 + tc * KW, kb + c);
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int c = 0; c < KN; ++c) s[i][c] = fmaf(qa[i], kb[c], s[i][c]);
        }
        if (dc + 1 < D / TILE_DK) store(buf ^ 1);
        __syncthreads();
    }
}

// B) Row statistics of the block's tiles (scores in P_s[TILE_BM][PS], keys
// j < len; tiles of TILE keys from key 0). Per row (first `rows` rows):
// m_i, l_i updated through every tile that has keys, alpha_i[t * TILE_BM +
// row] = tile t's alpha, skip_i[row] = whether C must test skip marks; P_s
// ends holding round(p) or the skip mark up to len rounded up to TILE_VK.
// M_ZERO_IF_EMPTY: the kernel keeps m = 0 while a row has seen no key
// (MaskedRowMax::KeepZero: AITER, seed-era vLLM).
template <int BN, int PS, int TILE, int QD, bool M_ZERO_IF_EMPTY>
DEVICE void tile_softmax(float* P_s, int rows, int len, float* m_i, float* l_i, float* alpha_i, int* skip_i) {
    static_assert(BN % TILE == 0 && TILE % TILE_VK == 0, "a block holds whole tiles of whole V chunks");
    constexpr int NT = BN / TILE;
    const int tid = threadIdx.x, srow = tid >> 2, lane4 = tid & 3;
    const bool active = srow < rows;
    float* prow = P_s + srow * PS;
    float m = active ? m_i[srow] : 0.0f;
    float pr[BN / 4], alpha[NT];
#pragma unroll
    for (int u = 0; u < NT; ++u) {
        alpha[u] = 1.0f;
        if (u * TILE < len) {  // the same for the whole block
            float mx = f32_neg_inf();
            if (active)
#pragma unroll
                for (int jj = 0; jj < TILE / 4; ++jj)
                    if (u * TILE + lane4 + 4 * jj < len) mx = fmaxf(mx, prow[u * TILE + lane4 + 4 * jj]);
            mx = fmaxf(mx, SHFL_XOR(mx, 1));
            mx = fmaxf(mx, SHFL_XOR(mx, 2));
            const TileStats ts = tile_begin(m, mx);
#pragma unroll
            for (int jj = 0; jj < TILE / 4; ++jj) {
                const int j = u * TILE + lane4 + 4 * jj;
                pr[u * (TILE / 4) + jj] = 0.0f;
                if (active && j < len) {
                    pr[u * (TILE / 4) + jj] = exp2c(prow[j] - ts.m_ref);
                    prow[j] = pr[u * (TILE / 4) + jj];
                }
            }
            alpha[u] = ts.alpha;
            m = ts.m_new;
            if (M_ZERO_IF_EMPTY) m = keep_zero_max(m);
        } else {
#pragma unroll
            for (int jj = 0; jj < TILE / 4; ++jj) pr[u * (TILE / 4) + jj] = 0.0f;
        }
    }
    __syncthreads();
    if (active && lane4 == 0) {
        float l = l_i[srow];
        bool skip = len % TILE_VK != 0;
#pragma unroll
        for (int u = 0; u < NT; ++u) {
            if (u * TILE < len) {
                const int end = min(len, (u + 1) * TILE);
                float tile_sum = 0.0f;
                int j = u * TILE;
                for (; j + 4 <= end; j += 4) {
                    float p4[4];
                    tile_lds<4>(prow + j, p4);
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        tile_sum = tile_sum + p4[e];
                        skip = skip || p4[e] == 0.0f;
                    }
                }
                for (; j < end; ++j) {
                    tile_sum = tile_sum + prow[j];
                    skip = skip || prow[j] == 0.0f;
                }
                l = fmaf(l, alpha[u], tile_sum);
                alpha_i[u * TILE_BM + srow] = alpha[u];
            }
        }
        l_i[srow] = l;
        m_i[srow] = m;
        skip_i[srow] = skip;
    }
    __syncthreads();
    const int len_vk = (len + TILE_VK - 1) / TILE_VK * TILE_VK;
    if (active)
#pragma unroll
        for (int jj = 0; jj < BN / 4; ++jj) {
            const int j = lane4 + 4 * jj;
            if (j < len)
                prow[j] = pr[jj] != 0.0f ? round_to<QD>(pr[jj]) : __uint_as_float(TILE_SKIP_MARK);
            else if (j < len_vk)
                prow[j] = __uint_as_float(TILE_SKIP_MARK);
        }
}

// C) acc = acc * alpha(tile) at each tile's first key, then acc += p V over
// TILE_VK-key chunks, keys ascending (P_s as B leaves it). load(key, col)
// fetches 8 dims col.. of block key `key` (< len) into the caller's
// registers, or zeros when key < 0; widen(x) turns them into 8 floats.
template <int DV, int BN, int PS, int TILE, typename Load, typename Widen>
DEVICE void tile_pv(float (&acc)[4][DV / 16], const float* P_s, float* stage, const float* alpha_i, const int* skip_i,
                    int len, Load load, Widen widen) {
    static_assert(BN % TILE == 0 && TILE % TILE_VK == 0, "a block holds whole tiles of whole V chunks");
    constexpr int VN = DV / 16, VW = TILE_VEC_WIDTH(VN);
    const int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    const int v_row = tid / (DV / 8), v_col = tid % (DV / 8) * 8;
    auto fetch = [&](int kc) {
        if (tid < TILE_VK * DV / 8) load(kc * TILE_VK + v_row < len ? kc * TILE_VK + v_row : -1, v_col);
    };
    auto store = [&](int buf) {
        if (tid < TILE_VK * DV / 8) {
            float* dst = stage + buf * TILE_VK * DV + v_row * DV + v_col;
            float x[8];
            widen(x);
            tile_sts<4>(dst, x);
            tile_sts<4>(dst + 4, x + 4);
        }
    };
    auto rescale = [&](int u) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float al = alpha_i[u * TILE_BM + 4 * tr + i];
#pragma unroll
            for (int c = 0; c < VN; ++c) acc[i][c] = acc[i][c] * al;
        }
    };
    const int n_kc = (len + TILE_VK - 1) / TILE_VK;
    fetch(0);
    store(0);
    __syncthreads();
    bool slow = false;
#pragma unroll
    for (int i = 0; i < 4; ++i) slow = slow || skip_i[4 * tr + i] != 0;
    rescale(0);
    for (int kc = 0; kc < n_kc; ++kc) {
        const int buf = kc & 1;
        if constexpr (TILE < BN)
            if (kc > 0 && kc % (TILE / TILE_VK) == 0) rescale(kc / (TILE / TILE_VK));
        if (kc + 1 < n_kc) fetch(kc + 1);
        const float* v_s = stage + buf * TILE_VK * DV;
        const float* p_s = P_s + 4 * tr * PS + kc * TILE_VK;
#pragma unroll
        for (int k4 = 0; k4 < TILE_VK; k4 += 4) {
            float p[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) tile_lds<4>(p_s + i * PS + k4, p[i]);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float vv[VN];
#pragma unroll
                for (int c = 0; c < VN; c += VW) tile_lds<VW>(v_s + (k4 + e) * DV + c * 16 + tc * VW, vv + c);
                if (!slow) {
#pragma unroll
                    for (int i = 0; i < 4; ++i)
#pragma unroll
                        for (int c = 0; c < VN; ++c) acc[i][c] = fmaf(p[i][e], vv[c], acc[i][c]);
                } else {
#pragma unroll
                    for (int i = 0; i < 4; ++i)
                        if (__float_as_uint(p[i][e]) != TILE_SKIP_MARK)
#pragma unroll
                            for (int c = 0; c < VN; ++c) acc[i][c] = fmaf(p[i][e], vv[c], acc[i][c]);
                }
            }
        }
        if (kc + 1 < n_kc) store(buf ^ 1);
        __syncthreads();
    }
}

// --------------------------------------------------------- matrix cores
// One warp/wave-wide matrix instruction per function, D = A*B + C, with the
// lane layout of each (sim/src/numerics/mma.rs `Shape::{a,b,d}_index`, the
// same formulas). On NVIDIA (sm_80+) inline PTX `mma.sync`; on AMD the MFMA
// builtins; on the host device the model of sim/src/numerics/mma.rs, ported
// below, computes what the instruction returns, after every lane of the
// wave has handed its fragments over (attnlab_host_wave_gather). Every lane
// of the wave must call the function together, as on the GPU.
//
// Shapes: 0 = m16n8k16 (NVIDIA, 32 lanes: A 8, B 4, C/D 4 per lane),
// 1 = 16x16x16 and 2 = 32x32x8 (CDNA, 64 lanes: A 4, B 4, C/D 4 or 16),
// 3 = 16x16x32 and 4 = 32x32x16 (CDNA3 fp8/bf8: A 8, B 8, C/D 4 or 16).
// Input formats (mma.rs InFormat; storage bits as u16, fp8 in the low byte).
#define MMA_M16N8K16 0
#define MFMA_16X16X16 1
#define MFMA_32X32X8 2
#define MFMA_16X16X32 3
#define MFMA_32X32X16 4
#define MMA_BF16 0
#define MMA_F16 1
#define MMA_FP8 2  // e4m3 fnuz (bias 8)
#define MMA_BF8 3  // e5m2 fnuz (bias 16)

template <int SHAPE> struct MmaShape;
template <> struct MmaShape<MMA_M16N8K16> {
    enum { M = 16, N = 8, K = 16, LANES = 32, PA = 8, PB = 4, PD = 4 };
    static DEVICE void a_index(int lane, int i, int& row, int& k) {
        int g = lane >> 2, t = lane & 3;
        row = g + 8 * ((i >> 1) & 1);
        k = 2 * t + (i & 1) + 8 * (i >> 2);
    }
    static DEVICE void b_index(int lane, int i, int& k, int& col) {
        k = 2 * (lane & 3) + (i & 1) + 8 * (i >> 1);
        col = lane >> 2;
    }
    static DEVICE void d_index(int lane, int i, int& row, int& col) {
        row = (lane >> 2) + 8 * (i >> 1);
        col = 2 * (lane & 3) + (i & 1);
    }
};
template <> struct MmaShape<MFMA_16X16X16> {
    enum { M = 16, N = 16, K = 16, LANES = 64, PA = 4, PB = 4, PD = 4 };
    static DEVICE void a_index(int lane, int i, int& row, int& k) { row = lane % 16, k = 4 * (lane / 16) + i; }
    static DEVICE void b_index(int lane, int i, int& k, int& col) { k = 4 * (lane / 16) + i, col = lane % 16; }
    static DEVICE void d_index(int lane, int i, int& row, int& col) { row = 4 * (lane / 16) + i, col = lane % 16; }
};
template <> struct MmaShape<MFMA_32X32X8> {
    enum { M = 32, N = 32, K = 8, LANES = 64, PA = 4, PB = 4, PD = 16 };
    static DEVICE void a_index(int lane, int i, int& row, int& k) { row = lane % 32, k = 4 * (lane / 32) + i; }
    static DEVICE void b_index(int lane, int i, int& k, int& col) { k = 4 * (lane / 32) + i, col = lane % 32; }
    static DEVICE void d_index(int lane, int i, int& row, int& col) {
        row = 8 * (i / 4) + 4 * (lane / 32) + i % 4, col = lane % 32;
    }
};

template <> struct MmaShape<MFMA_16X16X32> {
    enum { M = 16, N = 16, K = 32, LANES = 64, PA = 8, PB = 8, PD = 4 };
    static DEVICE void a_index(int lane, int i, int& row, int& k) { row = lane % 16, k = 8 * (lane / 16) + i; }
    static DEVICE void b_index(int lane, int i, int& k, int& col) { k = 8 * (lane / 16) + i, col = lane % 16; }
    static DEVICE void d_index(int lane, int i, int& row, int& col) { row = 4 * (lane / 16) + i, col = lane % 16; }
};
template <> struct MmaShape<MFMA_32X32X16> {
    enum { M = 32, N = 32, K = 16, LANES = 64, PA = 8, PB = 8, PD = 16 };
    static DEVICE void a_index(int lane, int i, int& row, int& k) { row = lane % 32, k = 8 * (lane / 32) + i; }
    static DEVICE void b_index(int lane, int i, int& k, int& col) { k = 8 * (lane / 32) + i, col = lane % 32; }
    static DEVICE void d_index(int lane, int i, int& row, int& col) {
        row = 8 * (i / 4) + 4 * (lane / 32) + i % 4, col = lane % 32;
    }
};

#if defined(ATTNLAB_HOST)
// Every lane of the calling wave posts `bytes` at `mine`; each receives all
// of them, lane-major, in `all` (host_shim.cpp). A collective, like a shuffle.
void attnlab_host_wave_gather(const void* mine, void* all, unsigned bytes);

// The model (sim/src/numerics/mma.rs), line for line; `__int128` holds the
// aligned sums as i128 does there. Compared with the Rust model through
// `attnlab diff --device host --backend mma` (every instruction the host
// runs is this code; the diff computes the same tiles in Rust).
struct MmaFused {
    int block, frac_bits;
    int late, sum_extra_bits;  // CAdd::Late { sum_extra_bits } when late
    int rne;                   // Rounding::NearestEven, else TowardZero
    int zero_prod_skip, zero_prod_exp;
    int zero_c_skip, zero_c_exp;
    int has_min_align, min_align_exp;
    int product_overflow, overflow_ieee, ieee_zero_sign;
    u32 nan_bits;
    int odd_even, has_cutoff, late_c_cutoff;
};
struct MmaPairwise {
    int group, flush;
    u32 nan_bits;
};
struct MmaModel {
    int pairwise;
    MmaFused f;
    MmaPairwise p;
};
// MatrixTarget::model: 0 sm_90, 1 gfx90a, 2 gfx942; fmt an MMA_* format.
inline MmaModel mma_target_model(int target, int fmt) {
    MmaModel m = {};
    bool fp8 = fmt == MMA_FP8 || fmt == MMA_BF8;
    if (target == 0) {
        m.f = {16, 25, 0, 0, 0, 1, 0, 1, 0, 1, -133, 0, 0, 0, 0x7fffffffu, 0, 0, 0};
    } else if (target == 2) {
        m.f = {fp8 ? 16 : 8, 24, 1, 7, 1, 1, 0, 0, -126, 0, 0, 1, 0, 0, 0x7fc00000u, fp8 ? 1 : 0, fp8 ? 1 : 0, 25};
    } else {
        m.pairwise = 1;
        m.p = {4, 1, 0x7fc00000u};
    }
    return m;
}

struct MmaTerm {
    bool neg;
    int exp;
    u64 sig;
    int frac;
};
enum { MMA_ZERO, MMA_FINITE, MMA_INF, MMA_NAN };
// InFormat::decode: class, and the term for finite values (and the sign of zeros/infs).
inline int mma_decode(int fmt, u16 bits, MmaTerm& t) {
    const int ms[4] = {7, 10, 3, 2}, ebs[4] = {8, 5, 4, 5};
    int m = ms[fmt], eb = ebs[fmt];
    bool fnuz = fmt == MMA_FP8 || fmt == MMA_BF8;
    bits &= (u16)((1u << (1 + eb + m)) - 1u);
    t.neg = (bits >> (m + eb)) & 1;
    u32 e_field = (bits >> m) & ((1u << eb) - 1u);
    u64 frac = bits & ((1u << m) - 1u);
    if (fnuz) {
        if (t.neg && e_field == 0 && frac == 0) return MMA_NAN;  // 0x80
    } else if (e_field == (1u << eb) - 1u) {
        return frac == 0 ? MMA_INF : MMA_NAN;
    }
    if (e_field == 0 && frac == 0) return MMA_ZERO;
    int bias = (1 << (eb - 1)) - 1 + (fnuz ? 1 : 0), emin = 1 - bias;
    t.exp = e_field == 0 ? emin : (int)e_field - bias;
    t.sig = e_field == 0 ? frac : (frac | (1ull << m));
    t.frac = m;
    return MMA_FINITE;
}
inline int mma_decode_f32(float x, MmaTerm& t) {
    u32 bits = __float_as_uint(x);
    t.neg = bits >> 31;
    u32 e = (bits >> 23) & 0xffu;
    u64 f = bits & 0x7fffffu;
    if (e == 0xffu) return f == 0 ? MMA_INF : MMA_NAN;
    if (e == 0 && f == 0) return MMA_ZERO;
    t.exp = e == 0 ? -126 : (int)e - 127;
    t.sig = e == 0 ? f : (f | (1ull << 23));
    t.frac = 23;
    return MMA_FINITE;
}
inline __int128 mma_align(const MmaTerm& t, int e, int frac_bits) {
    long long right = (long long)(e - t.exp) + t.frac - frac_bits;
    __int128 m = right >= 0 ? (right >= 64 ? 0 : (__int128)(t.sig >> right)) : (__int128)(t.sig << (-right));
    return t.neg ? -m : m;
}
inline __int128 mma_floor_shift(__int128 v, long long shift) {
    if (shift <= 0) return v << (-shift < 100 ? -shift : 100);
    if (shift >= 127) return v < 0 ? -1 : 0;
    return v >> shift;
}
inline int mma_bitlen(unsigned __int128 v) {
    u64 hi = (u64)(v >> 64), lo = (u64)v;
    return hi ? 128 - __builtin_clzll(hi) : (lo ? 64 - __builtin_clzll(lo) : 0);
}
inline float mma_round_to_f32(bool neg, unsigned __int128 mag, long long exp2, int rne, int overflow_ieee) {
    long long e = exp2 + mma_bitlen(mag) - 1;
    long long qe = e - 23 < -149 ? -149 : e - 23;
    long long shift = qe - exp2;
    unsigned __int128 m;
    if (shift <= 0) {
        m = mag << (-shift);
    } else {
        unsigned __int128 kept, rem, half = 0;
        bool has_half = true;
        if (shift >= 128) {
            kept = 0, rem = mag;
            if (shift == 128) half = (unsigned __int128)1 << 127;
            else has_half = false;
        } else {
            kept = mag >> shift, rem = mag & (((unsigned __int128)1 << shift) - 1);
            half = (unsigned __int128)1 << (shift - 1);
        }
        m = kept;
        if (rne && has_half && (rem > half || (rem == half && (m & 1)))) m += 1;
    }
    if (m == ((unsigned __int128)1 << 24)) {
        m >>= 1;
        qe += 1;
    }
    u32 sign = neg ? 0x80000000u : 0u;
    if (m == 0) return __uint_as_float(sign);
    if (m >= (1u << 23) && qe + 23 > 127) {
        bool sat = !rne && overflow_ieee;
        return __uint_as_float(sign | (sat ? 0x7f7fffffu : 0x7f800000u));
    }
    u32 bits = m < (1u << 23) ? (u32)m : (((u32)(qe + 23 + 127)) << 23) | ((u32)m & 0x7fffffu);
    return __uint_as_float(sign | bits);
}

// Fused::block_fma_finite: a block of finite bf16/f16 inputs and a finite C
// in fixed-width integers, term for term the general path's arithmetic;
// false where it does not apply (specials, fnuz formats, interleaved halves,
// zero-sign tracking, zero-product exponents, a product beyond 2^128 with
// product_overflow), and the general path decides.
inline bool mma_block_fma_finite(const MmaFused& f, int fmt, const u16* a, const u16* b, int n, float c, float& d) {
    if (f.odd_even || f.ieee_zero_sign || !f.zero_prod_skip || (fmt != MMA_BF16 && fmt != MMA_F16) || n > 32 ||
        f.frac_bits > 36)
        return false;
    const int m = fmt == MMA_BF16 ? 7 : 10, eb = fmt == MMA_BF16 ? 8 : 5;
    const u32 field_max = (1u << eb) - 1u;
    const u64 frac_mask = (1ull << m) - 1ull;
    const int bias = (1 << (eb - 1)) - 1, emin = 1 - bias, prod_frac = 2 * m, fb = f.frac_bits;
    int exps[32];
    long long sigs[32];
    int nt = 0;
    for (int i = 0; i < n; ++i) {
        u32 x = a[i], y = b[i];
        u32 ex = (x >> m) & field_max, ey = (y >> m) & field_max;
        if (ex == field_max || ey == field_max) return false;  // inf or NaN
        u64 fx = x & frac_mask, fy = y & frac_mask;
        if ((ex == 0 && fx == 0) || (ey == 0 && fy == 0)) continue;  // zero product: skipped
        int xe = ex == 0 ? emin : (int)ex - bias, ye = ey == 0 ? emin : (int)ey - bias;
        u64 xs = ex == 0 ? fx : (fx | (1ull << m)), ys = ey == 0 ? fy : (fy | (1ull << m));
        long long sig = (long long)(xs * ys);
        exps[nt] = xe + ye;
        if (f.product_overflow && exps[nt] + (63 - __builtin_clzll((u64)sig)) - prod_frac >= 128) return false;
        sigs[nt] = ((x ^ y) >> (m + eb)) & 1u ? -sig : sig;
        ++nt;
    }
    u32 cb = __float_as_uint(c);
    u32 ce = (cb >> 23) & 0xffu;
    long long cf = cb & 0x7fffffu;
    if (ce == 0xffu) return false;
    bool has_c = true;
    int c_exp = 0;
    long long c_sig = 0;
    if (ce == 0 && cf == 0) {
        if (f.zero_c_skip) has_c = false;
        else c_exp = f.zero_c_exp;
    } else {
        c_exp = ce == 0 ? -126 : (int)ce - 127;
        c_sig = ce == 0 ? cf : (cf | (1ll << 23));
        if (cb >> 31) c_sig = -c_sig;
    }
    auto align = [&](long long sig, int exp, int frac, int e) -> long long {
        int right = (e - exp) + frac - fb;
        u64 mag = (u64)(sig < 0 ? -sig : sig);
        mag = right >= 0 ? (right >= 63 ? 0 : mag >> right) : mag << (-right);
        return sig < 0 ? -(long long)mag : (long long)mag;
    };
    __int128 sum;
    long long lsb;
    if (!f.late) {
        if (nt == 0 && !has_c) {
            d = 0.0f;
            return true;
        }
        int e = has_c ? c_exp : exps[0];
        for (int i = 0; i < nt; ++i) e = exps[i] > e ? exps[i] : e;
        if (f.has_min_align && e < f.min_align_exp) e = f.min_align_exp;
        long long s = 0;
        for (int i = 0; i < nt; ++i) s += align(sigs[i], exps[i], prod_frac, e);
        if (has_c) s += align(c_sig, c_exp, 23, e);
        sum = s;
        lsb = (long long)e - fb;
    } else {
        int x = f.sum_extra_bits;
        if (nt == 0 && !has_c) {
            d = 0.0f;
            return true;
        }
        int ep = 0;
        long long s = 0;
        if (nt > 0) {
            ep = exps[0];
            for (int i = 1; i < nt; ++i) ep = exps[i] > ep ? exps[i] : ep;
            if (f.has_min_align && ep < f.min_align_exp) ep = f.min_align_exp;
            for (int i = 0; i < nt; ++i) s += align(sigs[i], exps[i], prod_frac, ep);
        }
        int mx = nt == 0 ? c_exp : (!has_c ? ep : (ep > c_exp ? ep : c_exp));
        __int128 s2 = nt > 0 ? mma_floor_shift((__int128)s << x, (long long)(mx - ep)) : 0;
        __int128 c2 = 0;
        if (has_c && !(f.has_cutoff && c_exp < mx - f.late_c_cutoff))
            c2 = mma_floor_shift((__int128)c_sig, (long long)(mx - c_exp) + 23 - fb);
        sum = s2 + (c2 << x);
        lsb = (long long)mx - fb - x;
    }
    if (sum == 0) {
        d = 0.0f;
        return true;
    }
    unsigned __int128 mag = sum < 0 ? (unsigned __int128)(-sum) : (unsigned __int128)sum;
    float r = mma_round_to_f32(sum < 0, mag, lsb, f.rne, f.overflow_ieee);
    d = r == 0.0f ? 0.0f : r;
    return true;
}

// Fused::block_fma over n <= 32 products.
inline float mma_block_fma(const MmaFused& f, int fmt, const u16* a, const u16* b, int n, float c) {
    float fast;
    if (mma_block_fma_finite(f, fmt, a, b, n, c, fast)) return fast;
    float nan = __uint_as_float(f.nan_bits);
    bool pos_inf = false, neg_inf = false, all_neg_zero = true;
    MmaTerm terms[33];
    int odd[33];  // the k parity of each product term (odd_even)
    int nt = 0;
    for (int i = 0; i < n; ++i) {
        odd[nt] = i & 1;
        MmaTerm x, y;
        int cx = mma_decode(fmt, a[i], x), cy = mma_decode(fmt, b[i], y);
        if (cx == MMA_NAN || cy == MMA_NAN) return nan;
        if ((cx == MMA_INF && cy == MMA_ZERO) || (cx == MMA_ZERO && cy == MMA_INF)) return nan;
        bool s = x.neg ^ y.neg;
        if (cx == MMA_INF || cy == MMA_INF) {
            all_neg_zero = false;
            if (s) neg_inf = true;
            else pos_inf = true;
        } else if (cx == MMA_ZERO || cy == MMA_ZERO) {
            all_neg_zero = all_neg_zero && s;
            if (!f.zero_prod_skip) {
                int other = cx == MMA_ZERO ? (cy == MMA_ZERO ? f.zero_prod_exp : y.exp) : x.exp;
                terms[nt++] = MmaTerm{s, f.zero_prod_exp + other, 0, 0};
            }
        } else {
            all_neg_zero = false;
            terms[nt++] = MmaTerm{s, x.exp + y.exp, x.sig * y.sig, x.frac + y.frac};
        }
    }
    MmaTerm ct;
    bool has_c = false;
    int cc = mma_decode_f32(c, ct);
    if (cc == MMA_NAN) return nan;
    if (cc == MMA_INF) {
        if (ct.neg) neg_inf = true;
        else pos_inf = true;
    } else if (cc == MMA_ZERO) {
        all_neg_zero = all_neg_zero && ct.neg;
        if (!f.zero_c_skip) {
            ct = MmaTerm{ct.neg, f.zero_c_exp, 0, 0};
            has_c = true;
        }
    } else {
        all_neg_zero = false;
        has_c = true;
    }
    if (pos_inf && neg_inf) return nan;
    if (pos_inf) return f32_inf();
    if (neg_inf) return f32_neg_inf();
    if (f.product_overflow) {
        bool p = false, q = false;
        for (int i = 0; i < nt; ++i) {
            if (terms[i].sig == 0) continue;
            int lead = terms[i].exp + (63 - __builtin_clzll(terms[i].sig)) - terms[i].frac;
            if (lead >= 128) {
                if (terms[i].neg) q = true;
                else p = true;
            }
        }
        if (p && q) return nan;
        if (p) return f32_inf();
        if (q) return f32_neg_inf();
    }
    float zero = (f.ieee_zero_sign && all_neg_zero) ? -0.0f : 0.0f;
    int fb = f.frac_bits;
    __int128 sum = 0;
    long long lsb;
    if (!f.late) {
        if (has_c) terms[nt++] = ct;
        if (nt == 0) return zero;
        int e = terms[0].exp;
        for (int i = 1; i < nt; ++i) e = terms[i].exp > e ? terms[i].exp : e;
        if (f.has_min_align && e < f.min_align_exp) e = f.min_align_exp;
        for (int i = 0; i < nt; ++i) sum += mma_align(terms[i], e, fb);
        lsb = (long long)e - fb;
    } else {
        int x = f.sum_extra_bits;
        // the fused sum of the products of one half (parity h; -1: all)
        auto fused = [&](int h, int& e, __int128& sum_h) -> bool {
            bool any = false;
            for (int i = 0; i < nt; ++i)
                if (h < 0 || odd[i] == h) {
                    if (!any || terms[i].exp > e) e = terms[i].exp;
                    any = true;
                }
            if (!any) return false;
            if (f.has_min_align && e < f.min_align_exp) e = f.min_align_exp;
            sum_h = 0;
            for (int i = 0; i < nt; ++i)
                if (h < 0 || odd[i] == h) sum_h += mma_align(terms[i], e, fb);
            return true;
        };
        bool has_p;
        int ep = 0;
        __int128 s = 0;
        if (f.odd_even) {
            int e0 = 0, e1 = 0;
            __int128 s0 = 0, s1 = 0;
            bool h0 = fused(0, e0, s0), h1 = fused(1, e1, s1);
            has_p = h0 || h1;
            if (h0 && h1) {
                ep = e0 > e1 ? e0 : e1;
                s = mma_floor_shift(s0, ep - e0) + mma_floor_shift(s1, ep - e1);
            } else if (h0) {
                ep = e0, s = s0;
            } else if (h1) {
                ep = e1, s = s1;
            }
        } else {
            has_p = fused(-1, ep, s);
        }
        if (!has_p && !has_c) return zero;
        int m = !has_p ? ct.exp : (!has_c ? ep : (ep > ct.exp ? ep : ct.exp));
        __int128 s2 = has_p ? mma_floor_shift(s << x, (long long)(m - ep)) : 0;
        __int128 c2 = 0;
        if (has_c && !(f.has_cutoff && ct.exp < m - f.late_c_cutoff)) {
            __int128 v = ct.neg ? -(__int128)ct.sig : (__int128)ct.sig;
            c2 = mma_floor_shift(v, (long long)(m - ct.exp) + ct.frac - fb);
        }
        sum = s2 + (c2 << x);
        lsb = (long long)m - fb - x;
    }
    if (sum == 0) return zero;
    unsigned __int128 mag = sum < 0 ? (unsigned __int128)(-sum) : (unsigned __int128)sum;
    float d = mma_round_to_f32(sum < 0, mag, lsb, f.rne, f.overflow_ieee);
    // a nonzero sum that rounds to zero: +0 unless IEEE signs are kept (as the sim)
    return (d == 0.0f && !f.ieee_zero_sign) ? 0.0f : d;
}

inline float mma_flush(const MmaPairwise& p, float x) {
    return (p.flush && x != 0.0f && fabsf(x) < 1.175494351e-38f) ? copysignf(0.0f, x) : x;
}
inline float mma_tree(const MmaPairwise& p, const float* v, int n) {
    if (n == 1) return v[0];
    int h = n / 2;
    return mma_flush(p, mma_tree(p, v, h) + mma_tree(p, v + h, n - h));
}
// Pairwise::group_add over n <= 32 products.
inline float mma_group_add(const MmaPairwise& p, int fmt, const u16* a, const u16* b, int n, float c) {
    float emin = fmt == MMA_BF16 ? 1.175494351e-38f : 6.103515625e-05f;  // bf16/f16 only (CDNA2)
    float prods[32];
    for (int i = 0; i < n; ++i) {
        float x = fmt == MMA_BF16 ? bf16_bits_to_f32(a[i]) : f16_bits_to_f32(a[i]);
        float y = fmt == MMA_BF16 ? bf16_bits_to_f32(b[i]) : f16_bits_to_f32(b[i]);
        if (p.flush && x != 0.0f && fabsf(x) < emin) x = 0.0f;
        if (p.flush && y != 0.0f && fabsf(y) < emin) y = 0.0f;
        prods[i] = mma_flush(p, fmaf(x, y, 0.0f));
    }
    if (p.flush && c != 0.0f && fabsf(c) < 1.175494351e-38f) c = 0.0f;
    float r = mma_flush(p, c + mma_tree(p, prods, n));
    return is_nan(r) ? __uint_as_float(p.nan_bits) : r;
}

// Model::dot: blocks (or groups) in k order, each result the next C.
inline float mma_model_dot(const MmaModel& m, int fmt, const u16* a, const u16* b, int k, float c) {
    int g = m.pairwise ? m.p.group : m.f.block;
    if (g < 1) g = 1;
    for (int k0 = 0; k0 < k; k0 += g) {
        int n = k - k0 < g ? k - k0 : g;
        c = m.pairwise ? mma_group_add(m.p, fmt, a + k0, b + k0, n, c) : mma_block_fma(m.f, fmt, a + k0, b + k0, n, c);
    }
    return c;
}

// The host's instruction: gathers the wave's fragments, rebuilds A, B and
// C with the lane layout and computes this lane's D elements with `model`.
template <int SHAPE>
inline void mma_host_exec(const MmaModel& model, int fmt, const u16* a, const u16* b, const float* c, float* d) {
    typedef MmaShape<SHAPE> S;
    struct Frag {
        u16 a[S::PA], b[S::PB];
        float c[S::PD];
    };
    Frag mine, all[S::LANES];
    for (int i = 0; i < S::PA; ++i) mine.a[i] = a[i];
    for (int i = 0; i < S::PB; ++i) mine.b[i] = b[i];
    for (int i = 0; i < S::PD; ++i) mine.c[i] = c[i];
    attnlab_host_wave_gather(&mine, all, sizeof(Frag));
    u16 A[S::M][S::K], Bt[S::N][S::K];
    float C[S::M][S::N];
    for (int l = 0; l < S::LANES; ++l) {
        int r, k, col;
        for (int i = 0; i < S::PA; ++i) S::a_index(l, i, r, k), A[r][k] = all[l].a[i];
        for (int i = 0; i < S::PB; ++i) S::b_index(l, i, k, col), Bt[col][k] = all[l].b[i];
        for (int i = 0; i < S::PD; ++i) S::d_index(l, i, r, col), C[r][col] = all[l].c[i];
    }
    unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int lane = (int)(t % WAVE_SIZE);
    for (int i = 0; i < S::PD; ++i) {
        int r, col;
        S::d_index(lane, i, r, col);
        d[i] = mma_model_dot(model, fmt, A[r], Bt[col], S::K, C[r][col]);
    }
}
#endif  // ATTNLAB_HOST

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 for FMT
// MMA_BF16 or MMA_F16: a[8], b[4] storage bits and c[4], d[4] in the
// fragment order of MmaShape<MMA_M16N8K16>. On the host, `host_target`
// picks the model (0 sm_90); on a GPU it is ignored.
template <int FMT>
DEVICE void mma_m16n8k16(const u16* a, const u16* b, const float* c, float* d, int host_target) {
#if defined(ATTNLAB_HOST)
    mma_host_exec<MMA_M16N8K16>(mma_target_model(host_target, FMT), FMT, a, b, c, d);
#elif defined(ATTNLAB_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    (void)host_target;
    u32 ra[4], rb[2];
    for (int i = 0; i < 4; ++i) ra[i] = (u32)a[2 * i] | ((u32)a[2 * i + 1] << 16);
    for (int i = 0; i < 2; ++i) rb[i] = (u32)b[2 * i] | ((u32)b[2 * i + 1] << 16);
    if constexpr (FMT == MMA_BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%11,%12,%13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]), "f"(c[0]), "f"(c[1]),
              "f"(c[2]), "f"(c[3]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%11,%12,%13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]), "f"(c[0]), "f"(c[1]),
              "f"(c[2]), "f"(c[3]));
    }
#else
    // No such instruction on this target: NaNs make any use fail its diff.
    (void)a, (void)b, (void)c, (void)host_target;
    for (int i = 0; i < 4; ++i) d[i] = f32_nan();
#endif
}

// mma_m16n8k16 on packed fragments, as the instruction takes its registers:
// a[4], b[2] hold two storage elements each (fragment elements 2i, 2i+1,
// the first in the low half), c[4] / d[4] as above.
template <int FMT>
DEVICE void mma_m16n8k16_packed(const u32* a, const u32* b, const float* c, float* d, int host_target) {
#if defined(ATTNLAB_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    (void)host_target;
    if constexpr (FMT == MMA_BF16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%11,%12,%13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
              "f"(c[3]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%10,%11,%12,%13};\n"
            : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
              "f"(c[3]));
    }
#else
    u16 ua[8], ub[4];
    for (int i = 0; i < 8; ++i) ua[i] = (u16)(a[i >> 1] >> (16 * (i & 1)));
    for (int i = 0; i < 4; ++i) ub[i] = (u16)(b[i >> 1] >> (16 * (i & 1)));
    mma_m16n8k16<FMT>(ua, ub, c, d, host_target);
#endif
}

#if defined(ATTNLAB_HIP)
typedef short mfma_short4 __attribute__((ext_vector_type(4)));
typedef _Float16 mfma_half4 __attribute__((ext_vector_type(4)));
typedef float mfma_float4 __attribute__((ext_vector_type(4)));
typedef float mfma_float16 __attribute__((ext_vector_type(16)));
template <int PD> struct mfma_acc;
template <> struct mfma_acc<4> {
    typedef mfma_float4 type;
};
template <> struct mfma_acc<16> {
    typedef mfma_float16 type;
};
#endif

// v_mfma_f32_{16x16x16,32x32x8}{bf16_1k,f16} (SHAPE MFMA_16X16X16 or
// MFMA_32X32X8, FMT MMA_BF16 or MMA_F16) and, on gfx940+,
// v_mfma_f32_{16x16x32,32x32x16}_{fp8_fp8,bf8_bf8} (MFMA_16X16X32 or
// MFMA_32X32X16, FMT MMA_FP8 or MMA_BF8): a, b storage bits (PA, PB per
// lane), c/d 4 or 16 floats in the fragment order of MmaShape<SHAPE>. On the
// host, `host_target` picks the model (1 gfx90a, 2 gfx942).
template <int SHAPE, int FMT>
DEVICE void mfma(const u16* a, const u16* b, const float* c, float* d, int host_target) {
    typedef MmaShape<SHAPE> S;
#if defined(ATTNLAB_HOST)
    mma_host_exec<SHAPE>(mma_target_model(host_target, FMT), FMT, a, b, c, d);
#elif defined(ATTNLAB_HIP) && (defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__))
    (void)host_target;
    typedef typename mfma_acc<S::PD>::type acc_t;
    acc_t vc, r;
    for (int i = 0; i < S::PD; ++i) vc[i] = c[i];
    if constexpr (S::PA == 4) {
        mfma_short4 va, vb;
        for (int i = 0; i < 4; ++i) va[i] = (short)a[i], vb[i] = (short)b[i];
        if constexpr (SHAPE == MFMA_16X16X16 && FMT == MMA_BF16)
            r = __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(va, vb, vc, 0, 0, 0);
        else if constexpr (SHAPE == MFMA_16X16X16)
            r = __builtin_amdgcn_mfma_f32_16x16x16f16(__builtin_bit_cast(mfma_half4, va),
                                                      __builtin_bit_cast(mfma_half4, vb), vc, 0, 0, 0);
        else if constexpr (FMT == MMA_BF16)
            r = __builtin_amdgcn_mfma_f32_32x32x8bf16_1k(va, vb, vc, 0, 0, 0);
        else
            r = __builtin_amdgcn_mfma_f32_32x32x8f16(__builtin_bit_cast(mfma_half4, va),
                                                     __builtin_bit_cast(mfma_half4, vb), vc, 0, 0, 0);
    } else {
#if defined(__gfx940__) || defined(__gfx941__) || defined(__gfx942__)
        long va = 0, vb = 0;  // 8 fp8 bytes, k order from the low byte
        for (int i = 0; i < 8; ++i) va |= (long)(a[i] & 0xff) << (8 * i), vb |= (long)(b[i] & 0xff) << (8 * i);
        if constexpr (SHAPE == MFMA_16X16X32 && FMT == MMA_FP8)
            r = __builtin_amdgcn_mfma_f32_16x16x32_fp8_fp8(va, vb, vc, 0, 0, 0);
        else if constexpr (SHAPE == MFMA_16X16X32)
            r = __builtin_amdgcn_mfma_f32_16x16x32_bf8_bf8(va, vb, vc, 0, 0, 0);
        else if constexpr (FMT == MMA_FP8)
            r = __builtin_amdgcn_mfma_f32_32x32x16_fp8_fp8(va, vb, vc, 0, 0, 0);
        else
            r = __builtin_amdgcn_mfma_f32_32x32x16_bf8_bf8(va, vb, vc, 0, 0, 0);
#else
        for (int i = 0; i < S::PD; ++i) r[i] = f32_nan();  // CDNA2 has no fp8
#endif
    }
    for (int i = 0; i < S::PD; ++i) d[i] = r[i];
#else
    (void)a, (void)b, (void)c, (void)host_target;
    for (int i = 0; i < S::PD; ++i) d[i] = f32_nan();
#endif
}

// The two instructions on packed registers, accumulating in place (what a
// kernel keeps in its loop): each u32 holds two consecutive fragment
// elements of MmaShape's order, the lower index in the low half (as
// mma.sync and the MFMA builtins take them); c is C in and D out.
// mma_m16n8k16_acc: a[4], b[2], c[4]. mfma_16x16x16_acc: a[2], b[2], c[4].
template <int FMT> DEVICE void mma_m16n8k16_acc(const u32* a, const u32* b, float* c, int host_target) {
#if defined(ATTNLAB_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    (void)host_target;
    if constexpr (FMT == MMA_BF16) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#else
    u16 ah[8], bh[4];
    for (int i = 0; i < 4; ++i) ah[2 * i] = (u16)(a[i] & 0xffffu), ah[2 * i + 1] = (u16)(a[i] >> 16);
    for (int i = 0; i < 2; ++i) bh[2 * i] = (u16)(b[i] & 0xffffu), bh[2 * i + 1] = (u16)(b[i] >> 16);
    float d[4];
    mma_m16n8k16<FMT>(ah, bh, c, d, host_target);
    for (int i = 0; i < 4; ++i) c[i] = d[i];
#endif
}
template <int FMT> DEVICE void mfma_16x16x16_acc(const u32* a, const u32* b, float* c, int host_target) {
    u16 ah[4], bh[4];
    for (int i = 0; i < 2; ++i) ah[2 * i] = (u16)(a[i] & 0xffffu), ah[2 * i + 1] = (u16)(a[i] >> 16);
    for (int i = 0; i < 2; ++i) bh[2 * i] = (u16)(b[i] & 0xffffu), bh[2 * i + 1] = (u16)(b[i] >> 16);
    float d[4];
    mfma<MFMA_16X16X16, FMT>(ah, bh, c, d, host_target);
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}
