//! Diff of the tensor-core 2D paged decode (`kernel_paged_attention_2d` on
//! the matrix cores) against its sim twin on the device's own matrix-core
//! model (sm_90 on an H100 and on the host at wave 32, gfx942 on the host
//! at wave 64, the GPU's CDNA generation on AMD), over the fma family's
//! space widened to the tiles this family stages: every KV layout
//! (ROCM_ATTN's x-packed one included), block sizes 1, 8 and 16 (one
//! padded 16-key tile), 32, 128 and 544 (32-key tiles), head sizes 32 to
//! 256, fp8 caches, sinks, windows, ALiBi and soft-cap, decode rows beside
//! extend and prefill rows (left untouched on both sides), and a quarter of
//! the cases with 17 to 24 query heads per kv head (a second, padded
//! 16-head tile). Draws the family refuses (fp32 queries, a cache neither
//! the query dtype nor fp8, a 128-key tile of head size 256 over the
//! staging limit) are drawn again.

use super::cases::{attention_diff, prefilled_output, CaseSpace, Outputs};
use super::{DiffOptions, KernelReport};
use crate::kernels::Gpu;
use crate::ops::flash_varlen_tc::matrix_target;
use crate::ops::paged_decode_2d_tc::paged_decode_2d_tc as gpu_tc;
use crate::runtime::Result;
use attnlab_shared::layout::LayoutKind;
use attnlab_sim::config::AttnConfigBuilder;
use attnlab_sim::kernels::paged_decode::PagedInputs;
use attnlab_sim::kernels::paged_decode_2d_tc::{paged_decode_2d_tc as sim_tc, Decode2dTcArgs};
use rand::Rng;

pub const SPACE: CaseSpace = CaseSpace {
    layouts: &[
        LayoutKind::Nhd,
        LayoutKind::RocmPaged,
        LayoutKind::AiterShuffled,
    ],
    block_sizes: &[16, 32, 1, 544, 8, 128],
    head_sizes: &[64, 128, 32, 256],
    max_reqs: 6,
    max_query_len: 4,
    max_context: 700,
    sinks: true,
    alibi: true,
    non_causal: false,
};

pub fn run(gpu: &Gpu, opts: DiffOptions) -> Result<KernelReport> {
    let target = matrix_target(&gpu.dev.info().target)?;
    attention_diff("paged_decode_2d_tc", opts, &SPACE, |rng, case| {
        if rng.gen_bool(0.25) {
            // More than 16 query heads per kv head: a second, padded tile.
            let (hkv, dt) = (case.cfg.num_kv_heads(), case.cfg.dtype());
            let hq = hkv * rng.gen_range(17..=24usize);
            case.cfg = AttnConfigBuilder {
                num_heads: hq,
                sinks: case
                    .cfg
                    .sinks()
                    .map(|_| (0..hq).map(|_| rng.gen_range(-3.0f32..3.0)).collect()),
                alibi_slopes: case
                    .cfg
                    .alibi_slopes()
                    .map(|_| (0..hq).map(|h| 2f32.powi(-(h as i32 % 8) - 1)).collect()),
                ..case.cfg.to_builder()
            }
            .build()?;
            let n = case.meta.num_actual_tokens() * hq * case.cfg.head_size();
            case.query = (0..n)
                .map(|_| dt.round(rng.gen_range(-1.0f32..1.0)))
                .collect();
        }
        let inputs = PagedInputs::new(&case.query, &case.cache, &case.meta, &case.cfg)?;
        let Ok(args) = Decode2dTcArgs::new(inputs, target) else {
            return Ok(None); // a dtype or tile the matrix kernel does not take
        };
        let init = prefilled_output(rng, case.query.len(), case.cfg.dtype());
        let mut sim = init.clone();
        sim_tc(&args, &mut sim)?;
        let gpu = gpu_tc(gpu, &args, &init)?;
        Ok(Some(Outputs {
            options: format!("{} tile {}", target.name(), args.padded_tile()),
            sim,
            gpu,
        }))
    })
}
