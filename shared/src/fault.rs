//! The real-bug zoo (issue 14): attention bugs that reached vLLM, AITER,
//! FlashInfer, flash-attention and SGLang users, each as a [`Fault`] the
//! emulator can be run with. A fault is injected at the one place its real
//! bug lived (a selection rule, a block-table rule, a launch wrapper, a
//! kernel's index arithmetic) and nowhere else; `attnlab zoo` runs the
//! property suite against each and reports whether it is caught.
//!
//! Faults travel explicitly: a [`FaultSet`] is a field of the configs the
//! kernels and backends already take (`AttnConfig::faults`,
//! `MlaConfig::faults`, `VllmLaunchOptions::faults`) or an argument of the
//! `shared` rule it breaks, never a global or thread-local, so rayon worker
//! threads see the same set as the caller. Off by default: an empty set, and
//! a check is one bit test of a `u32` held by value.
//!
//! Tracker references and root causes are facts from the public trackers,
//! in our own words; the code that re-creates each (where a tracker names
//! only the symptom, a mechanism that produces it at the same place) is
//! attnlab's own, described per fault in docs/src/bugs.md.

use crate::error::{Error, Result};
use serde::Serialize;

macro_rules! faults {
    ($( $(#[$doc:meta])* $v:ident = $name:literal, $tracker:literal, $cause:literal; )*) => {
        /// One bug that reached users (see the module doc).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(into = "&'static str")]
        pub enum Fault {
            $( $(#[$doc])* $v, )*
        }

        impl Fault {
            /// Every fault, in the order.
            pub const ALL: &'static [Fault] = &[$(Fault::$v),*];

            /// The kebab-case name `attnlab zoo --fault` takes.
            pub fn name(self) -> &'static str {
                match self { $(Fault::$v => $name,)* }
            }

            /// Where the bug was reported or fixed.
            pub fn tracker(self) -> &'static str {
                match self { $(Fault::$v => $tracker,)* }
            }

            /// The bug's root cause, in one line.
            pub fn root_cause(self) -> &'static str {
                match self { $(Fault::$v => $cause,)* }
            }
        }
    };
}

faults! {
    /// AITER's MLA decode read `kv_indices` as token slots whatever the page size.
    AiterMlaPageSizeIgnored = "aiter-mla-page-size-ignored", "ROCm/aiter #2996, #3095",
        "AITER's MLA decode ignored a page_size greater than 1";
    /// AITER multiplied a page id by the page stride in 32 bits.
    AiterPageAddressMul32 = "aiter-page-address-mul32", "ROCm/aiter PR #4351",
        "the page address page_id * page_stride was multiplied in 32 bits and wrapped past 2^31 elements";
    /// vLLM's Triton MLA decode multiplied an int32 page number by the stride.
    TritonMlaPageStrideI32 = "triton-mla-page-stride-i32", "vllm-project/vllm PR #47671",
        "the Triton MLA decode computed kv_page_number * stride in int32, wrapping on large caches";
    /// FlexAttention's paged K/V offsets wrapped in int32.
    FlexPagedOffsetI32 = "flex-paged-offset-i32", "vllm-project/vllm #50427",
        "FlexAttention's paged path computed K/V element offsets in int32, wrapping past 2^31";
    /// AITER truncated a block id to 16 bits.
    BlockIdU16 = "block-id-u16", "ROCm/aiter #3062",
        "a block id was stored in 16 bits, so block 65,536 aliased block 0";
    /// SGLang sized kv_indices per block instead of per token.
    KvIndicesPerBlock = "kv-indices-per-block", "sgl-project/sglang PR #25556",
        "kv_indices (one entry per page-size-1 token) was sized by the number of blocks and truncated";
    /// Merging two partials whose LSEs are both -inf gave NaN.
    MergeNegInfNan = "merge-neg-inf-nan", "vllm-project/vllm PR #39148, flashinfer-ai/flashinfer #4051",
        "merge_attn_states computed exp(-inf - -inf) = NaN when neither side had a key";
    /// A row with no keys got an LSE of +inf.
    EmptyRowPlusInfLse = "empty-row-plus-inf-lse", "Dao-AILab/flash-attention PR #978",
        "a query row that saw no key returned LSE +inf instead of -inf";
    /// The Triton chunked-prefill attention returned a wrong LSE.
    ChunkedPrefillLse = "chunked-prefill-lse", "vllm-project/vllm PR #14316",
        "the Triton chunked-prefill attention kernel returned a wrong LSE";
    /// AITER's chunked MLA prefill combined chunk LSEs wrongly.
    ChunkedMlaPrefillLse = "chunked-mla-prefill-lse", "ROCm/aiter PR #3606",
        "chunked MLA prefill returned a wrong LSE for its context chunks";
    /// SPLIT_UNMASKED_LOOP took the union of the rows' unmasked key ranges.
    SplitUnmaskedUnion = "split-unmasked-union", "ROCm/aiter #5741",
        "with SPLIT_UNMASKED_LOOP and a window, a program skipped masks on the union of its rows' unmasked tiles, not their intersection";
    /// A sliding window handed over in another convention.
    WindowConventionMixed = "window-convention-mixed", "vllm-project/vllm PRs #29065, #34378, #15982",
        "sliding-window conventions ((-1, -1) for none, 0, W + 1) were mixed up between a backend and its kernel";
    /// ROCM_ATTN's sliding-window boundary was one token off.
    RocmAttnWindowOffByOne = "rocm-attn-window-off-by-one", "vllm-project/vllm #59550",
        "ROCM_ATTN's sliding-window boundary was one token off";
    /// The Triton cache writer did not admit block size 1056.
    CacheWriterBlock1056 = "cache-writer-block-1056", "vllm-project/vllm PR #35923",
        "the Triton KV-cache writer did not admit block size 1056, a hybrid model's block size the backend admits";
    /// A kernel claimed any block size but supported 16 and 32.
    AnyBlockSizeClaim = "any-block-size-claim", "vllm-project/vllm PR #31712",
        "a backend advertised any block size while its decode kernel only supports 16 and 32";
    /// Hybrid block sizes validated against the wrong list.
    HybridBlockSizeValidation = "hybrid-block-size-validation", "vllm-project/vllm PR #36292",
        "hybrid block sizes (272, 544, 784, 1056) were validated wrongly";
    /// BLOCK_Q * queries-per-KV used as a tl.arange extent.
    BlockQTimesQpkNonPow2 = "block-q-times-qpk-non-pow2", "vllm-project/vllm PR #18100",
        "BLOCK_M was BLOCK_Q * queries_per_kv (e.g. 5 * 3 = 15), not a power of two, as a tl.arange extent";
    /// ll4mi with head size 32: VHELOOP = 0.
    Ll4miHeadSize32 = "ll4mi-head-size-32", "vllm-project/vllm #34570",
        "head size 32 reached the ll4mi kernel, whose VHELOOP came out 0 and left the output uninitialised";
    /// The 2D/3D threshold read the model-wide KV head count.
    ThresholdModelKvHeads = "threshold-model-kv-heads", "vllm-project/vllm #56996",
        "seq_threshold_3D was computed from the model's KV heads instead of this rank's, so the 2D/3D choice changed with TP";
    /// AITER MLA with fp8 KV and heads not a multiple of 16.
    AiterMlaFp8Heads = "aiter-mla-fp8-heads", "vllm-project/vllm #51011",
        "with an fp8 KV cache, head counts not divisible by 16 reached AITER MLA unpadded (GSM8K 97.19% -> 74.00%)";
    /// fp8 KV cache written in one format and read in the other.
    Fp8KvDtypeMismatch = "fp8-kv-dtype-mismatch", "vllm-project/vllm #45562",
        "an fp8 KV cache was read with another fp8 dtype than it was written with: silently wrong output";
}

impl Fault {
    /// Looks a fault up by [`Fault::name`], naming the allowed ones when it fails.
    pub fn parse(name: &str) -> Result<Fault> {
        Fault::ALL
            .iter()
            .copied()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                Error::invalid(
                    "fault",
                    format!("'{name}'"),
                    format!("allowed: {}, all", names.join(", ")),
                )
            })
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl From<Fault> for &'static str {
    fn from(f: Fault) -> &'static str {
        f.name()
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The faults a run injects; empty (no fault) by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FaultSet(u32);

impl FaultSet {
    /// No fault: the emulator as it is.
    pub const NONE: FaultSet = FaultSet(0);

    /// Exactly one fault.
    pub fn only(fault: Fault) -> FaultSet {
        FaultSet(fault.bit())
    }

    /// This set plus `fault`.
    pub fn with(self, fault: Fault) -> FaultSet {
        FaultSet(self.0 | fault.bit())
    }

    /// Whether `fault` is injected.
    #[inline(always)]
    pub fn has(self, fault: Fault) -> bool {
        self.0 & fault.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The injected faults, in [`Fault::ALL`] order.
    pub fn faults(self) -> Vec<Fault> {
        Fault::ALL
            .iter()
            .copied()
            .filter(|&f| self.has(f))
            .collect()
    }
}

impl From<Fault> for FaultSet {
    fn from(f: Fault) -> FaultSet {
        FaultSet::only(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_has_a_distinct_name_a_tracker_and_a_cause() {
        let mut names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Fault::ALL.len());
        assert_eq!(Fault::ALL.len(), 21, "the issue lists 21 bugs");
        for f in Fault::ALL {
            assert!(!f.tracker().is_empty() && !f.root_cause().is_empty(), "{f}");
            assert_eq!(Fault::parse(f.name()), Ok(*f));
        }
    }

    #[test]
    fn an_unknown_fault_name_lists_the_allowed_ones() {
        let e = Fault::parse("nope").unwrap_err().to_string();
        assert!(
            e.contains("'nope'") && e.contains("merge-neg-inf-nan"),
            "{e}"
        );
    }

    #[test]
    fn a_fault_set_holds_exactly_what_was_added() {
        let s = FaultSet::only(Fault::BlockIdU16).with(Fault::MergeNegInfNan);
        for f in Fault::ALL {
            let want = matches!(f, Fault::BlockIdU16 | Fault::MergeNegInfNan);
            assert_eq!(s.has(*f), want, "{f}");
        }
        assert_eq!(s.faults(), vec![Fault::BlockIdU16, Fault::MergeNegInfNan]);
        assert!(FaultSet::default().is_empty() && !s.is_empty());
    }
}
