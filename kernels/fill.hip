// fill.hip: device-side pseudo-random fill for `attnlab bench --gpu`, so the
// multi-GB KV caches of the decode grid never cross PCIe. Values are
// uniform-ish in [-1, 1) from an integer hash of (seed, index), stored in
// DTYPE. Not part of any diff: only timing depends on it.

typedef Storage<DTYPE> Elem;

extern "C" __global__ void fill_hash(typename Elem::T* __restrict__ out, i64 n, u32 seed) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        u32 h = (u32)i * 0x9e3779b1u ^ seed;
        h ^= h >> 16;
        h *= 0x85ebca6bu;
        h ^= h >> 13;
        h *= 0xc2b2ae35u;
        h ^= h >> 16;
        out[i] = Elem::store((float)(h >> 8) * 1.192092896e-07f - 1.0f);  // (h >> 8) / 2^23 - 1
    }
}
