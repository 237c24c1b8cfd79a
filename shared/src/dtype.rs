//! Element types. Arithmetic is always f32 (numerics.md §1); f16, bf16 and the
//! two fp8 e4m3 flavours are storage formats: a load widens exactly, a store
//! rounds to nearest-even (fp8 also saturates to its largest finite value).
//!
//! Everywhere in attnlab a stored tensor is held as `f32` values that are
//! exactly representable in its storage dtype ("quantized f32"), so the
//! emulator can do f32 arithmetic directly while the bit patterns stay those
//! of the real format (`to_bits` / `from_bits` give them for GPU diffs).

use crate::error::{Error, Result};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    F16,
    Bf16,
    /// fp8 e4m3 "fnuz" (bias 8, max 240, one NaN 0x80, no -0): MI300 (gfx94x).
    Fp8E4m3Fnuz,
    /// OCP fp8 e4m3 "fn" (bias 7, max 448, NaN 0x7f/0xff): gfx950, NVIDIA.
    Fp8E4m3Fn,
}

pub const ALL_DTYPES: [DType; 5] = [
    DType::F32,
    DType::F16,
    DType::Bf16,
    DType::Fp8E4m3Fnuz,
    DType::Fp8E4m3Fn,
];

impl DType {
    /// Names as torch/vLLM print them (`float16`, `bfloat16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::Bf16 => "bfloat16",
            DType::Fp8E4m3Fnuz => "float8_e4m3fnuz",
            DType::Fp8E4m3Fn => "float8_e4m3fn",
        }
    }

    /// Accepts torch names and the short forms vLLM's CLI uses.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "float32" | "f32" | "fp32" | "float" => DType::F32,
            "float16" | "f16" | "fp16" | "half" => DType::F16,
            "bfloat16" | "bf16" => DType::Bf16,
            "float8_e4m3fnuz" | "fp8_e4m3fnuz" | "e4m3fnuz" => DType::Fp8E4m3Fnuz,
            "float8_e4m3fn" | "fp8_e4m3fn" | "e4m3fn" => DType::Fp8E4m3Fn,
            _ => {
                return Err(Error::invalid(
                    "dtype",
                    format!("'{s}'"),
                    "allowed: float32, float16, bfloat16, float8_e4m3fnuz, float8_e4m3fn",
                ))
            }
        })
    }

    /// A storage dtype named either way vLLM names one: a torch dtype
    /// ([`DType::parse`]) or a `--kv-cache-dtype` value other than `auto`
    /// (`fp8`, `fp8_e4m3`: the fp8 of `arch`, see [`KvCacheDtype::storage`]).
    pub fn parse_storage(s: &str, arch: &str) -> Result<Self> {
        match (DType::parse(s), KvCacheDtype::parse(s)) {
            (Ok(d), _) => Ok(d),
            (Err(_), Ok(k)) if k != KvCacheDtype::Auto => k.storage(DType::Bf16, arch),
            _ => Err(Error::invalid(
                "dtype",
                format!("'{s}'"),
                "allowed: float32, float16, bfloat16, float8_e4m3fnuz, float8_e4m3fn (aliases: float, half, bf16, ...), \
                 or a --kv-cache-dtype: fp8, fp8_e4m3 (the GPU's fp8: fnuz on gfx94x), float16, bfloat16",
            )),
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::Fp8E4m3Fnuz | DType::Fp8E4m3Fn => 1,
        }
    }

    pub fn is_fp8(self) -> bool {
        matches!(self, DType::Fp8E4m3Fnuz | DType::Fp8E4m3Fn)
    }

    /// `x` stored in this dtype and loaded back: the one rounding point.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            DType::F32 => x,
            DType::F16 => f16::from_f32(x).to_f32(),
            DType::Bf16 => bf16::from_f32(x).to_f32(),
            DType::Fp8E4m3Fnuz => FP8_FNUZ.decode(FP8_FNUZ.encode(x)),
            DType::Fp8E4m3Fn => FP8_FN.decode(FP8_FN.encode(x)),
        }
    }

    /// Rounds a whole slice in place.
    pub fn round_slice(self, xs: &mut [f32]) {
        if self != DType::F32 {
            xs.iter_mut().for_each(|x| *x = self.round(*x));
        }
    }

    /// The storage bit pattern of `x` (rounded first), zero-extended to u32.
    pub fn to_bits(self, x: f32) -> u32 {
        match self {
            DType::F32 => x.to_bits(),
            DType::F16 => f16::from_f32(x).to_bits() as u32,
            DType::Bf16 => bf16::from_f32(x).to_bits() as u32,
            DType::Fp8E4m3Fnuz => FP8_FNUZ.encode(x) as u32,
            DType::Fp8E4m3Fn => FP8_FN.encode(x) as u32,
        }
    }

    /// Widens a storage bit pattern (low bits of `bits`) to f32, exactly.
    pub fn from_bits(self, bits: u32) -> f32 {
        match self {
            DType::F32 => f32::from_bits(bits),
            DType::F16 => f16::from_bits(bits as u16).to_f32(),
            DType::Bf16 => bf16::from_bits(bits as u16).to_f32(),
            DType::Fp8E4m3Fnuz => FP8_FNUZ.decode(bits as u8),
            DType::Fp8E4m3Fn => FP8_FN.decode(bits as u8),
        }
    }

    /// Largest finite value (fp8 saturation bound; vLLM's per-token-head QMAX).
    pub fn max_finite(self) -> f32 {
        match self {
            DType::F32 => f32::MAX,
            DType::F16 => f16::MAX.to_f32(),
            DType::Bf16 => bf16::MAX.to_f32(),
            DType::Fp8E4m3Fnuz => 240.0,
            DType::Fp8E4m3Fn => 448.0,
        }
    }

    /// Elements per 16-byte vector: vLLM's `x` in the x-packed and shuffled layouts.
    pub fn x_pack(self) -> usize {
        16 / self.size_bytes()
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The two 8-bit e4m3 formats differ only in bias and in which codes are NaN.
pub struct Fp8Format {
    bias: i32,
    /// fnuz: 0x80 is the only NaN and there is no negative zero.
    fnuz: bool,
}

pub const FP8_FNUZ: Fp8Format = Fp8Format {
    bias: 8,
    fnuz: true,
};
pub const FP8_FN: Fp8Format = Fp8Format {
    bias: 7,
    fnuz: false,
};

impl Fp8Format {
    /// Largest finite magnitude code (7 bits).
    fn max_code(&self) -> u8 {
        if self.fnuz {
            0x7f
        } else {
            0x7e
        }
    }

    /// Magnitude of a 7-bit code.
    fn magnitude(&self, code: u8) -> f32 {
        let e = ((code >> 3) & 0xf) as i32;
        let m = (code & 7) as f32;
        if e == 0 {
            m / 8.0 * 2f32.powi(1 - self.bias)
        } else {
            (1.0 + m / 8.0) * 2f32.powi(e - self.bias)
        }
    }

    pub fn decode(&self, b: u8) -> f32 {
        if self.fnuz {
            if b == 0x80 {
                return f32::NAN;
            }
        } else if b & 0x7f == 0x7f {
            return f32::NAN;
        }
        let v = self.magnitude(b & 0x7f);
        if b & 0x80 != 0 {
            -v
        } else {
            v
        }
    }

    /// Round to nearest, ties to even code, saturating to the largest finite
    /// value (HIP's `__HIP_SATFINITE`, which vLLM's ROCm writers use).
    pub fn encode(&self, x: f32) -> u8 {
        if x.is_nan() {
            return if self.fnuz { 0x80 } else { 0x7f };
        }
        let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
        let a = x.abs();
        let max_code = self.max_code();
        // Codes of one sign are monotone in magnitude: binary search the
        // largest code whose magnitude is <= a.
        let (mut lo, mut hi) = (0u8, max_code);
        if a >= self.magnitude(max_code) {
            lo = max_code;
        } else {
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.magnitude(mid) <= a {
                    lo = mid
                } else {
                    hi = mid
                }
            }
        }
        let code = if lo == max_code {
            max_code
        } else {
            let (below, above) = (self.magnitude(lo), self.magnitude(lo + 1));
            let (db, da) = (a - below, above - a);
            if db < da || (db == da && lo % 2 == 0) {
                lo
            } else {
                lo + 1
            }
        };
        if code == 0 && self.fnuz {
            0 // fnuz has no negative zero
        } else {
            code | sign
        }
    }
}

/// `--kv-cache-dtype` as vLLM accepts it on ROCm: `auto` stores K/V in the
/// model dtype, `fp8`/`fp8_e4m3` store the platform's fp8 with per-tensor scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KvCacheDtype {
    Auto,
    Float16,
    Bfloat16,
    Fp8,
    Fp8E4m3,
    Fp8E5m2,
}

impl KvCacheDtype {
    pub const NAMES: [&'static str; 6] =
        ["auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"];

    /// vLLM's `--kv-cache-dtype` names, in any case.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => KvCacheDtype::Auto,
            "float16" => KvCacheDtype::Float16,
            "bfloat16" => KvCacheDtype::Bfloat16,
            "fp8" => KvCacheDtype::Fp8,
            "fp8_e4m3" => KvCacheDtype::Fp8E4m3,
            "fp8_e5m2" => KvCacheDtype::Fp8E5m2,
            _ => {
                return Err(Error::invalid(
                    "kv_cache_dtype",
                    format!("'{s}'"),
                    format!("allowed: {}", Self::NAMES.join(", ")),
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    pub fn is_fp8(self) -> bool {
        matches!(
            self,
            KvCacheDtype::Fp8 | KvCacheDtype::Fp8E4m3 | KvCacheDtype::Fp8E5m2
        )
    }

    /// The storage dtype of the cache for a model dtype on a GPU arch:
    /// fp8 means e4m3fnuz on gfx94x (`is_fp8_fnuz`) and e4m3fn elsewhere.
    /// fp8_e5m2 is rejected as vLLM's ROCm writers reject it.
    pub fn storage(self, model: DType, arch: &str) -> Result<DType> {
        Ok(match self {
            KvCacheDtype::Auto => model,
            KvCacheDtype::Float16 => DType::F16,
            KvCacheDtype::Bfloat16 => DType::Bf16,
            KvCacheDtype::Fp8 | KvCacheDtype::Fp8E4m3 => {
                if arch.contains("gfx94") { DType::Fp8E4m3Fnuz } else { DType::Fp8E4m3Fn }
            }
            KvCacheDtype::Fp8E5m2 => {
                return Err(Error::unsupported(
                    "kv_cache_dtype fp8_e5m2",
                    "Unsupported data type of kv cache: fp8_e5m2 (ROCm writers dispatch only auto and fp8/fp8_e4m3)",
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storage_dtype_is_named_as_torch_or_as_kv_cache_dtype_in_any_case() {
        let p = |s: &str, arch: &str| DType::parse_storage(s, arch).unwrap();
        assert_eq!(p("fp8", "gfx942"), DType::Fp8E4m3Fnuz);
        assert_eq!(p("FP8_E4M3", "gfx950"), DType::Fp8E4m3Fn);
        assert_eq!(p("float8_e4m3fnuz", "gfx950"), DType::Fp8E4m3Fnuz);
        assert_eq!(p("Half", "gfx942"), DType::F16);
        assert_eq!(p("bfloat16", "gfx942"), DType::Bf16);
        for bad in ["auto", "fp8_e5m2", "int4", ""] {
            assert!(DType::parse_storage(bad, "gfx942").is_err(), "{bad}");
        }
        assert_eq!(KvCacheDtype::parse("FP8").unwrap(), KvCacheDtype::Fp8);
    }

    #[test]
    fn fp8_formats_have_their_documented_extremes() {
        assert_eq!(FP8_FNUZ.decode(0x7f), 240.0);
        assert_eq!(FP8_FN.decode(0x7e), 448.0);
        assert!(FP8_FN.decode(0x7f).is_nan());
        assert!(FP8_FNUZ.decode(0x80).is_nan());
        assert_eq!(FP8_FNUZ.decode(0x01), 2f32.powi(-10)); // smallest subnormal, bias 8
        assert_eq!(FP8_FN.decode(0x01), 2f32.powi(-9));
    }

    #[test]
    fn fp8_encode_saturates_and_rounds_ties_to_even() {
        assert_eq!(FP8_FN.decode(FP8_FN.encode(1e9)), 448.0);
        assert_eq!(FP8_FNUZ.decode(FP8_FNUZ.encode(-1e9)), -240.0);
        assert_eq!(FP8_FN.decode(FP8_FN.encode(f32::INFINITY)), 448.0);
        // 1.0625 is halfway between 1.0 (m=0, even) and 1.125 (m=1): goes to 1.0.
        assert_eq!(FP8_FN.decode(FP8_FN.encode(1.0625)), 1.0);
        // 1.1875 is halfway between 1.125 (m=1) and 1.25 (m=2, even).
        assert_eq!(FP8_FN.decode(FP8_FN.encode(1.1875)), 1.25);
        assert_eq!(FP8_FNUZ.encode(-0.0), 0);
    }

    #[test]
    fn fp8_every_code_round_trips() {
        for f in [&FP8_FN, &FP8_FNUZ] {
            for b in 0..=255u8 {
                let v = f.decode(b);
                if v.is_nan() || (f.fnuz && b == 0x80) {
                    continue;
                }
                let back = f.encode(v);
                assert_eq!(f.decode(back), v, "code {b:#x}");
            }
        }
    }

    #[test]
    fn half_rounding_matches_half_crate() {
        assert_eq!(DType::F16.round(1.0 + 1.0 / 4096.0), 1.0);
        assert_eq!(DType::Bf16.to_bits(1.0), 0x3f80);
        assert_eq!(DType::F16.from_bits(0x3c00), 1.0);
    }

    #[test]
    fn parse_rejects_unknown_dtype_naming_allowed_ones() {
        let e = DType::parse("int3").unwrap_err().to_string();
        assert!(e.contains("'int3'") && e.contains("bfloat16"), "{e}");
    }
}
