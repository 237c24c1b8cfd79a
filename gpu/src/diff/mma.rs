//! The instruction-level diff (`attnlab diff --backend mma`): every matrix
//! instruction form the device executes (ops::mma::Instr::for_device) runs
//! `cases` times on random and adversarial tiles, and every element of D is
//! compared bit for bit with sim/src/numerics/mma.rs's model of the target.
//! With `--probe`, [`probe`] tells which parameter set of the model fits the
//! device: the published one, each of its parameters changed alone, and if
//! the published one mismatches, the best fit over a grid of alternatives.
//!
//! The operand regimes aim at each parameter: exponent spreads beyond 25
//! bits (kept bits), cancelling pairs (alignment, C's place), subnormals,
//! rounding boundaries (final rounding), ±0/inf/NaN, zero factors beside
//! huge ones (how a zero product aligns), bf16 products beyond f32's range,
//! and raw bit patterns.

use super::{rng_for, DiffOptions, KernelReport, Tally};
use crate::kernels::Gpu;
use crate::ops::mma::{run as run_instr, Instr};
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_sim::numerics::mma::{
    tile, CAdd, Fused, InFormat, Model, Overflow, Pairwise, Rounding, Shape, ZeroTerm, NV_NAN,
    QUIET_NAN,
};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

/// The operand families each instruction's tiles are drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regime {
    Normal,
    Wide,
    Cancel,
    Subnormal,
    Ties,
    Special,
    Zeros,
    Overflow,
    Tiny,
    SignedZeros,
    Bits,
}

impl Regime {
    pub const ALL: [Regime; 11] = [
        Regime::Normal,
        Regime::Wide,
        Regime::Cancel,
        Regime::Subnormal,
        Regime::Ties,
        Regime::Special,
        Regime::Zeros,
        Regime::Overflow,
        Regime::Tiny,
        Regime::SignedZeros,
        Regime::Bits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Regime::Normal => "normal",
            Regime::Wide => "wide exponent spread",
            Regime::Cancel => "cancellation",
            Regime::Subnormal => "subnormals",
            Regime::Ties => "rounding boundaries",
            Regime::Special => "inf/NaN/±0",
            Regime::Zeros => "zero factors beside huge ones",
            Regime::Overflow => "products beyond f32",
            Regime::Tiny => "products below f32's subnormals",
            Regime::SignedZeros => "all-zero rows and columns, signed",
            Regime::Bits => "random bits",
        }
    }
}

/// A value of `format` with a random sign, exponent in [lo, hi] (clamped to
/// the normal range) and random fraction bits (the top `keep` of them).
fn elem(rng: &mut ChaCha8Rng, f: InFormat, lo: i32, hi: i32, keep: u32) -> u16 {
    let m = f.mant_bits();
    let bias = 1 - f.emin();
    let lo = lo.clamp(f.emin(), f.emax());
    let e = rng.gen_range(lo..=hi.clamp(lo, f.emax()));
    let frac = if keep == 0 {
        0
    } else {
        let r: u16 = rng.gen::<u16>() & ((1 << m) - 1);
        r & !((1u16 << (m - keep.min(m))) - 1)
    };
    let sign = if rng.gen::<bool>() { sign_bit(f) } else { 0 };
    sign | (((e + bias) as u16) << m) | frac
}

/// The sign bit of `f`'s storage.
fn sign_bit(f: InFormat) -> u16 {
    1 << (f.bits() - 1)
}

/// -0, or +0 in the fnuz formats (where the -0 pattern is the NaN).
fn neg_zero(f: InFormat) -> u16 {
    if f.fnuz() {
        0
    } else {
        sign_bit(f)
    }
}

/// An f32 with random sign, exponent in [lo, hi] and random fraction.
fn f32_elem(rng: &mut ChaCha8Rng, lo: i32, hi: i32) -> f32 {
    let e = rng.gen_range(lo.max(-126)..=hi.min(127));
    let frac = rng.gen::<u32>() & 0x7f_ffff;
    let sign = (rng.gen::<bool>() as u32) << 31;
    f32::from_bits(sign | (((e + 127) as u32) << 23) | frac)
}

/// ±inf, NaN or ±0 of `f` (fnuz formats: NaN 0x80, the largest finite
/// values for the infinities they lack, +0).
fn special(rng: &mut ChaCha8Rng, f: InFormat) -> u16 {
    let inf = f.from_f32(f32::INFINITY);
    let nan = if f.fnuz() {
        0x80
    } else {
        inf | 1 | (rng.gen::<u16>() & (1 << (f.mant_bits() - 1)))
    };
    match rng.gen_range(0..5) {
        0 => inf,
        1 => inf | sign_bit(f),
        2 => nan,
        3 => 0,
        _ => neg_zero(f),
    }
}

/// One instruction's tiles (A M×K, B K×N, C M×N) in `regime`.
pub fn draw(
    rng: &mut ChaCha8Rng,
    shape: Shape,
    f: InFormat,
    regime: Regime,
) -> (Vec<u16>, Vec<u16>, Vec<f32>) {
    let (m, n, k) = shape.mnk();
    let bf = f == InFormat::Bf16;
    let wide = if bf { 40 } else { 15 };
    let (sign, nz) = (sign_bit(f), neg_zero(f));
    let mut a = vec![0u16; m * k];
    let mut b = vec![0u16; k * n];
    let mut c = vec![0f32; m * n];
    match regime {
        Regime::Normal => {
            a.iter_mut().for_each(|x| *x = elem(rng, f, -3, 3, 16));
            b.iter_mut().for_each(|x| *x = elem(rng, f, -3, 3, 16));
            c.iter_mut().for_each(|x| {
                *x = if rng.gen_range(0..8) == 0 {
                    0.0
                } else {
                    f32_elem(rng, -3, 6)
                }
            });
        }
        Regime::Wide => {
            a.iter_mut()
                .for_each(|x| *x = elem(rng, f, -wide, wide, 16));
            b.iter_mut()
                .for_each(|x| *x = elem(rng, f, -wide, wide, 16));
            c.iter_mut()
                .for_each(|x| *x = f32_elem(rng, -2 * wide, 2 * wide));
        }
        Regime::Cancel => {
            // k pairs (2q, 2q+1): B rows equal, A columns opposite, so every
            // product pair cancels exactly; the other k are small.
            for q in 0..k / 2 {
                let cancel = rng.gen_bool(0.5);
                for j in 0..n {
                    let v = if cancel {
                        elem(rng, f, 4, 12, 16)
                    } else {
                        elem(rng, f, -8, 0, 16)
                    };
                    b[2 * q * n + j] = v;
                    b[(2 * q + 1) * n + j] = if cancel { v } else { elem(rng, f, -8, 0, 16) };
                }
                for i in 0..m {
                    let v = if cancel {
                        elem(rng, f, 4, 12, 16)
                    } else {
                        elem(rng, f, -8, 0, 16)
                    };
                    a[i * k + 2 * q] = v;
                    a[i * k + 2 * q + 1] = if cancel {
                        v ^ sign
                    } else {
                        elem(rng, f, -8, 0, 16)
                    };
                }
            }
            c.iter_mut().for_each(|x| *x = f32_elem(rng, -12, 30));
        }
        Regime::Subnormal => {
            let sub = |rng: &mut ChaCha8Rng| -> u16 {
                let r: u16 = rng.gen::<u16>() & ((1 << f.mant_bits()) - 1);
                (if rng.gen::<bool>() { sign } else { 0 }) | r.max(1)
            };
            for x in a.iter_mut().chain(b.iter_mut()) {
                *x = match rng.gen_range(0..3) {
                    0 => sub(rng),
                    1 => elem(rng, f, f.emin(), f.emin() + 4, 16),
                    _ => elem(rng, f, -6, 0, 16),
                };
            }
            c.iter_mut().for_each(|x| {
                *x = if rng.gen_bool(0.5) {
                    f32::from_bits(rng.gen::<u32>() & 0x807f_ffff)
                } else {
                    f32_elem(rng, -126, -100)
                }
            });
        }
        Regime::Ties => {
            // C = ±(1 + j·2^-23)·2^ec; products with 1-2 significant bits
            // 22..28 binades below: sums land on truncation and RNE boundaries.
            let ec = rng.gen_range(-4..4);
            c.iter_mut().for_each(|x| {
                let j = rng.gen_range(0u32..8);
                let v = f32::from_bits((((ec + 127) as u32) << 23) | j);
                *x = if rng.gen_bool(0.5) { -v } else { v };
            });
            a.iter_mut()
                .for_each(|x| *x = elem(rng, f, ec - 28, ec - 21, 1));
            b.iter_mut().for_each(|x| *x = elem(rng, f, 0, 1, 1));
        }
        Regime::Special => {
            for x in a.iter_mut().chain(b.iter_mut()) {
                *x = if rng.gen_range(0..24) == 0 {
                    special(rng, f)
                } else {
                    elem(rng, f, -4, 4, 16)
                };
            }
            c.iter_mut().for_each(|x| {
                *x = match rng.gen_range(0..32) {
                    0 => f32::INFINITY,
                    1 => f32::NEG_INFINITY,
                    2 => f32::from_bits(0x7fc0_0000 | rng.gen::<u32>() & 0x3f_ffff),
                    3 => -0.0,
                    _ => f32_elem(rng, -4, 8),
                }
            });
        }
        Regime::Zeros => {
            let big = if bf { 100 } else { 15 };
            for x in a.iter_mut().chain(b.iter_mut()) {
                *x = match rng.gen_range(0..4) {
                    0 => 0,
                    1 => nz,
                    2 => elem(rng, f, big - 10, big, 16),
                    _ => elem(rng, f, -2 * wide, -wide / 2, 16),
                };
            }
            c.iter_mut().for_each(|x| {
                *x = match rng.gen_range(0..4) {
                    0 => 0.0,
                    1 => -0.0,
                    _ => f32_elem(rng, -126, -60),
                }
            });
        }
        Regime::Overflow if bf => {
            a.iter_mut().for_each(|x| *x = elem(rng, f, 50, 127, 16));
            b.iter_mut().for_each(|x| *x = elem(rng, f, 10, 80, 16));
            c.iter_mut().for_each(|x| *x = f32_elem(rng, 120, 127));
        }
        Regime::Overflow => {
            // f16/fp8 products cannot leave f32's range: the format's top binades
            let top = f.emax();
            a.iter_mut()
                .for_each(|x| *x = elem(rng, f, top - 3, top, 16));
            b.iter_mut()
                .for_each(|x| *x = elem(rng, f, top - 3, top, 16));
            c.iter_mut().for_each(|x| *x = f32_elem(rng, 100, 127));
        }
        Regime::Tiny => {
            // bf16: products in [2^-160, 2^-132), under the -133 alignment floor
            // and f32's subnormals; C zero or tiny. f16: its subnormals.
            let (lo, hi) = if bf {
                (-80, -67)
            } else {
                (f.emin(), f.emin() + 4)
            };
            a.iter_mut().for_each(|x| *x = elem(rng, f, lo, hi, 16));
            b.iter_mut().for_each(|x| *x = elem(rng, f, lo, hi, 16));
            c.iter_mut().for_each(|x| {
                *x = match rng.gen_range(0..4) {
                    0 => 0.0,
                    1 => -0.0,
                    2 => f32::from_bits(rng.gen::<u32>() & 0x8000_00ff),
                    _ => f32_elem(rng, -126, -120),
                }
            });
        }
        Regime::SignedZeros => {
            // rows of A all ±0 (one sign per row), columns of B one sign
            // each: every product of a (row, column) is a zero of one sign
            // (fnuz formats have no -0: the sign comes from B); C ±0 or small.
            for i in 0..m {
                let z = if rng.gen_bool(0.5) { nz } else { 0 };
                for kk in 0..k {
                    a[i * k + kk] = if rng.gen_range(0..8) == 0 {
                        elem(rng, f, -2, 2, 16)
                    } else {
                        z
                    };
                }
            }
            for j in 0..n {
                let s = if rng.gen_bool(0.5) { sign } else { 0 };
                for kk in 0..k {
                    b[kk * n + j] = (elem(rng, f, -2, 2, 16) & !sign) | s;
                }
            }
            c.iter_mut().for_each(|x| {
                *x = match rng.gen_range(0..3) {
                    0 => 0.0,
                    1 => -0.0,
                    _ => f32_elem(rng, -30, 0),
                }
            });
        }
        Regime::Bits => {
            let mask = ((1u32 << f.bits()) - 1) as u16;
            a.iter_mut().for_each(|x| *x = rng.gen::<u16>() & mask);
            b.iter_mut().for_each(|x| *x = rng.gen::<u16>() & mask);
            c.iter_mut().for_each(|x| *x = f32::from_bits(rng.gen()));
        }
    }
    (a, b, c)
}

/// A batch of instructions' tiles, concatenated, with each one's regime.
struct Batch {
    a: Vec<u16>,
    b: Vec<u16>,
    c: Vec<f32>,
    regimes: Vec<Regime>,
}

/// Instructions `first..first + n` of `instr`'s stream (each from its own
/// seeded generator, so batches split differently draw the same tiles).
fn batch(instr: &Instr, seed: u64, first: usize, n: usize) -> Batch {
    let (m, nn, k) = instr.shape.mnk();
    let name = instr.name();
    let tiles: Vec<_> = (first..first + n)
        .into_par_iter()
        .map(|i| {
            let mut rng = rng_for(&name, seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let regime = Regime::ALL[rng.gen_range(0..Regime::ALL.len())];
            let (a, b, c) = draw(&mut rng, instr.shape, instr.format, regime);
            (a, b, c, regime)
        })
        .collect();
    let mut out = Batch {
        a: Vec::with_capacity(n * m * k),
        b: Vec::with_capacity(n * k * nn),
        c: Vec::with_capacity(n * m * nn),
        regimes: Vec::with_capacity(n),
    };
    for (a, b, c, r) in tiles {
        out.a.extend(a);
        out.b.extend(b);
        out.c.extend(c);
        out.regimes.push(r);
    }
    out
}

/// `model`'s D for every tile of the batch, f32 bits.
fn model_bits(model: &Model, instr: &Instr, bt: &Batch) -> Vec<u32> {
    let (m, n, k) = instr.shape.mnk();
    let tiles = bt.regimes.len();
    (0..tiles)
        .into_par_iter()
        .flat_map_iter(|t| {
            tile(
                model,
                instr.shape,
                instr.format,
                &bt.a[t * m * k..(t + 1) * m * k],
                &bt.b[t * k * n..(t + 1) * k * n],
                &bt.c[t * m * n..(t + 1) * m * n],
            )
            .into_iter()
            .map(f32::to_bits)
        })
        .collect()
}

/// The operands of D[r][col] of tile `t`, for a mismatch report.
fn describe(instr: &Instr, bt: &Batch, t: usize, index: usize, case: usize) -> String {
    let (m, n, k) = instr.shape.mnk();
    let (r, col) = (index / n, index % n);
    let a: Vec<String> = (0..k)
        .map(|kk| format!("{:#06x}", bt.a[t * m * k + r * k + kk]))
        .collect();
    let b: Vec<String> = (0..k)
        .map(|kk| format!("{:#06x}", bt.b[t * k * n + kk * n + col]))
        .collect();
    let c = bt.c[t * m * n + index];
    format!(
        "{} instruction {case} ({}): D[{r}][{col}] = A row [{}] · B col [{}] + C {:#010x} ({c:e})",
        instr.name(),
        bt.regimes[t].name(),
        a.join(", "),
        b.join(", "),
        c.to_bits()
    )
}

/// Instructions per device call (bounded memory: ~80 MB of tiles).
fn batch_size(gpu: &Gpu) -> usize {
    match gpu.dev.info().target {
        crate::runtime::Target::Host { .. } => 256,
        _ => 1 << 16,
    }
}

/// Runs `opts.cases` instructions of `instr` and diffs them against its
/// published model.
pub fn run_one(gpu: &Gpu, instr: Instr, opts: DiffOptions) -> Result<KernelReport> {
    let name = instr.name();
    let mut tally = Tally::new(&name);
    let model = instr.model();
    let (m, n, _) = instr.shape.mnk();
    let mut done = 0;
    while opts.more(done) {
        let count = (opts.cases - done).min(batch_size(gpu));
        let bt = batch(&instr, opts.seed, done, count);
        let dev = run_instr(gpu, instr, &bt.a, &bt.b, &bt.c)?;
        let sim = model_bits(&model, &instr, &bt);
        for t in 0..count {
            let (s, g) = (
                &sim[t * m * n..(t + 1) * m * n],
                &dev[t * m * n..(t + 1) * m * n],
            );
            let first = s.iter().zip(g).position(|(x, y)| x != y);
            let desc = || match first {
                Some(i) => describe(&instr, &bt, t, i, done + t),
                None => String::new(),
            };
            tally.compare(&desc, "D", &[m, n], DType::F32, s, g);
            tally.case_done();
        }
        done += count;
    }
    Ok(tally.finish())
}

/// The `mma` diff: every instruction form of the device, one part each.
pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let instrs = Instr::for_device(&gpu.dev.info().target)?;
    let mut parts = Vec::new();
    for instr in instrs {
        parts.push(run_one(gpu, instr, opts)?);
    }
    let mut total = Tally::new("mma").finish();
    // cases = instructions per form (`--cases N` runs N of each)
    total.cases = parts.iter().map(|p| p.cases).min().unwrap_or(0);
    total.elements = parts.iter().map(|p| p.elements).sum();
    total.bit_exact = parts.iter().map(|p| p.bit_exact).sum();
    total.first_mismatch = parts.iter().find_map(|p| p.first_mismatch.clone());
    total.parts = parts;
    Ok(total)
}

// ------------------------------------------------------------------ probe

/// One parameter set and how many elements of D it got wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub params: String,
    pub mismatches: u64,
    /// The first mismatching element's operands, model and device values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
}

/// A parameter of the published model changed alone.
#[derive(Debug, Clone, Serialize)]
pub struct Alternative {
    pub parameter: String,
    pub value: String,
    pub mismatches: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub instruction: String,
    pub cases: usize,
    pub elements: u64,
    pub published: Candidate,
    /// Each parameter of the published model changed alone: more
    /// mismatches than the published set confirms the parameter; as few
    /// means these operands do not tell the two values apart.
    pub one_at_a_time: Vec<Alternative>,
    /// The best parameter set found (the published one when it fits).
    pub best: Candidate,
    pub verdict: String,
}

fn fmt_zero(z: ZeroTerm) -> String {
    match z {
        ZeroTerm::Skip => "skip".into(),
        ZeroTerm::Exponent(e) => format!("exp{e}"),
    }
}

/// `model` in one line, every parameter named.
pub fn describe_model(model: &Model) -> String {
    match model {
        Model::Fused(f) => format!(
            "fused block={} bits={} c={} round={} zero_products={} zero_c={} min_align={} product_overflow={} overflow={} odd_even={} late_c_cutoff={} zero_sign={} nan={:#x}",
            f.block,
            f.frac_bits,
            match f.c_add {
                CAdd::Joint => "joint".to_string(),
                CAdd::Late { sum_extra_bits } => format!("late+{sum_extra_bits}"),
            },
            match f.rounding {
                Rounding::TowardZero => "rz",
                Rounding::NearestEven => "rne",
            },
            fmt_zero(f.zero_products),
            fmt_zero(f.zero_c),
            f.min_align_exp.map_or("none".to_string(), |e| e.to_string()),
            if f.product_overflow { "inf" } else { "kept" },
            match f.overflow {
                Overflow::Inf => "inf",
                Overflow::Ieee => "ieee",
            },
            f.odd_even,
            f.late_c_cutoff.map_or("none".to_string(), |c| c.to_string()),
            if f.ieee_zero_sign { "ieee" } else { "+0" },
            f.nan_bits
        ),
        Model::Pairwise(p) => format!(
            "pairwise group={} flush={} nan={:#x}",
            p.group, p.flush_subnormals, p.nan_bits
        ),
    }
}

/// The single-parameter variations of a fused model: (name, value, model).
fn variations(f: &Fused, k: usize) -> Vec<(String, String, Model)> {
    let mut out = Vec::new();
    let mut push = |name: &str, value: String, g: Fused| {
        if g != *f {
            out.push((name.to_string(), value, Model::Fused(g)));
        }
    };
    for block in [2usize, 4, 8, 16, 32] {
        if block <= k.max(8) && k.is_multiple_of(block.min(k)) {
            push("block", block.to_string(), Fused { block, ..*f });
        }
    }
    for frac_bits in 22..=28 {
        push("bits", frac_bits.to_string(), Fused { frac_bits, ..*f });
    }
    for (v, c_add) in [
        ("joint", CAdd::Joint),
        ("late+0", CAdd::Late { sum_extra_bits: 0 }),
        ("late+7", CAdd::Late { sum_extra_bits: 7 }),
    ] {
        push("c", v.into(), Fused { c_add, ..*f });
    }
    for (v, rounding) in [("rz", Rounding::TowardZero), ("rne", Rounding::NearestEven)] {
        push("round", v.into(), Fused { rounding, ..*f });
    }
    for z in [ZeroTerm::Skip, ZeroTerm::Exponent(-126)] {
        push(
            "zero_products",
            fmt_zero(z),
            Fused {
                zero_products: z,
                ..*f
            },
        );
        push("zero_c", fmt_zero(z), Fused { zero_c: z, ..*f });
    }
    for e in [None, Some(-133), Some(-126)] {
        push(
            "min_align",
            e.map_or("none".into(), |e: i32| e.to_string()),
            Fused {
                min_align_exp: e,
                ..*f
            },
        );
    }
    push(
        "product_overflow",
        (!f.product_overflow).to_string(),
        Fused {
            product_overflow: !f.product_overflow,
            ..*f
        },
    );
    for (v, overflow) in [("inf", Overflow::Inf), ("ieee", Overflow::Ieee)] {
        push("overflow", v.into(), Fused { overflow, ..*f });
    }
    push(
        "odd_even",
        (!f.odd_even).to_string(),
        Fused {
            odd_even: !f.odd_even,
            ..*f
        },
    );
    for cut in [None, Some(25)] {
        push(
            "late_c_cutoff",
            cut.map_or("none".into(), |c: u32| c.to_string()),
            Fused {
                late_c_cutoff: cut,
                ..*f
            },
        );
    }
    push(
        "zero_sign",
        if f.ieee_zero_sign { "+0" } else { "ieee" }.into(),
        Fused {
            ieee_zero_sign: !f.ieee_zero_sign,
            ..*f
        },
    );
    for nan_bits in [NV_NAN, QUIET_NAN] {
        push("nan", format!("{nan_bits:#x}"), Fused { nan_bits, ..*f });
    }
    out
}

/// Mismatching elements of `model` against the device's D over `batches`.
fn score(
    model: &Model,
    instr: &Instr,
    batches: &[(Batch, Vec<u32>)],
    with_first: bool,
) -> Candidate {
    let (_, n, _) = instr.shape.mnk();
    let mut mismatches = 0u64;
    let mut first = None;
    let mut case0 = 0;
    for (bt, dev) in batches {
        let sim = model_bits(model, instr, bt);
        for (i, (s, g)) in sim.iter().zip(dev).enumerate() {
            if s != g {
                mismatches += 1;
                if with_first && first.is_none() {
                    let per = instr.shape.mnk().0 * n;
                    first = Some(format!(
                        "{}: model {s:#010x} ({}), device {g:#010x} ({})",
                        describe(instr, bt, i / per, i % per, case0 + i / per),
                        f32::from_bits(*s),
                        f32::from_bits(*g)
                    ));
                }
            }
        }
        case0 += bt.regimes.len();
    }
    Candidate {
        params: describe_model(model),
        mismatches,
        first,
    }
}

/// The probe for one instruction form (see the module comment).
pub fn probe_one(gpu: &Gpu, instr: Instr, opts: DiffOptions) -> Result<ProbeResult> {
    let mut batches = Vec::new();
    let mut done = 0;
    while opts.more(done) {
        let count = (opts.cases - done).min(batch_size(gpu));
        let bt = batch(&instr, opts.seed, done, count);
        let dev = run_instr(gpu, instr, &bt.a, &bt.b, &bt.c)?;
        batches.push((bt, dev));
        done += count;
    }
    let elements: u64 = batches.iter().map(|(_, d)| d.len() as u64).sum();
    let k = instr.shape.mnk().2;
    let published_model = instr.model();
    let published = score(&published_model, &instr, &batches, true);
    let mut one_at_a_time = Vec::new();
    let mut best = published.clone();
    match published_model {
        Model::Fused(f) => {
            for (p, v, m) in variations(&f, k) {
                let c = score(&m, &instr, &batches, false);
                one_at_a_time.push(Alternative {
                    parameter: p,
                    value: v,
                    mismatches: c.mismatches,
                });
            }
        }
        Model::Pairwise(p) => {
            for group in [1usize, 2, 4, 8] {
                for flush_subnormals in [false, true] {
                    let g = Pairwise {
                        group,
                        flush_subnormals,
                        ..p
                    };
                    if g != p {
                        let c = score(&Model::Pairwise(g), &instr, &batches, false);
                        one_at_a_time.push(Alternative {
                            parameter: "group,flush".into(),
                            value: format!("{group},{flush_subnormals}"),
                            mismatches: c.mismatches,
                        });
                    }
                }
            }
        }
    }
    if published.mismatches > 0 {
        best = search(&instr, &batches, published_model);
    }
    let verdict = if done == 0 {
        "nothing ran (the deadline came first): no verdict".to_string()
    } else if published.mismatches == 0 {
        let untold: Vec<String> = one_at_a_time
            .iter()
            .filter(|a| a.mismatches == 0)
            .map(|a| format!("{}={}", a.parameter, a.value))
            .collect();
        if untold.is_empty() {
            "published model fits; every parameter confirmed (each change alone mismatches)"
                .to_string()
        } else {
            format!(
                "published model fits; these operands do not tell it from: {}",
                untold.join(", ")
            )
        }
    } else if best.mismatches == 0 {
        format!("published model mismatches; this set fits: {}", best.params)
    } else {
        format!(
            "no parameter set tried fits; closest ({} mismatches): {}",
            best.mismatches, best.params
        )
    };
    Ok(ProbeResult {
        instruction: instr.name(),
        cases: done,
        elements,
        published,
        one_at_a_time,
        best,
        verdict,
    })
}

/// Grid over block, bits, C placement and rounding (the rest as
/// published), pairwise forms too, then greedy single-parameter steps from
/// the best point until none helps.
fn search(instr: &Instr, batches: &[(Batch, Vec<u32>)], published: Model) -> Candidate {
    let k = instr.shape.mnk().2;
    let base = match published {
        Model::Fused(f) => f,
        Model::Pairwise(_) => {
            match attnlab_sim::numerics::mma::MatrixTarget::Gfx942.model(instr.format) {
                Model::Fused(f) => f,
                Model::Pairwise(_) => unreachable!("gfx942's model is fused"),
            }
        }
    };
    let mut grid: Vec<Model> = Vec::new();
    for block in [4usize, 8, 16] {
        if !k.is_multiple_of(block) && block < k {
            continue;
        }
        for frac_bits in 22..=27 {
            for c_add in [CAdd::Joint, CAdd::Late { sum_extra_bits: 7 }] {
                for rounding in [Rounding::TowardZero, Rounding::NearestEven] {
                    grid.push(Model::Fused(Fused {
                        block,
                        frac_bits,
                        c_add,
                        rounding,
                        ..base
                    }));
                }
            }
        }
    }
    for group in [2usize, 4, 8] {
        for flush_subnormals in [false, true] {
            grid.push(Model::Pairwise(Pairwise {
                group,
                flush_subnormals,
                nan_bits: base.nan_bits,
            }));
        }
    }
    let mut best = grid
        .iter()
        .map(|m| (*m, score(m, instr, batches, false).mismatches))
        .min_by_key(|&(_, s)| s)
        .expect("a non-empty grid");
    for _ in 0..6 {
        let Model::Fused(f) = best.0 else { break };
        let step = variations(&f, k)
            .into_iter()
            .map(|(_, _, m)| (m, score(&m, instr, batches, false).mismatches))
            .min_by_key(|&(_, s)| s);
        match step {
            Some((m, s)) if s < best.1 => best = (m, s),
            _ => break,
        }
    }
    score(&best.0, instr, batches, true)
}

/// `attnlab diff --backend mma --probe`: [`probe_one`] for every
/// instruction form of the device.
pub fn probe(gpu: &Gpu, opts: DiffOptions) -> Result<Vec<ProbeResult>> {
    Instr::for_device(&gpu.dev.info().target)?
        .into_iter()
        .map(|i| probe_one(gpu, i, opts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use attnlab_sim::numerics::mma::MatrixTarget;
    use rand::SeedableRng;

    /// Throughput of the model side (run with --release --ignored): the
    /// diff's 10^6 instructions per form are this times 10^6 / n.
    #[test]
    #[ignore]
    fn model_throughput() {
        for (target, shape) in [
            (MatrixTarget::Sm90, Shape::M16N8K16),
            (MatrixTarget::Gfx942, Shape::M16N16K16),
            (MatrixTarget::Gfx942, Shape::M32N32K8),
        ] {
            let instr = Instr {
                target,
                shape,
                format: InFormat::Bf16,
            };
            let n = 20_000;
            let t0 = std::time::Instant::now();
            let bt = batch(&instr, 1, 0, n);
            let t1 = std::time::Instant::now();
            let bits = model_bits(&instr.model(), &instr, &bt);
            let t2 = std::time::Instant::now();
            eprintln!(
                "{}: {n} instructions: draw {:.2} s, model {:.2} s ({} elements, {} threads)",
                instr.name(),
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                bits.len(),
                rayon::current_num_threads()
            );
        }
    }

    #[test]
    fn every_regime_draws_full_tiles_of_its_format() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for shape in [Shape::M16N8K16, Shape::M16N16K16, Shape::M32N32K8] {
            for f in InFormat::ALL {
                for r in Regime::ALL {
                    let (a, b, c) = draw(&mut rng, shape, f, r);
                    let (m, n, k) = shape.mnk();
                    assert_eq!((a.len(), b.len(), c.len()), (m * k, k * n, m * n));
                }
            }
        }
    }

    #[test]
    fn wide_tiles_spread_products_beyond_25_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (a, b, _) = draw(&mut rng, Shape::M16N8K16, InFormat::Bf16, Regime::Wide);
        let exps: Vec<i32> = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| {
                (InFormat::Bf16.to_f32(x) as f64 * InFormat::Bf16.to_f32(y) as f64)
                    .abs()
                    .log2()
                    .floor() as i32
            })
            .collect();
        let spread = exps.iter().max().unwrap() - exps.iter().min().unwrap();
        assert!(spread > 25, "spread {spread}");
    }

    #[test]
    fn cancel_tiles_cancel_pairs_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (a, b, _) = draw(&mut rng, Shape::M16N16K16, InFormat::F16, Regime::Cancel);
        let (_, n, k) = Shape::M16N16K16.mnk();
        let mut cancelled = 0;
        for q in 0..k / 2 {
            let p = |kk: usize| {
                InFormat::F16.to_f32(a[kk]) as f64 * InFormat::F16.to_f32(b[kk * n]) as f64
            };
            if p(2 * q) == -p(2 * q + 1) {
                cancelled += 1;
            }
        }
        assert!(cancelled > 0);
    }

    /// Device outputs made by another parameter set (Hopper's with 24
    /// bits and RNE): the search finds a set with no mismatch.
    #[test]
    fn search_recovers_the_parameter_set_that_made_the_outputs() {
        let instr = Instr {
            target: MatrixTarget::Sm90,
            shape: Shape::M16N8K16,
            format: InFormat::Bf16,
        };
        let Model::Fused(f) = instr.model() else {
            panic!("sm_90 is fused")
        };
        let truth = Model::Fused(Fused {
            frac_bits: 24,
            rounding: Rounding::NearestEven,
            ..f
        });
        let bt = batch(&instr, 5, 0, 150);
        let dev = model_bits(&truth, &instr, &bt);
        let batches = vec![(bt, dev)];
        assert!(score(&instr.model(), &instr, &batches, false).mismatches > 0);
        let best = search(&instr, &batches, instr.model());
        assert_eq!(best.mismatches, 0, "{}", best.params);
        assert!(best.params.contains("round=rne"), "{}", best.params);
    }

    #[test]
    fn describe_model_names_every_parameter() {
        let d = describe_model(&MatrixTarget::Sm90.model(InFormat::Bf16));
        for p in [
            "block=16",
            "bits=25",
            "c=joint",
            "round=rz",
            "zero_products=skip",
            "min_align=-133",
            "nan=0x7fffffff",
        ] {
            assert!(d.contains(p), "{d} lacks {p}");
        }
    }

    #[test]
    fn each_variation_changes_exactly_one_parameter() {
        let Model::Fused(f) = MatrixTarget::Gfx942.model(InFormat::F16) else {
            panic!("gfx942 is fused")
        };
        let base = describe_model(&Model::Fused(f));
        let base: Vec<&str> = base.split(' ').collect();
        for (name, _, m) in variations(&f, 16) {
            let d = describe_model(&m);
            let diff = d.split(' ').zip(&base).filter(|(x, y)| x != *y).count();
            assert_eq!(diff, 1, "{name}: {d}");
        }
    }
}
