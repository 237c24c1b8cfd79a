//! Diff of unified attention (vLLM and AITER flavours, 2D and 3D + reduce)
//! over random mixed batches. The launch comes from each flavour's own rule
//! (`UnifiedLaunch::vllm` / `::aiter`) and then, half the time, has its grid
//! forced to 2D or to 3D with 1-16 segments so both paths see every shape.
//! One case in five is a longer batch ([`LONG_PREFILL`]): several 64-row
//! programs and 128-key blocks of the register-tiled 2D kernel per row, which
//! the short draws (one program, one block) never reach; 3D launches and
//! shapes the tiled kernel does not take run the scalar port.
//! vLLM launches draw their version profile (the seed era's `M = 0` guard,
//! two-exponential soft-cap and all-segment reduce, or 0.34's), and one case
//! in six is pushed into the regimes where those differ
//! ([`push_to_extremes`]): logits of hundreds, a small soft-cap (|s|/c far
//! beyond 88, so the two-exponential forms give NaN rows and NaN segment
//! partials) and a window of 1 or 2 (fully masked first tiles).

use super::cases::{attention_diff, draw, CaseSpace, Outputs};
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::unified_attention::unified_attention as gpu_unified;
use crate::runtime::Result;
use attnlab_shared::dtype::DType;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::kernels::unified_attention::{
    unified_attention as sim_unified, Grid, UnifiedArgs, UnifiedLaunch, VllmLaunchOptions,
    MI300X_CU_COUNT,
};
use attnlab_sim::profile::VllmProfile;
use rand::Rng;

/// Scales the queries by 2^6..2^8 (exact in every query dtype: |q| <= 2
/// stays far below f16's 65504) so scores reach hundreds, sets a soft-cap of
/// 0.5..4 and, half the time, a window of 1 or 2 keys.
pub fn push_to_extremes(rng: &mut impl Rng, case: &mut super::cases::AttnCase) -> Result<()> {
    let k = 2f32.powi(rng.gen_range(6..=8));
    let dt: DType = case.cfg.dtype();
    case.query.iter_mut().for_each(|x| *x = dt.round(*x * k));
    let mut cfg = case.cfg.to_builder();
    cfg.softcap = Some(rng.gen_range(0.5f32..4.0));
    if rng.gen_bool(0.5) {
        cfg.sliding_window = Some(rng.gen_range(1..=2));
    }
    case.cfg = cfg.build()?;
    Ok(())
}

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[1, 16, 32, 544],
    head_sizes: &[64, 128, 96],
    max_reqs: 5,
    max_query_len: 24,
    max_context: 100,
    sinks: true,
    alibi: true,
    non_causal: true,
};

/// Long prefill / extend rows (up to 200 new tokens on up to 200 cached).
pub const LONG_PREFILL: CaseSpace = CaseSpace {
    layouts: &[LayoutKind::Nhd],
    block_sizes: &[16, 32],
    head_sizes: &[64, 128, 96],
    max_reqs: 2,
    max_query_len: 200,
    max_context: 200,
    sinks: true,
    alibi: true,
    non_causal: true,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    attention_diff("unified_attention", opts, &SPACE, |rng, case| {
        if rng.gen_bool(0.2) {
            match draw(rng, &LONG_PREFILL) {
                Some(long) => *case = long,
                None => return Ok(None),
            }
        }
        if rng.gen_ratio(1, 6) {
            push_to_extremes(rng, case)?;
        }
        let aiter = case.meta.causal() && rng.gen_bool(0.5);
        let profile = VllmProfile::ALL[rng.gen_range(0..VllmProfile::ALL.len())];
        let launch = if aiter {
            UnifiedLaunch::aiter(&case.meta, &case.cfg, MI300X_CU_COUNT)?
        } else {
            let opts = VllmLaunchOptions {
                profile,
                ..VllmLaunchOptions::default()
            };
            UnifiedLaunch::vllm(&case.meta, &case.cfg, opts)?
        };
        let launch = match rng.gen_range(0..4) {
            0 => launch.with_grid(Grid::TwoD),
            1 => launch.with_grid(Grid::ThreeD {
                num_segments: [1, 2, 4, 16][rng.gen_range(0..4)],
            }),
            _ => launch,
        };
        let sim = sim_unified(&case.query, &case.cache, &case.meta, &case.cfg, &launch)?;
        let args = UnifiedArgs::new(&case.query, &case.cache, &case.meta, &case.cfg, &launch)?;
        let gpu = gpu_unified(gpu, &args)?;
        let options = format!(
            "{:?} (vLLM profile {}) {:?} BLOCK_M {} TILE {}",
            launch.flavor, launch.profile, launch.grid, launch.block_m, launch.tile_size
        );
        Ok(Some(Outputs { options, sim, gpu }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The extreme draws reach what they are for: NaN rows under the seed
    /// era's two-exponential soft-cap (so the diff compares NaN outputs of
    /// both sides), none under vLLM 0.34's formula, on the same cases.
    #[test]
    fn extreme_draws_reach_nan_rows_under_the_seed_profile_only() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut seed_nan, mut drawn) = (0, 0);
        while drawn < 6 {
            let Some(mut case) = draw(&mut rng, &SPACE) else {
                continue;
            };
            drawn += 1;
            push_to_extremes(&mut rng, &mut case).unwrap();
            let run = |profile| {
                let opts = VllmLaunchOptions {
                    profile,
                    ..VllmLaunchOptions::default()
                };
                let launch = UnifiedLaunch::vllm(&case.meta, &case.cfg, opts).unwrap();
                sim_unified(&case.query, &case.cache, &case.meta, &case.cfg, &launch).unwrap()
            };
            seed_nan += run(VllmProfile::Seed).iter().filter(|x| x.is_nan()).count();
            let v0_34 = run(VllmProfile::V0_34);
            assert!(v0_34.iter().all(|x| !x.is_nan()), "{}", case.describe());
        }
        assert!(seed_nan > 0, "no NaN row in {drawn} extreme draws");
    }
}
