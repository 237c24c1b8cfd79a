// mma_probe.hip: one matrix instruction per wave and tile, for the
// instruction-level diff (`attnlab diff --backend mma`): every element of D
// must equal sim/src/numerics/mma.rs's model of the target bit for bit.
// Tiles are independent instructions: A is n x M x K, B n x K x N (both
// row-major storage bits of MMA_FORMAT, an MMA_* format code), C and D n x M x N f32. Each wave
// loads its fragments with the instruction's lane layout (portable.h
// MmaShape), runs the instruction once and stores D with the same layout,
// so a wrong layout shows as a mismatch too. Waves stride over the tiles;
// all lanes of a wave share the tile, so the instruction is convergent.
// `host_target` picks the model on the host device (0 sm_90, 1 gfx90a,
// 2 gfx942); a GPU runs its own instruction and ignores it.

template <int SHAPE>
DEVICE void mma_probe_body(const u16* __restrict__ A, const u16* __restrict__ B, const float* __restrict__ C,
                           float* __restrict__ D, i64 n, i32 host_target) {
    typedef MmaShape<SHAPE> S;
    const int lane = (int)(threadIdx.x % S::LANES);
    const i64 wave = ((i64)blockIdx.x * blockDim.x + threadIdx.x) / S::LANES;
    const i64 waves = (i64)gridDim.x * blockDim.x / S::LANES;
    for (i64 t = wave; t < n; t += waves) {
        const u16* a_t = A + t * S::M * S::K;
        const u16* b_t = B + t * S::K * S::N;
        const float* c_t = C + t * S::M * S::N;
        float* d_t = D + t * S::M * S::N;
        u16 a[S::PA], b[S::PB];
        float c[S::PD], d[S::PD];
        int r, k, col;
        for (int i = 0; i < S::PA; ++i) S::a_index(lane, i, r, k), a[i] = a_t[r * S::K + k];
        for (int i = 0; i < S::PB; ++i) S::b_index(lane, i, k, col), b[i] = b_t[k * S::N + col];
        for (int i = 0; i < S::PD; ++i) S::d_index(lane, i, r, col), c[i] = c_t[r * S::N + col];
        // the forms that exist: m16n8k16 and the K=16/K=8 MFMAs take bf16
        // or f16, the K=32/K=16 MFMAs fp8 or bf8
        constexpr bool fp8 = MMA_FORMAT == MMA_FP8 || MMA_FORMAT == MMA_BF8;
        constexpr bool exists = SHAPE == MMA_M16N8K16 ? !fp8 : (fp8 == (S::PA == 8));
        if constexpr (WAVE_SIZE != S::LANES || !exists) {
            // no such instruction, or it needs waves of S::LANES lanes
            (void)host_target;
            for (int i = 0; i < S::PD; ++i) d[i] = f32_nan();
        } else if constexpr (SHAPE == MMA_M16N8K16) {
            mma_m16n8k16<MMA_FORMAT>(a, b, c, d, host_target);
        } else {
            mfma<SHAPE, MMA_FORMAT>(a, b, c, d, host_target);
        }
        for (int i = 0; i < S::PD; ++i) S::d_index(lane, i, r, col), d_t[r * S::N + col] = d[i];
    }
}

extern "C" __global__ void mma_m16n8k16_probe(const u16* __restrict__ A, const u16* __restrict__ B,
                                              const float* __restrict__ C, float* __restrict__ D, i64 n,
                                              i32 host_target) {
    mma_probe_body<MMA_M16N8K16>(A, B, C, D, n, host_target);
}

extern "C" __global__ void mfma_16x16x16_probe(const u16* __restrict__ A, const u16* __restrict__ B,
                                               const float* __restrict__ C, float* __restrict__ D, i64 n,
                                               i32 host_target) {
    mma_probe_body<MFMA_16X16X16>(A, B, C, D, n, host_target);
}

extern "C" __global__ void mfma_32x32x8_probe(const u16* __restrict__ A, const u16* __restrict__ B,
                                              const float* __restrict__ C, float* __restrict__ D, i64 n,
                                              i32 host_target) {
    mma_probe_body<MFMA_32X32X8>(A, B, C, D, n, host_target);
}

extern "C" __global__ void mfma_16x16x32_probe(const u16* __restrict__ A, const u16* __restrict__ B,
                                               const float* __restrict__ C, float* __restrict__ D, i64 n,
                                               i32 host_target) {
    mma_probe_body<MFMA_16X16X32>(A, B, C, D, n, host_target);
}

extern "C" __global__ void mfma_32x32x16_probe(const u16* __restrict__ A, const u16* __restrict__ B,
                                               const float* __restrict__ C, float* __restrict__ D, i64 n,
                                               i32 host_target) {
    mma_probe_body<MFMA_32X32X16>(A, B, C, D, n, host_target);
}
