//! The kernels on the host device (the CPU, `runtime::host`): every diff
//! family, kernels and whole backends, bit-exact against the emulator with
//! NVIDIA's 32-lane waves and AMD's 64-lane ones, on any machine with a C++
//! compiler; and the host runtime's own contract (shuffles stay inside one
//! wave, GPU undefined behaviour is an error, not a hang).
//!
//! Without a C++ compiler each test prints one line saying why and passes.

use attnlab_gpu::diff::{DiffOptions, KERNEL_DIFFS};
use attnlab_gpu::kernels::{Gpu, PORTABLE_H};
use attnlab_gpu::runtime::{Arg, Buffer, Device, GpuError, LaunchDims};
use attnlab_sim::backends::flavour::FlavourChoice;

/// Cases per diff: the same few on every machine (fixed seed), enough to
/// reach each kernel family's entry points (with seed 11, paged_decode's
/// ll4mi kernels and their wave butterflies), while the whole file stays
/// within a few minutes on two cores. Whole backends (upper-case names) run
/// several kernels per case: fewer cases. Compiles are cached on disk.
const KERNEL_CASES: usize = 4;
const BACKEND_CASES: usize = 2;
const SEED: u64 = 11;
/// Cases per backend in the tensor-core flavour (prefill, extend and
/// decode sub-batches, each instruction modelled in C++ on the host).
const TC_BACKEND_CASES: usize = 4;

fn cases_for(diff: &str) -> usize {
    if diff.chars().any(|c| c.is_ascii_lowercase()) {
        KERNEL_CASES
    } else {
        BACKEND_CASES
    }
}

fn host_or_skip(test: &str, wave: u32) -> Option<Gpu> {
    match Gpu::open_host(wave) {
        Ok(g) => Some(g),
        Err(GpuError::NoDevice(why)) => {
            eprintln!("{test}: skipped: {why}");
            None
        }
        Err(e) => panic!("{test}: opening the host device failed: {e}"),
    }
}

fn every_family_is_bit_exact(wave: u32) {
    let Some(gpu) = host_or_skip(&format!("host wave {wave}"), wave) else {
        return;
    };
    for d in KERNEL_DIFFS {
        let start = std::time::Instant::now();
        let cases = cases_for(d.kernel);
        let r = (d.run)(&gpu, DiffOptions::new(cases, SEED))
            .unwrap_or_else(|e| panic!("{} (wave {wave}): {e}", d.kernel));
        eprintln!(
            "wave {wave} {:<24} {} cases {:>9} elements {:.1} s",
            d.kernel,
            r.cases,
            r.elements,
            start.elapsed().as_secs_f64()
        );
        assert_eq!(r.cases, cases, "{}: ran {} cases", d.kernel, r.cases);
        assert!(r.elements > 0, "{}: compared nothing", d.kernel);
        assert!(
            r.passed(),
            "{} (wave {wave}): {:?}",
            d.kernel,
            r.first_mismatch
        );
    }
}

/// The host device runs each matrix instruction through portable.h's C++
/// port of sim/src/numerics/mma.rs; the diff computes the same tiles with
/// the Rust model: many random and adversarial instructions of every form
/// (Hopper's at wave 32, CDNA2's and CDNA3's, fp8 included, at wave 64) must agree bit
/// for bit, so the two ports are one model.
#[test]
fn the_cpp_matrix_models_equal_the_rust_models_on_many_instructions() {
    for wave in [32, 64] {
        let Some(gpu) = host_or_skip("mma models", wave) else {
            return;
        };
        let r = attnlab_gpu::diff::mma::run(&gpu, DiffOptions::new(300, 5)).expect("mma diff");
        for p in &r.parts {
            eprintln!(
                "wave {wave} {}: {} instructions {} elements",
                p.kernel, p.cases, p.elements
            );
            assert_eq!(p.cases, 300, "{}", p.kernel);
            assert!(p.passed(), "{}: {:?}", p.kernel, p.first_mismatch);
        }
        assert_eq!(r.parts.len(), if wave == 32 { 4 } else { 12 });
    }
}

/// The tensor-core prefill (`flash_varlen_tc`) at both wave widths: at 32
/// lanes every Q·K^T and P·V step is Hopper's `mma.sync m16n8k16` model,
/// at 64 CDNA3's MFMA 16x16x16 in the transposed layout, and the row sums
/// follow each layout's lanes (its own seed, beside the all-family sweep).
#[test]
fn the_tensor_core_prefill_is_bit_exact_on_the_host_at_both_wave_widths() {
    for wave in [32, 64] {
        let Some(gpu) = host_or_skip("flash_varlen_tc", wave) else {
            return;
        };
        let r = attnlab_gpu::diff::flash_varlen_tc::run(&gpu, DiffOptions::new(4, 4))
            .expect("flash_varlen_tc diff");
        assert_eq!(r.cases, 4);
        assert!(r.elements > 0, "wave {wave}: compared nothing");
        assert!(r.passed(), "wave {wave}: {:?}", r.first_mismatch);
    }
}

/// Every MHA backend in the tensor-core flavour at both wave widths (the
/// host device stands for sm_90 at 32 lanes and gfx942 at 64): a backend
/// whose launches all have tensor-core kernels (ROCM_AITER_FA: the varlen
/// prefill and extend, the NHD paged decode; TRITON_ATTN and
/// ROCM_AITER_UNIFIED_ATTN: unified_attention_tc; ROCM_ATTN:
/// prefix_prefill_tc and, for its decode rows, paged_decode_2d_tc on its
/// x-packed cache; FLEX_ATTENTION: flex_attention_tc; TRITON_MLA:
/// mla_decode_tc for its decode, flash_varlen_tc for its prefill;
/// ROCM_AITER_MLA and ROCM_AITER_TRITON_MLA on steps with no decode row,
/// their asm decode being refused) is bit-exact over draws the flavour
/// admits; one with a launch that has none is refused naming that launch,
/// never run in the fma kernels.
#[test]
fn every_backend_in_the_tensor_core_flavour_is_bit_exact_or_refused_on_the_host() {
    let backends = [
        "TRITON_ATTN",
        "ROCM_ATTN",
        "ROCM_AITER_FA",
        "ROCM_AITER_UNIFIED_ATTN",
        "FLEX_ATTENTION",
        "TRITON_MLA",
        "ROCM_AITER_MLA",
        "ROCM_AITER_TRITON_MLA",
    ];
    for wave in [32, 64] {
        let Some(gpu) = host_or_skip("backends in the tensor-core flavour", wave) else {
            return;
        };
        let mut ran = Vec::new();
        for d in KERNEL_DIFFS.iter().filter(|d| backends.contains(&d.kernel)) {
            let opts = DiffOptions {
                flavour: FlavourChoice::Tc,
                ..DiffOptions::new(TC_BACKEND_CASES, SEED)
            };
            match (d.run)(&gpu, opts) {
                Ok(r) => {
                    eprintln!(
                        "wave {wave} {}: {} cases {} elements",
                        r.kernel, r.cases, r.elements
                    );
                    assert_eq!(r.cases, TC_BACKEND_CASES, "{}", r.kernel);
                    assert!(r.elements > 0, "{}: compared nothing", r.kernel);
                    assert!(
                        r.passed(),
                        "{} (wave {wave}): {:?}",
                        r.kernel,
                        r.first_mismatch
                    );
                    ran.push(d.kernel);
                }
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("tensor-core flavour") && e.contains("no tensor-core kernel"),
                        "{} (wave {wave}): {e}",
                        d.kernel
                    );
                }
            }
        }
        for b in [
            "ROCM_AITER_FA",
            "TRITON_ATTN",
            "ROCM_AITER_UNIFIED_ATTN",
            "ROCM_ATTN",
            "FLEX_ATTENTION",
            "TRITON_MLA",
        ] {
            assert!(
                ran.contains(&b),
                "wave {wave}: {b} did not run; ran {ran:?}"
            );
        }
    }
}

/// The tensor-core unified attention (`unified_attention_tc`) at both wave
/// widths: vLLM's programs (BLOCK_Q tokens x the query heads of one KV
/// head in BLOCK_M rows) over paged caches, 2D and 3D, each Q·K^T and P·V
/// step on Hopper's `mma.sync m16n8k16` model at 32 lanes and CDNA3's MFMA
/// 16x16x16 at 64 (its own seed and more cases than the all-family sweep).
#[test]
fn the_tensor_core_unified_attention_is_bit_exact_on_the_host_at_both_wave_widths() {
    for wave in [32, 64] {
        let Some(gpu) = host_or_skip("unified_attention_tc", wave) else {
            return;
        };
        let r = attnlab_gpu::diff::unified_attention_tc::run(&gpu, DiffOptions::new(12, 6))
            .expect("unified_attention_tc diff");
        assert_eq!(r.cases, 12);
        assert!(r.elements > 0, "wave {wave}: compared nothing");
        assert!(r.passed(), "wave {wave}: {:?}", r.first_mismatch);
    }
}

/// The tensor-core prefix prefill (`prefix_prefill_tc`) at both wave
/// widths: vLLM's context_attention_fwd programs (the cached context in
/// 32-key tiles, the new tokens in 64-key tiles; ALiBi's 128-key kernel)
/// over every KV layout, ROCM_ATTN's x-packed one included, each Q·K^T and
/// P·V step on Hopper's `mma.sync m16n8k16` model at 32 lanes and CDNA3's
/// MFMA 16x16x16 at 64.
#[test]
fn the_tensor_core_prefix_prefill_is_bit_exact_on_the_host_at_both_wave_widths() {
    for wave in [32, 64] {
        let Some(gpu) = host_or_skip("prefix_prefill_tc", wave) else {
            return;
        };
        let r = attnlab_gpu::diff::prefix_prefill_tc::run(&gpu, DiffOptions::new(6, 7))
            .expect("prefix_prefill_tc diff");
        assert_eq!(r.cases, 6);
        assert!(r.elements > 0, "wave {wave}: compared nothing");
        assert!(r.passed(), "wave {wave}: {:?}", r.first_mismatch);
    }
}

/// The tensor-core 2D paged decode (`paged_decode_2d_tc`, ROCM_ATTN's
/// `kernel_paged_attention_2d`) at both wave widths: one wave per
/// (sequence, kv head, 16-head tile) over every KV layout, ROCM_ATTN's
/// x-packed K and transposed V included, tiles of 16 to 128 keys, more than
/// 16 heads per kv head, each Q·K^T and P·V step on Hopper's `mma.sync
/// m16n8k16` model at 32 lanes and CDNA3's MFMA 16x16x16 at 64.
#[test]
fn the_tensor_core_2d_decode_is_bit_exact_on_the_host_at_both_wave_widths() {
    for wave in [32, 64] {
        let Some(gpu) = host_or_skip("paged_decode_2d_tc", wave) else {
            return;
        };
        let r = attnlab_gpu::diff::paged_decode_2d_tc::run(&gpu, DiffOptions::new(8, 9))
            .expect("paged_decode_2d_tc diff");
        assert_eq!(r.cases, 8);
        assert!(r.elements > 0, "wave {wave}: compared nothing");
        assert!(r.passed(), "wave {wave}: {:?}", r.first_mismatch);
    }
}

/// The tensor-core FlexAttention (`flex_attention_tc`) at both wave
/// widths: the block-sparse BlockMask's partial then full blocks, each
/// Q·K^T and P·V step on Hopper's `mma.sync m16n8k16` model at 32 lanes and
/// CDNA3's MFMA 16x16x16 at 64.
#[test]
fn the_tensor_core_flex_attention_is_bit_exact_on_the_host_at_both_wave_widths() {
    for wave in [32, 64] {
        let Some(gpu) = host_or_skip("flex_attention_tc", wave) else {
            return;
        };
        let r = attnlab_gpu::diff::flex_attention_tc::run(&gpu, DiffOptions::new(6, 8))
            .expect("flex_attention_tc diff");
        assert_eq!(r.cases, 6);
        assert!(r.elements > 0, "wave {wave}: compared nothing");
        assert!(r.passed(), "wave {wave}: {:?}", r.first_mismatch);
    }
}

/// The tensor-core MLA decode (`mla_decode_tc`) at both wave widths:
/// TRITON_MLA's split-KV programs (16 heads x 16 keys per step), the
/// 576-wide Q·K^T chained through C over the latent chunks then the rope
/// chunks and the latent P·V, on Hopper's `mma.sync m16n8k16` model at 32
/// lanes and CDNA3's MFMA 16x16x16 at 64, then the shared stage-2 reduce.
#[test]
fn the_tensor_core_mla_decode_is_bit_exact_on_the_host_at_both_wave_widths() {
    for wave in [32, 64] {
        let Some(gpu) = host_or_skip("mla_decode_tc", wave) else {
            return;
        };
        let r = attnlab_gpu::diff::mla_decode_tc::run(&gpu, DiffOptions::new(6, 9))
            .expect("mla_decode_tc diff");
        assert_eq!(r.cases, 6);
        assert!(r.elements > 0, "wave {wave}: compared nothing");
        assert!(r.passed(), "wave {wave}: {:?}", r.first_mismatch);
    }
}

#[test]
fn every_diff_family_is_bit_exact_on_the_host_with_32_lane_waves() {
    every_family_is_bit_exact(32);
}

#[test]
fn every_diff_family_is_bit_exact_on_the_host_with_64_lane_waves() {
    every_family_is_bit_exact(64);
}

/// Compiles `body` behind portable.h on a host device of `wave` lanes and
/// runs its entry `probe(float* out)` with `threads` threads in one block;
/// the `threads` outputs, or the launch's error.
fn run_probe(wave: u32, body: &str, threads: u32) -> Option<Result<Vec<f32>, GpuError>> {
    let gpu = host_or_skip("host probe", wave)?;
    let dev: &dyn Device = gpu.dev.as_ref();
    let source = format!("{PORTABLE_H}\n{body}");
    let run = || -> Result<Vec<f32>, GpuError> {
        let image = dev.compile("probe.hip", &source, &[])?;
        let module = dev.load(&image)?;
        let f = dev.function(module, "probe")?;
        let out = Buffer::zeroed(dev, threads as usize * 4)?;
        let dims = LaunchDims {
            grid: [1, 1, 1],
            block: [threads, 1, 1],
            shared_bytes: 0,
        };
        // SAFETY: the probe kernels take one float buffer, `threads` long.
        unsafe { dev.launch(f, dims, &[out.arg()]) }?;
        Ok(out
            .to_bytes()?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    Some(run())
}

const WAVE_SUM_PROBE: &str = r#"
extern "C" __global__ void probe(float* out) {
    out[threadIdx.x] = wave_sum((float)threadIdx.x);
}"#;

#[test]
fn a_wave_sum_adds_exactly_the_lanes_of_its_own_wave() {
    for wave in [32u32, 64] {
        let Some(got) = run_probe(wave, WAVE_SUM_PROBE, 128) else {
            return;
        };
        let got = got.unwrap_or_else(|e| panic!("wave {wave}: {e}"));
        for (t, v) in got.iter().enumerate() {
            let first = (t as u32 / wave * wave) as f32;
            let expected = (0..wave).map(|l| first + l as f32).sum::<f32>();
            assert_eq!(*v, expected, "wave {wave}, thread {t}");
        }
    }
}

#[test]
fn a_shuffle_past_the_last_thread_of_a_narrow_block_is_an_error() {
    // 32 threads: a full warp on NVIDIA, half a wave on AMD, where the
    // butterfly's first step (xor 32) reads lanes that do not exist.
    let Some(ok) = run_probe(32, WAVE_SUM_PROBE, 32) else {
        return;
    };
    assert!(ok.is_ok(), "wave 32: {ok:?}");
    let err = run_probe(64, WAVE_SUM_PROBE, 32)
        .expect("host device")
        .expect_err("wave 64 reads lanes 32..63 of a 32-thread block");
    assert!(
        err.to_string().contains("beyond the block's last thread"),
        "{err}"
    );
}

#[test]
fn divergent_barriers_are_reported_instead_of_hanging() {
    let body = r#"
extern "C" __global__ void probe(float* out) {
    if (threadIdx.x == 0) __syncthreads();
    else out[threadIdx.x] = wave_sum(1.0f);
}"#;
    let Some(got) = run_probe(32, body, 64) else {
        return;
    };
    let err = got.expect_err("thread 0 waits at __syncthreads, its wave in a shuffle");
    assert!(err.to_string().contains("divergent barriers"), "{err}");
}

#[test]
fn a_launch_argument_of_the_wrong_type_is_rejected_before_the_kernel_runs() {
    let Some(gpu) = host_or_skip("host argument check", 32) else {
        return;
    };
    let dev: &dyn Device = gpu.dev.as_ref();
    let source = format!(
        "{PORTABLE_H}\nextern \"C\" __global__ void probe(float* out, i64 n) {{ if (threadIdx.x < n) out[threadIdx.x] = 1.0f; }}"
    );
    let image = dev.compile("probe.hip", &source, &[]).expect("compiles");
    let f = dev
        .function(dev.load(&image).expect("loads"), "probe")
        .expect("entry");
    let out = Buffer::zeroed(dev, 4 * 32).expect("alloc");
    let dims = LaunchDims::linear(32, 32).expect("dims");
    // SAFETY: a wrong argument kind is refused by the host launcher before
    // the kernel runs (what this test checks), so nothing is dereferenced.
    let err = unsafe { dev.launch(f, dims, &[out.arg(), Arg::I32(32)]) }
        .expect_err("i32 passed for an i64 parameter");
    assert!(err.to_string().contains("argument 1"), "{err}");
    // SAFETY: probe(float* out, i64 n) with a 32-float buffer and n = 32.
    unsafe { dev.launch(f, dims, &[out.arg(), Arg::I64(32)]) }.expect("i64 launches");
}

/// Inputs of the soft-cap probe: (natural score, cap), spanning the stable
/// range, both overflow edges (|s| / c around 88.73, and c * e^|y| beyond
/// f32::MAX at c = 50) and a NaN score.
const SOFTCAP_INPUTS: [(f32, f32); 16] = [
    (0.0, 1.0),
    (0.37, 0.5),
    (-3.0, 5.0),
    (30.0, 1.0),
    (88.0, 1.0),
    (88.72, 1.0),
    (88.8, 1.0),
    (-88.8, 1.0),
    (200.0, 0.5),
    (-1000.0, 0.05),
    (4300.0, 50.0),
    (-4300.0, 50.0),
    (44.36, 0.5),
    (-44.4, 0.5),
    (1e30, 3.0),
    (f32::NAN, 2.0),
];

/// portable.h's softcap_with equals numerics.rs's for every formula, bit for
/// bit, NaN results included (the contract's fresh NaN on both sides).
#[test]
fn softcap_formulas_are_bit_exact_between_portable_h_and_the_sim() {
    use attnlab_sim::numerics::{softcap_with, SoftcapFormula, LOG2E};
    let formulas = [
        SoftcapFormula::Tanh,
        SoftcapFormula::VllmTwoExp,
        SoftcapFormula::VllmOneExp,
        SoftcapFormula::AiterTwoExp2,
    ];
    let n = SOFTCAP_INPUTS.len();
    let (s, c): (Vec<String>, Vec<String>) = SOFTCAP_INPUTS
        .iter()
        .map(|&(s, c)| {
            (
                format!("__uint_as_float({}u)", s.to_bits()),
                format!("{c:e}f"),
            )
        })
        .unzip();
    let body = format!(
        r#"
extern "C" __global__ void probe(float* out) {{
    const float s[{n}] = {{{}}};
    const float c[{n}] = {{{}}};
    const int t = threadIdx.x, f = t / {n}, i = t % {n};
    out[t] = softcap_with(f, s[i], s[i] * LOG2E, c[i]);
}}"#,
        s.join(", "),
        c.join(", ")
    );
    let Some(got) = run_probe(32, &body, (formulas.len() * n) as u32) else {
        return;
    };
    let got = got.expect("probe runs");
    for (k, f) in formulas.iter().enumerate() {
        for (i, &(s, c)) in SOFTCAP_INPUTS.iter().enumerate() {
            let want = softcap_with(*f, s, s * LOG2E, c);
            assert_eq!(
                got[k * n + i].to_bits(),
                want.to_bits(),
                "{f:?} s {s} c {c}: {} vs {want}",
                got[k * n + i]
            );
        }
    }
    // The probe covers what it is for: NaN and inf results of the two-exp forms.
    let two_exp: Vec<f32> = (0..n).map(|i| got[n + i]).collect();
    assert!(two_exp.iter().any(|x| x.is_nan()) && two_exp.iter().any(|x| x.is_infinite()));
}
