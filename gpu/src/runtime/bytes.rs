//! Host values as the bytes a device buffer holds, and device bytes back as
//! storage bit patterns: what every launcher copies in and out.

use attnlab_shared::dtype::DType;

/// Reinterprets device output bytes as storage bit patterns of `dtype`.
pub fn bits_from_bytes(bytes: &[u8], dtype: DType) -> Vec<u32> {
    match dtype.size_bytes() {
        4 => bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        2 => bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)
            .collect(),
        _ => bytes.iter().map(|&b| b as u32).collect(),
    }
}

/// Storage bytes of f32 values that are exact in `dtype` (quantized f32).
pub fn bytes_of(values: &[f32], dtype: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size_bytes());
    for &v in values {
        let b = dtype.to_bits(v);
        out.extend_from_slice(&b.to_le_bytes()[..dtype.size_bytes()]);
    }
    out
}

pub fn bytes_of_i64(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn bytes_of_i32(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
