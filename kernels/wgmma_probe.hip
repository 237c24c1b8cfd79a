// wgmma_probe.hip: Hopper's warpgroup matrix instruction
// `wgmma.mma_async.sync.aligned.m64n8k16.f32.{bf16,f16}.{bf16,f16}`, one
// instruction per tile, for the instruction-level diff (`attnlab diff
// --backend mma`, the `wgmma.m64n8k16.*@sm_90` parts): every element of D
// must equal sim/src/numerics/mma.rs's sm_90 model bit for bit, the model
// that mma.sync.m16n8k16 was proven against.
//
// Tiles as in mma_probe.hip: A n x 64 x 16, B n x 16 x 8 (row-major storage
// bits of MMA_FORMAT, MMA_BF16 or MMA_F16), C and D n x 64 x 8 f32. One
// block of 128 threads (one warpgroup) per tile, blocks stride over tiles.
// - A is in registers, in the wgmma layout: warp w holds rows 16w..16w+15
//   in mma.m16n8k16's A fragment layout (Shape::M64N8K16::a_index).
// - B is staged in shared memory in the canonical no-swizzle K-major
//   layout: for each 8-key half of K one 8x8 "core matrix" of 128 bytes,
//   column n's 8 keys in 16 contiguous bytes, so B[k][n] lies at byte
//   (k / 8) * 128 + n * 16 + (k % 8) * 2. The matrix descriptor gives the
//   start address and both core-matrix strides (leading, along K; stride,
//   along N) as 128 bytes; swizzle mode 0.
// - C enters as D's initial value (scale-d = 1), in the D layout: warp w
//   holds rows 16w..16w+15 in mma.m16n8k16's D layout.
// The instruction needs the arch-specific target (sm_90a): the family is
// compiled with ATTNLAB_SM_ARCH_SPECIFIC (gpu/src/runtime/cuda.rs). On the
// host device each thread evaluates the sm_90 model for its four elements
// of D, reading B through the same core-matrix layout; other GPUs have no
// such instruction and return NaN, which fails any diff.

// Byte offset -> u16 index of B[k][n] in the staged core matrices.
DEVICE int wgmma_b_slot(int k, int n) { return (k / 8) * 64 + n * 8 + (k % 8); }

extern "C" __global__ void __launch_bounds__(128)
    wgmma_m64n8k16_probe(const u16* __restrict__ A, const u16* __restrict__ B, const float* __restrict__ C,
                         float* __restrict__ D, i64 n, i32 host_target) {
    typedef MmaShape<MMA_M16N8K16> S;  // the per-warp layouts
    enum { WM = 64, WN = 8, WK = 16 };
    __shared__ u16 sB[WK * WN] __attribute__((aligned(128)));
    const int tid = (int)threadIdx.x;  // 0..127: the warpgroup
    const int warp = tid / 32, lane = tid % 32;
    for (i64 t = blockIdx.x; t < n; t += gridDim.x) {
        const u16* a_t = A + t * WM * WK;
        const u16* b_t = B + t * WK * WN;
        const float* c_t = C + t * WM * WN;
        float* d_t = D + t * WM * WN;
        u16 a[8];
        float d[4];
        int r, k, col;
        for (int i = 0; i < 8; ++i) S::a_index(lane, i, r, k), a[i] = a_t[(16 * warp + r) * WK + k];
        for (int i = 0; i < 4; ++i) S::d_index(lane, i, r, col), d[i] = c_t[(16 * warp + r) * WN + col];
        {
            const int kk = tid % WK, nn = tid / WK;  // Shape::M64N8K16::b_index
            sB[wgmma_b_slot(kk, nn)] = b_t[kk * WN + nn];
        }
#if defined(ATTNLAB_CUDA) && defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
        (void)host_target;
        // the generic-proxy stores must be visible to the async proxy
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        u32 addr;
        asm volatile("{\n.reg .u64 g;\ncvta.to.shared.u64 g, %1;\ncvt.u32.u64 %0, g;\n}\n"
                     : "=r"(addr)
                     : "l"(sB));
        // bits 0-13 start >> 4, 16-29 leading offset >> 4, 32-45 stride
        // offset >> 4, 62-63 swizzle (0: none)
        const u64 desc = (u64)((addr & 0x3ffffu) >> 4) | ((u64)(128 >> 4) << 16) | ((u64)(128 >> 4) << 32);
        u32 ra[4];
        for (int i = 0; i < 4; ++i) ra[i] = (u32)a[2 * i] | ((u32)a[2 * i + 1] << 16);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
        if constexpr (MMA_FORMAT == MMA_BF16) {
            asm volatile(
                "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
                "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, 0;\n"
                "}\n"
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "l"(desc), "r"(1)
                : "memory");
        } else {
            asm volatile(
                "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
                "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, 0;\n"
                "}\n"
                : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "l"(desc), "r"(1)
                : "memory");
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#elif defined(ATTNLAB_HOST)
        __syncthreads();
        {
            const MmaModel model = mma_target_model(host_target, MMA_FORMAT);
            u16 bcol[WK];
            for (int i = 0; i < 4; ++i) {
                S::d_index(lane, i, r, col);
                for (int kk = 0; kk < WK; ++kk) bcol[kk] = sB[wgmma_b_slot(kk, col)];
                d[i] = mma_model_dot(model, MMA_FORMAT, a_t + (16 * warp + r) * WK, bcol, WK, d[i]);
            }
        }
        (void)a;
#else
        // no such instruction on this target: NaNs make any use fail its diff
        __syncthreads();
        (void)a, (void)host_target;
        for (int i = 0; i < 4; ++i) d[i] = f32_nan();
#endif
        for (int i = 0; i < 4; ++i) S::d_index(lane, i, r, col), d_t[(16 * warp + r) * WN + col] = d[i];
        __syncthreads();  // sB is rewritten by the next tile
    }
}
