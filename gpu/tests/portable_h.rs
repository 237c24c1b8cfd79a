//! portable.h holds the GPU copy of the contract's constants; these tests
//! parse it and require the very same f32 numbers as sim/src/numerics.rs,
//! so the two sides cannot drift apart.

use attnlab_gpu::kernels::PORTABLE_H;
use attnlab_sim::numerics::{EXP2C_COEFFS, EXP2C_MIN_X, LN2, LOG2C_COEFFS, LOG2E};

/// The value of `#define NAME <float>f` in portable.h.
fn define(name: &str) -> f32 {
    let line = PORTABLE_H
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["#define", name]))
        .unwrap_or_else(|| panic!("portable.h has no #define {name}"));
    let text = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("#define {name} has no value"));
    text.trim_end_matches('f')
        .parse()
        .unwrap_or_else(|e| panic!("#define {name} {text}: {e}"))
}

#[test]
fn exp2c_coefficients_in_portable_h_equal_the_sims() {
    for (k, &c) in EXP2C_COEFFS.iter().enumerate() {
        assert_eq!(
            define(&format!("EXP2C_C{k}")).to_bits(),
            c.to_bits(),
            "EXP2C_C{k}"
        );
    }
    assert!(
        PORTABLE_H
            .lines()
            .all(|l| !l.contains(&format!("EXP2C_C{}", EXP2C_COEFFS.len()))),
        "portable.h has more exp2c coefficients than the sim"
    );
}

#[test]
fn log2c_coefficients_in_portable_h_equal_the_sims() {
    for (k, &c) in LOG2C_COEFFS.iter().enumerate() {
        assert_eq!(
            define(&format!("LOG2C_C{k}")).to_bits(),
            c.to_bits(),
            "LOG2C_C{k}"
        );
    }
    assert!(
        PORTABLE_H
            .lines()
            .all(|l| !l.contains(&format!("LOG2C_C{}", LOG2C_COEFFS.len()))),
        "portable.h has more log2c coefficients than the sim"
    );
}

#[test]
fn scalar_constants_in_portable_h_equal_the_sims() {
    assert_eq!(define("LOG2E").to_bits(), LOG2E.to_bits());
    assert_eq!(define("LN2").to_bits(), LN2.to_bits());
    assert_eq!(
        define("SQRT2").to_bits(),
        std::f32::consts::SQRT_2.to_bits()
    );
    assert_eq!(define("EXP2C_MIN_X").to_bits(), EXP2C_MIN_X.to_bits());
}

#[test]
fn dtype_codes_follow_the_dtype_enum() {
    use attnlab_gpu::kernels::dtype_define;
    use attnlab_shared::dtype::ALL_DTYPES;
    let names = ["DT_F32", "DT_F16", "DT_BF16", "DT_FP8_FNUZ", "DT_FP8_FN"];
    for (dt, name) in ALL_DTYPES.into_iter().zip(names) {
        assert_eq!(
            dtype_define("X", dt).1,
            format!("{}", define(name) as i32),
            "{dt} vs {name}"
        );
    }
}
