//! `attnlab diff`: random cases, each run on the emulator and on the GPU,
//! compared bit for bit (numerics.md §5: every output element's storage bit
//! pattern equal, NaN payloads included).
//!
//! One submodule per kernel family, each with `run(gpu, opts) ->
//! KernelReport`: it draws `opts.cases` cases from a seeded ChaCha stream (the
//! same seed gives the same cases on every machine), runs the sim kernel and
//! the HIP kernel on the same inputs, and feeds both outputs to a [`Tally`].

pub mod backends;
pub mod cases;
pub mod contract;
pub mod flash_varlen;
pub mod flash_varlen_tc;
pub mod flex_attention;
pub mod flex_attention_tc;
pub mod gather_cache;
pub mod merge_attn_states;
pub mod mla_cache;
pub mod mla_decode;
pub mod mla_decode_tc;
pub mod mla_prefill;
pub mod mla_proj;
pub mod mma;
pub mod paged_decode;
pub mod paged_decode_2d_tc;
pub mod paged_decode_tc;
pub mod prefix_prefill;
pub mod prefix_prefill_tc;
pub mod reshape_and_cache;
pub mod unified_attention;
pub mod unified_attention_tc;

use crate::kernels::Gpu;
/// The byte helpers moved to the runtime; re-exported for launchers written against this path.
pub use crate::runtime::bytes::{bits_from_bytes, bytes_of, bytes_of_i32, bytes_of_i64};
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error as SharedError;
use attnlab_sim::backends::flavour::FlavourChoice;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Debug, Clone, Copy)]
pub struct DiffOptions {
    pub cases: usize,
    pub seed: u64,
    /// Stop drawing new cases after this instant (the report then says how
    /// many ran): a device call with a hard time limit still gets a report.
    pub deadline: Option<std::time::Instant>,
    /// The kernel flavour of the backend diffs (`--flavour`; the kernel
    /// families are their own flavour and ignore it).
    pub flavour: FlavourChoice,
}

impl DiffOptions {
    pub fn new(cases: usize, seed: u64) -> Self {
        DiffOptions {
            cases,
            seed,
            deadline: None,
            flavour: FlavourChoice::Fma,
        }
    }

    /// Whether to run another case after `done` of them.
    pub fn more(&self, done: usize) -> bool {
        done < self.cases && self.deadline.is_none_or(|d| std::time::Instant::now() < d)
    }
}

/// The first element whose bits differ.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub case: usize,
    /// What the case was (shapes, dtypes, options), for reproducing it.
    pub case_desc: String,
    pub tensor: String,
    /// Multi-dimensional index into `tensor`.
    pub index: Vec<usize>,
    pub sim_bits: String,
    pub gpu_bits: String,
    pub sim_value: f32,
    pub gpu_value: f32,
    /// Distance in units in the last place of the storage dtype.
    pub ulp: u64,
}

/// Per kernel: what `attnlab diff` prints.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    pub kernel: String,
    pub cases: usize,
    pub elements: u64,
    pub bit_exact: u64,
    pub first_mismatch: Option<Mismatch>,
    /// Per-part reports of a diff that covers several forms (the `mma`
    /// diff: one per instruction form); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<KernelReport>,
}

impl KernelReport {
    pub fn passed(&self) -> bool {
        self.elements == self.bit_exact
    }
}

/// Accumulates comparisons for one kernel.
pub struct Tally {
    report: KernelReport,
}

impl Tally {
    pub fn new(kernel: &str) -> Self {
        Tally {
            report: KernelReport {
                kernel: kernel.to_string(),
                cases: 0,
                elements: 0,
                bit_exact: 0,
                first_mismatch: None,
                parts: Vec::new(),
            },
        }
    }

    /// Cases finished so far.
    pub fn cases(&self) -> usize {
        self.report.cases
    }

    pub fn case_done(&mut self) {
        self.report.cases += 1;
    }

    /// Compares two tensors of storage bit patterns (`dtype`'s width, zero
    /// extended) laid out row-major in `shape`.
    ///
    /// Every element's bit pattern must be equal, NaN payloads included
    /// (numerics.md §5): kernels that create a NaN write the canonical
    /// 0x7fc00000 explicitly rather than the hardware's default NaN.
    pub fn compare(
        &mut self,
        case_desc: &dyn Fn() -> String,
        tensor: &str,
        shape: &[usize],
        dtype: DType,
        sim: &[u32],
        gpu: &[u32],
    ) {
        let n = sim.len().min(gpu.len());
        self.report.elements += sim.len().max(gpu.len()) as u64;
        for i in 0..n {
            if sim[i] == gpu[i] {
                self.report.bit_exact += 1;
            } else if self.report.first_mismatch.is_none() {
                self.report.first_mismatch = Some(Mismatch {
                    case: self.report.cases,
                    case_desc: case_desc(),
                    tensor: tensor.to_string(),
                    index: unravel(i, shape),
                    sim_bits: format!("{:#x}", sim[i]),
                    gpu_bits: format!("{:#x}", gpu[i]),
                    sim_value: dtype.from_bits(sim[i]),
                    gpu_value: dtype.from_bits(gpu[i]),
                    ulp: ulp_distance(sim[i], gpu[i], dtype),
                });
            }
        }
        if sim.len() != gpu.len() && self.report.first_mismatch.is_none() {
            self.report.first_mismatch = Some(Mismatch {
                case: self.report.cases,
                case_desc: format!(
                    "{} (sim has {} elements, gpu {})",
                    case_desc(),
                    sim.len(),
                    gpu.len()
                ),
                tensor: tensor.to_string(),
                index: unravel(n, shape),
                sim_bits: String::new(),
                gpu_bits: String::new(),
                sim_value: f32::NAN,
                gpu_value: f32::NAN,
                ulp: u64::MAX,
            });
        }
    }

    /// Compares f32 values stored in `dtype` by their storage bits.
    pub fn compare_values(
        &mut self,
        case_desc: &dyn Fn() -> String,
        tensor: &str,
        shape: &[usize],
        dtype: DType,
        sim: &[f32],
        gpu_bits: &[u32],
    ) {
        let sim_bits: Vec<u32> = sim.iter().map(|&x| dtype.to_bits(x)).collect();
        self.compare(case_desc, tensor, shape, dtype, &sim_bits, gpu_bits);
    }

    pub fn finish(self) -> KernelReport {
        self.report
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// Ulps between two storage bit patterns: both mapped onto the ordered line
/// where consecutive representable values are consecutive integers
/// ([`attnlab_sim::fidelity::ordered`], the one replay's fidelity uses), then
/// subtracted.
pub fn ulp_distance(a: u32, b: u32, dtype: DType) -> u64 {
    use attnlab_sim::fidelity::ordered;
    ordered(a, dtype).abs_diff(ordered(b, dtype))
}

/// The seeded stream one kernel's cases come from (independent per kernel,
/// so adding a kernel does not change another's cases).
pub fn rng_for(kernel: &str, seed: u64) -> ChaCha8Rng {
    let salt = kernel.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    ChaCha8Rng::seed_from_u64(seed ^ salt)
}

/// A kernel diff: its name and its runner.
pub struct KernelDiff {
    pub kernel: &'static str,
    pub run: fn(&Gpu, DiffOptions) -> Result<KernelReport>,
}

/// Every kernel `attnlab diff` knows, in the order it runs them, then every
/// emulated MHA and MLA backend end to end (`diff::backends`).
pub static KERNEL_DIFFS: &[KernelDiff] = &[
    KernelDiff {
        kernel: "contract",
        run: contract::run,
    },
    KernelDiff {
        kernel: "reshape_and_cache",
        run: reshape_and_cache::run,
    },
    KernelDiff {
        kernel: "merge_attn_states",
        run: merge_attn_states::run,
    },
    KernelDiff {
        kernel: "unified_attention",
        run: unified_attention::run,
    },
    KernelDiff {
        kernel: "unified_attention_tc",
        run: unified_attention_tc::run,
    },
    KernelDiff {
        kernel: "paged_decode",
        run: paged_decode::run,
    },
    KernelDiff {
        kernel: "paged_decode_2d_tc",
        run: paged_decode_2d_tc::run,
    },
    KernelDiff {
        kernel: "paged_decode_tc",
        run: paged_decode_tc::run,
    },
    KernelDiff {
        kernel: "prefix_prefill",
        run: prefix_prefill::run,
    },
    KernelDiff {
        kernel: "prefix_prefill_tc",
        run: prefix_prefill_tc::run,
    },
    KernelDiff {
        kernel: "gather_cache",
        run: gather_cache::run,
    },
    KernelDiff {
        kernel: "flash_varlen",
        run: flash_varlen::run,
    },
    KernelDiff {
        kernel: "flash_varlen_tc",
        run: flash_varlen_tc::run,
    },
    KernelDiff {
        kernel: "mla_cache",
        run: mla_cache::run,
    },
    KernelDiff {
        kernel: "mla_decode",
        run: mla_decode::run,
    },
    KernelDiff {
        kernel: "mla_decode_tc",
        run: mla_decode_tc::run,
    },
    KernelDiff {
        kernel: "mla_proj",
        run: mla_proj::run,
    },
    KernelDiff {
        kernel: "mla_prefill",
        run: mla_prefill::run,
    },
    KernelDiff {
        kernel: "flex_attention",
        run: flex_attention::run,
    },
    KernelDiff {
        kernel: "flex_attention_tc",
        run: flex_attention_tc::run,
    },
    KernelDiff {
        kernel: "mma",
        run: mma::run,
    },
    KernelDiff {
        kernel: "TRITON_ATTN",
        run: backends::triton_attn,
    },
    KernelDiff {
        kernel: "ROCM_ATTN",
        run: backends::rocm_attn,
    },
    KernelDiff {
        kernel: "ROCM_AITER_FA",
        run: backends::rocm_aiter_fa,
    },
    KernelDiff {
        kernel: "ROCM_AITER_UNIFIED_ATTN",
        run: backends::rocm_aiter_unified_attn,
    },
    KernelDiff {
        kernel: "FLEX_ATTENTION",
        run: backends::flex_attention,
    },
    KernelDiff {
        kernel: "TRITON_MLA",
        run: backends::triton_mla,
    },
    KernelDiff {
        kernel: "ROCM_AITER_MLA",
        run: backends::rocm_aiter_mla,
    },
    KernelDiff {
        kernel: "ROCM_AITER_TRITON_MLA",
        run: backends::rocm_aiter_triton_mla,
    },
];

/// The diffs `--backend NAME|all` selects (kernel names are accepted too).
pub fn select(name: &str) -> Result<Vec<&'static KernelDiff>> {
    if name == "all" {
        return Ok(KERNEL_DIFFS.iter().collect());
    }
    let hit: Vec<_> = KERNEL_DIFFS.iter().filter(|d| d.kernel == name).collect();
    if hit.is_empty() {
        let names: Vec<&str> = KERNEL_DIFFS.iter().map(|d| d.kernel).collect();
        return Err(SharedError::invalid(
            "--backend",
            format!("'{name}'"),
            format!("all, {}", names.join(", ")),
        )
        .into());
    }
    Ok(hit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulp_distance_counts_representable_values_across_zero() {
        assert_eq!(
            ulp_distance(1.0f32.to_bits(), 1.0f32.to_bits(), DType::F32),
            0
        );
        let next = f32::from_bits(1.0f32.to_bits() + 1);
        assert_eq!(
            ulp_distance(1.0f32.to_bits(), next.to_bits(), DType::F32),
            1
        );
        // +0 and -0 are the same point; the smallest subnormals either side are 2 apart.
        assert_eq!(ulp_distance(0, 0x8000_0000, DType::F32), 0);
        assert_eq!(ulp_distance(1, 0x8000_0001, DType::F32), 2);
        assert_eq!(ulp_distance(0x3c00, 0x3c01, DType::F16), 1);
        assert_eq!(ulp_distance(0x01, 0x81, DType::Fp8E4m3Fn), 2);
    }

    #[test]
    fn tally_reports_the_first_mismatch_with_its_index() {
        let mut t = Tally::new("k");
        t.compare(
            &|| "case".into(),
            "out",
            &[2, 3],
            DType::F32,
            &[1, 2, 3, 4, 5, 6],
            &[1, 2, 3, 4, 9, 7],
        );
        t.case_done();
        let r = t.finish();
        assert_eq!((r.elements, r.bit_exact), (6, 4));
        assert!(!r.passed());
        let m = r.first_mismatch.expect("a mismatch");
        assert_eq!(m.index, vec![1, 1]);
        assert_eq!((m.sim_bits.as_str(), m.gpu_bits.as_str()), ("0x5", "0x9"));
    }

    #[test]
    fn storage_bytes_round_trip_through_bits() {
        for dt in attnlab_shared::dtype::ALL_DTYPES {
            let vals: Vec<f32> = [0.5f32, -1.25, 3.0, 0.0]
                .iter()
                .map(|&v| dt.round(v))
                .collect();
            let bits = bits_from_bytes(&bytes_of(&vals, dt), dt);
            let back: Vec<f32> = bits.iter().map(|&b| dt.from_bits(b)).collect();
            assert_eq!(back, vals, "{dt}");
        }
    }

    #[test]
    fn select_names_the_known_kernels_on_a_typo() {
        let e = select("reshape_and_cash")
            .err()
            .expect("rejected")
            .to_string();
        assert!(
            e.contains("reshape_and_cache") && e.contains("'reshape_and_cash'"),
            "{e}"
        );
        assert_eq!(select("all").expect("all").len(), KERNEL_DIFFS.len());
    }
}
