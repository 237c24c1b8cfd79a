//! NVIDIA's `ex2.approx.f32` on sm_90, as measured on an H100: what
//! Triton's `tl.exp2` (and `tl.exp`, a multiply by log2 e first) compiles
//! to, so what vLLM's Triton kernels compute their softmax weights with.
//! The contract's kernels use [`exp2c`] instead (numerics.md); this model
//! lets a replay ask what vLLM's own kernel computed on that GPU.
//!
//! What the exhaustive probe (`gpu/probes/ex2_approx.cu`, every f32 in
//! [-150, 0], 1,125,515,265 inputs) established on the H100:
//! - the unit reads x as a fixed-point number with 23 fraction bits,
//!   truncated toward zero: `ex2(x) == ex2(q(x))` for every input, where
//!   `q` drops the bits below 2^-23 (rounding to nearest, or keeping fewer
//!   bits, fails for tens of millions of inputs);
//! - with `n = trunc(x)` and `f = x - n` in (-1, 0] (both exact),
//!   `ex2(x) == ldexp(ex2(f), n)`, rounded once into the subnormals.
//!
//! So the 2^23 values `T[j] = ex2(-j * 2^-23)`, `j < 2^23`, are the whole
//! function on [-126, 0]. Below -126 (results in the subnormals) the same
//! rule fails for 100,385 of 1,703,936 inputs, because that is not what the
//! GPU runs there: ptxas compiles `ex2.approx.f32` to `FSETP.GEU P0, x,
//! -126; @!P0 FMUL x, x, 0.5; MUFU.EX2 r, x; @!P0 FMUL r, r, r` (read from
//! the SASS), i.e. `2^x = (2^(x/2))^2` with one rounding of the square into
//! the subnormals. The model does the same; the probe's whole histogram
//! against `exp2c` over [-150, 0] is its check
//! (`model_reproduces_the_h100_probe_over_every_input`).
//! The table ships as each entry's distance in ulps
//! from `exp2c` at the same point (`fixtures/nvidia/sm90_ex2_approx.i8.gz`:
//! one signed byte per `j`, gzip), which is small because the two agree on
//! most inputs.
//!
//! Positive and NaN inputs were not measured: `eval` returns `None` for
//! them. Below -150 it follows the SASS (0 from the square, and `MUFU.EX2`
//! flushes its own subnormal results, so from x < -252 on, before it).

use super::exp2c;
use std::io::Read;
use std::sync::OnceLock;

/// Entries of the table: one per 23-bit fraction.
pub const ENTRIES: usize = 1 << 23;

/// The measured correction stream, embedded: `ENTRIES` signed bytes,
/// `bits(ex2.approx(-j * 2^-23)) - bits(exp2c(-j * 2^-23))`, gzip.
const CORRECTIONS_GZ: &[u8] = include_bytes!("../../../fixtures/nvidia/sm90_ex2_approx.i8.gz");

/// The table `T[j] = ex2.approx.f32(-j * 2^-23)` of an sm_90 GPU.
pub struct Ex2Approx {
    table: Vec<f32>,
}

/// Why a correction stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Ex2TableError {
    #[error("ex2.approx table: not a gzip stream ({0})")]
    Gzip(std::io::Error),
    #[error("ex2.approx table: {got} corrections, expected {expected} (one per 23-bit fraction)")]
    Length { got: usize, expected: usize },
}

impl Ex2Approx {
    /// The H100's table, decoded once per process.
    pub fn sm90() -> &'static Ex2Approx {
        static TABLE: OnceLock<Ex2Approx> = OnceLock::new();
        TABLE.get_or_init(|| {
            Ex2Approx::from_corrections_gz(CORRECTIONS_GZ)
                .expect("the embedded sm_90 ex2.approx table is well formed (a test decodes it)")
        })
    }

    /// Builds the table from a gzip stream of `ENTRIES` signed bytes, each
    /// the ulp distance of `T[j]` from `exp2c(-j * 2^-23)`.
    pub fn from_corrections_gz(gz: &[u8]) -> Result<Self, Ex2TableError> {
        let mut raw = Vec::with_capacity(ENTRIES);
        flate2::read::GzDecoder::new(gz)
            .take(ENTRIES as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(Ex2TableError::Gzip)?;
        if raw.len() != ENTRIES {
            return Err(Ex2TableError::Length {
                got: raw.len(),
                expected: ENTRIES,
            });
        }
        let table = raw
            .iter()
            .enumerate()
            .map(|(j, &d)| {
                let base = exp2c(fraction(j)).to_bits() as i64;
                f32::from_bits((base + d as i8 as i64) as u32)
            })
            .collect();
        Ok(Ex2Approx { table })
    }

    /// `T[j]`.
    pub fn entry(&self, j: usize) -> f32 {
        self.table[j]
    }

    /// `ex2.approx.f32(x)` for x <= 0 (measured on [-150, 0]); `None` for
    /// positive or NaN x, which nothing measured.
    pub fn eval(&self, x: f32) -> Option<f32> {
        if x.is_nan() || x > 0.0 {
            return None;
        }
        if x >= -126.0 {
            return Some(self.unit(x));
        }
        // The subnormal path: halve (exact), the unit, square (one rounding).
        let h = x * 0.5;
        let r = if h >= -126.0 { self.unit(h) } else { 0.0 };
        Some(r * r)
    }

    /// `MUFU.EX2` on [-126, 0]: `ldexp(T[j], n)`, n = trunc(x), j the
    /// fraction's 23 bits truncated; always a normal number (exact).
    fn unit(&self, x: f32) -> f32 {
        let n = x.trunc();
        let f = x - n; // exact, in (-1, 0]
        let j = (-f * ENTRIES as f32) as usize; // exact scaling, then the unit's truncation
        self.table[j.min(ENTRIES - 1)] * pow2(n as i32)
    }
}

/// 2^n for n in [-126, 0], from its exponent bits.
fn pow2(n: i32) -> f32 {
    f32::from_bits(((n + 127) as u32) << 23)
}

/// sm_90's `ex2.approx.f32(x)` for a softmax weight (what a Triton kernel
/// computes on an H100; for replays of vLLM's captures). It covers x <= 0,
/// every argument a softmax forms (`s - m` with m the running max); a
/// positive or NaN x, which the model does not cover, gets `exp2c`'s value.
#[inline]
pub fn ex2_approx_sm90(x: f32) -> f32 {
    Ex2Approx::sm90().eval(x).unwrap_or_else(|| exp2c(x))
}

/// `-j * 2^-23` (exact).
fn fraction(j: usize) -> f32 {
    -(j as f32) / ENTRIES as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numerics::DType;
    use rayon::prelude::*;

    #[test]
    fn the_embedded_table_decodes_to_a_falling_curve_within_two_ulps_of_exp2c() {
        let t = Ex2Approx::sm90();
        assert_eq!(t.entry(0), 1.0);
        let mut prev = f32::INFINITY;
        for j in (0..ENTRIES).step_by(97) {
            let e = t.entry(j);
            assert!(e <= prev && e > 0.5, "T[{j}] = {e}");
            let d = (e.to_bits() as i64 - exp2c(fraction(j)).to_bits() as i64).abs();
            assert!(d <= 2, "T[{j}] is {d} ulps from exp2c");
            prev = e;
        }
    }

    #[test]
    fn a_stream_of_the_wrong_length_or_not_gzip_is_refused_naming_it() {
        let e = Ex2Approx::from_corrections_gz(b"plain bytes")
            .err()
            .unwrap();
        assert!(e.to_string().contains("gzip"), "{e}");
        let mut gz = Vec::new();
        {
            use std::io::Write;
            let mut w = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
            w.write_all(&[0u8; 1000]).unwrap();
        }
        let e = Ex2Approx::from_corrections_gz(&gz).err().unwrap();
        assert!(e.to_string().contains("1000 corrections"), "{e}");
    }

    /// Values the H100 returned in the probe (gpu/probes/ex2_approx.cu).
    #[test]
    fn model_returns_what_the_h100_returned_at_the_probes_named_inputs() {
        let t = Ex2Approx::sm90();
        // the first input whose f16 rounding differs from exp2c's
        let x = f32::from_bits(0xb9b8_b000);
        assert_eq!(x, -0.000_352_263_45);
        assert_eq!(t.eval(x).unwrap().to_bits(), 0x3f7f_efff);
        assert_eq!(exp2c(x).to_bits(), 0x3f7f_f000);
        assert_eq!(t.eval(0.0), Some(1.0));
        assert_eq!(t.eval(-0.0), Some(1.0));
        assert_eq!(t.eval(f32::NEG_INFINITY), Some(0.0));
        assert_eq!(t.eval(1.0), None);
        assert_eq!(t.eval(f32::NAN), None);
    }

    /// The probe's tally over every f32 in [-150, 0] on the H100 (session
    /// 7): the distance of ex2.approx.f32 from exp2c in ulps, how often it
    /// is above, and how often the bf16 / f16 roundings differ. The model
    /// must give the same counts. About 1.1 G evaluations: `--ignored`.
    #[test]
    #[ignore = "1.1 G inputs; run with --release -- --ignored"]
    fn model_reproduces_the_h100_probe_over_every_input() {
        let t = Ex2Approx::sm90();
        let n: u32 = 0x4316_0000 + 1;
        let tally = (0..n)
            .into_par_iter()
            .fold(
                || [0u64; 8],
                |mut a, i| {
                    let x = f32::from_bits(0x8000_0000 + i);
                    let got = t.eval(x).unwrap();
                    let want = exp2c(x);
                    let (g, w) = (got.to_bits(), want.to_bits());
                    let d = g.abs_diff(w);
                    a[(d.min(3)) as usize] += 1; // 0, 1, 2, 3+
                    a[4] += (g > w) as u64;
                    a[5] += (DType::Bf16.round(got) != DType::Bf16.round(want)) as u64;
                    a[6] += (DType::F16.round(got) != DType::F16.round(want)) as u64;
                    let ldexp = (t.unit(x - x.trunc()) as f64 * 2f64.powi(x.trunc() as i32)) as f32;
                    a[7] += (x < -126.0 && ldexp.to_bits() != g) as u64;
                    a
                },
            )
            .reduce(|| [0u64; 8], |a, b| std::array::from_fn(|k| a[k] + b[k]));
        assert_eq!(
            tally,
            [
                1_004_322_308,
                120_186_536,
                1_006_420,
                1,
                30_794_168,
                1017,
                8410,
                100_385
            ],
            "[ulp 0, 1, 2, 3+, above, bf16 differs, f16 differs, subnormal path != ldexp]"
        );
    }
}
