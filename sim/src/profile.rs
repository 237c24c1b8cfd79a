//! Which vLLM the emulator models, where vLLM's kernels changed behaviour
//! between the commits the shipped fixtures came from (the seed era,
//! `fixtures/MANIFEST.md`) and vLLM 0.34.0. The emulator models what the
//! kernel does, bugs included; [`crate::reference`] says what is right.
//!
//! The one place a behaviour is chosen per version. What differs (each read
//! in both versions' source; file and function named, no code copied):
//!
//! | behaviour | [`VllmProfile::Seed`] (default) | [`VllmProfile::V0_34`] |
//! |---|---|---|
//! | unified attention's fully-masked-row guard (`softmax_step`) | the guarded max becomes the running max: `M = 0` after a tile that is fully masked for a row that has seen no key (`triton_quant_kv/_helpers.py` @86a153bd `softmax_step`) | `M` stays -inf, only the exponent uses 0 (`triton_attention_helpers.py` `softmax_step`, `safe_m_j`) |
//! | unified attention's soft-cap (`apply_softcap`) | `c (e^y - e^-y) / (e^y + e^-y)`, NaN for \|y\| >= 88.73 (`_helpers.py` @86a153bd) | `c (1 - 2 / (e^(2y) + 1))`, saturates (`triton_attention_helpers.py`) |
//! | `reduce_segments` | every written segment (`s < nact`) enters max and sums (`triton_unified_attention.py` @00139433) | only `l > 0` and `m > -inf` segments set the max; the others are multiplied by 0, so a NaN partial still poisons the row (0.34 `reduce_segments`, `valid_segment`) |
//!
//! Unchanged between the two (checked, so no profile switch):
//! `chunked_prefill_paged_decode.py` `kernel_paged_attention_2d` (@69f87df
//! and 0.34: `where(m == -inf)` guards, M stays -inf, window-masked scores
//! set to -10000, no soft-cap) and `prefix_prefill.py` `_fwd_kernel` (@0420dfc
//! and 0.34: the same guards, no soft-cap). AITER's Triton unified kernel is
//! not vLLM's and keeps its own behaviour under both profiles (`M = 0`
//! guard, base-2 two-exponential soft-cap, reduce over every written
//! segment: `aiter/ops/triton/_triton_kernels/attention/unified_attention.py`).

use crate::kernels::softmax::MaskedRowMax;
use crate::kernels::unified_attention::SegmentReduce;
use crate::numerics::SoftcapFormula;
use attnlab_shared::error::{Error, Result};

/// A vLLM version whose kernel behaviour the emulator reproduces.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum VllmProfile {
    /// The commits the shipped fixtures were captured from (late 2025).
    #[default]
    Seed,
    /// The vLLM 0.34.0 release.
    V0_34,
}

impl VllmProfile {
    /// Every profile, default first.
    pub const ALL: [VllmProfile; 2] = [VllmProfile::Seed, VllmProfile::V0_34];

    /// The name `FromStr` reads: `seed` or `0.34`.
    pub fn name(self) -> &'static str {
        match self {
            VllmProfile::Seed => "seed",
            VllmProfile::V0_34 => "0.34",
        }
    }

    /// vLLM's unified attention: what the running max becomes after a tile
    /// fully masked for a row that has seen no key yet.
    pub fn unified_masked_row_max(self) -> MaskedRowMax {
        match self {
            VllmProfile::Seed => MaskedRowMax::KeepZero,
            VllmProfile::V0_34 => MaskedRowMax::KeepNegInf,
        }
    }

    /// vLLM's unified attention: how `apply_softcap` spells tanh.
    pub fn unified_softcap(self) -> SoftcapFormula {
        match self {
            VllmProfile::Seed => SoftcapFormula::VllmTwoExp,
            VllmProfile::V0_34 => SoftcapFormula::VllmOneExp,
        }
    }

    /// vLLM's `reduce_segments`: which segments take part.
    pub fn unified_reduce(self) -> SegmentReduce {
        match self {
            VllmProfile::Seed => SegmentReduce::AllWritten,
            VllmProfile::V0_34 => SegmentReduce::ValidOnly,
        }
    }
}

impl std::fmt::Display for VllmProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl VllmProfile {
    /// The profile of the vLLM that produced a capture, from its version
    /// string (`capture.vllm` of an attn-fixture/2 file, e.g. `0.34.0`):
    /// 0.34 and later releases -> [`VllmProfile::V0_34`]; anything else
    /// (the seed-era commits, no record) -> the default.
    pub fn of_vllm_version(version: Option<&str>) -> VllmProfile {
        let Some(v) = version else {
            return VllmProfile::default();
        };
        let mut parts = v.trim_start_matches('v').split('.').map(|p| {
            p.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u32>()
                .ok()
        });
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(major), Some(minor)) if (major, minor) >= (0, 34) => VllmProfile::V0_34,
            _ => VllmProfile::default(),
        }
    }
}

impl std::str::FromStr for VllmProfile {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        VllmProfile::ALL
            .into_iter()
            .find(|p| p.name() == s || (s == "0.34.0" && *p == VllmProfile::V0_34))
            .ok_or_else(|| Error::invalid("vLLM profile", s, "one of: seed, 0.34"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_versions_map_to_the_profile_of_their_kernels() {
        let of = |v| VllmProfile::of_vllm_version(v);
        assert_eq!(of(Some("0.34.0")), VllmProfile::V0_34);
        assert_eq!(of(Some("v0.35.1rc2")), VllmProfile::V0_34);
        assert_eq!(of(Some("1.0.0")), VllmProfile::V0_34);
        assert_eq!(of(Some("0.33.1")), VllmProfile::Seed);
        assert_eq!(of(Some("0.11.0+rocm")), VllmProfile::Seed);
        assert_eq!(of(Some("garbage")), VllmProfile::Seed);
        assert_eq!(of(None), VllmProfile::Seed);
    }

    #[test]
    fn profiles_parse_from_their_names_and_reject_others() {
        for p in VllmProfile::ALL {
            assert_eq!(p.name().parse::<VllmProfile>().unwrap(), p);
        }
        assert_eq!("0.34.0".parse::<VllmProfile>().unwrap(), VllmProfile::V0_34);
        let e = "0.33".parse::<VllmProfile>().unwrap_err().to_string();
        assert!(e.contains("0.33") && e.contains("seed, 0.34"), "{e}");
    }

    #[test]
    fn the_default_is_the_fixtures_era() {
        assert_eq!(VllmProfile::default(), VllmProfile::Seed);
    }
}
