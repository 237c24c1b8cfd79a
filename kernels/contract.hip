// contract.hip: the arithmetic contract itself (numerics.rs) as elementwise
// kernels, so `attnlab diff` checks exp2c / log2c / tanhc and every storage
// rounding on the device before any attention kernel depends on them.
// One thread per element; no reductions, so nothing here is order-dependent.

// op: 0 exp2c, 1 log2c, 2 tanhc, 3 expc; 4, 5, 6: softcap_with(SOFTCAP_VLLM_TWO_EXP,
// SOFTCAP_VLLM_ONE_EXP, SOFTCAP_AITER_TWO_EXP2) of the score x with cap 1.
extern "C" __global__ void contract_unary(const float* __restrict__ x, float* __restrict__ y, i64 n, i32 op) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    float r;
    switch (op) {
        case 0: r = exp2c(v); break;
        case 1: r = log2c(v); break;
        case 2: r = tanhc(v); break;
        case 3: r = expc(v); break;
        default: r = softcap_with(op - 3, v, v * LOG2E, 1.0f); break;
    }
    y[i] = r;
}

// Store to ROUND_DTYPE (a -D constant) and load back: DType::round.
extern "C" __global__ void contract_round(const float* __restrict__ x, float* __restrict__ y, i64 n) {
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    y[i] = round_to<ROUND_DTYPE>(x[i]);
}
