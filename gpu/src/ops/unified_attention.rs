//! Launcher for `kernels/unified_attention.hip` (2D, or 3D + reduce_segments),
//! mirroring `attnlab_sim::kernels::unified_attention::unified_attention`.

use crate::diff::{bits_from_bytes, bytes_of, bytes_of_i32};
use crate::kernels::{qkv_defines, Gpu};
use crate::runtime::{Arg, ArgStruct, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error;
use attnlab_shared::layout::LayoutKind;
use attnlab_shared::metadata::AttentionMetadata;
use attnlab_sim::cache::KvCache;
use attnlab_sim::config::AttnConfig;
use attnlab_sim::kernels::unified_attention::{Flavor, Grid, UnifiedLaunch};
use attnlab_sim::numerics::softmax_scale_log2;

/// Static shared memory every CUDA/HIP device grants without opting in.
pub const SHARED_MEMORY_LIMIT: usize = 48 * 1024;

/// Re-checks metadata whose public fields may have been edited since it was
/// built: the same validation `AttentionMetadata::new` runs (block ids inside
/// the cache, lengths, slots), plus the cache it will be read from.
pub fn validate_metadata(meta: &AttentionMetadata, cache: &KvCache) -> Result<()> {
    let fresh = AttentionMetadata::new(
        meta.block_size,
        meta.num_blocks,
        meta.query_start_loc.clone(),
        meta.seq_lens.clone(),
        meta.block_table.clone(),
        meta.slot_mapping.clone(),
        meta.causal,
    )?;
    if fresh.num_actual_tokens != meta.num_actual_tokens {
        return Err(Error::invalid(
            "num_actual_tokens",
            meta.num_actual_tokens,
            format!("query_start_loc's last entry {}", fresh.num_actual_tokens),
        )
        .into());
    }
    let l = &cache.layout;
    if l.block_size != meta.block_size || l.num_blocks < meta.num_blocks {
        return Err(Error::invalid(
            "cache",
            format!("{} blocks of {}", l.num_blocks, l.block_size),
            format!(
                "block size {} and >= {} blocks",
                meta.block_size, meta.num_blocks
            ),
        )
        .into());
    }
    if cache.k.len() != l.numel() || cache.v.len() != l.numel() {
        return Err(Error::invalid(
            "cache tensors",
            format!("{} / {}", cache.k.len(), cache.v.len()),
            format!("{} elements each", l.numel()),
        )
        .into());
    }
    Ok(())
}

/// `[T, Hq, D]` output bits in `cfg.dtype`.
pub fn unified_attention(
    gpu: &Gpu,
    query: &[f32],
    cache: &KvCache,
    meta: &AttentionMetadata,
    cfg: &AttnConfig,
    launch: &UnifiedLaunch,
) -> Result<Vec<u32>> {
    cfg.validate()?;
    validate_metadata(meta, cache)?;
    let l = &cache.layout;
    if l.kind != LayoutKind::Nhd
        || (l.num_kv_heads, l.head_size, l.dtype) != (cfg.num_kv_heads, cfg.head_size, cfg.kv_dtype)
    {
        return Err(Error::invalid(
            "cache layout",
            format!("{:?}", l),
            "NHD with the layer's kv heads, head size and kv dtype",
        )
        .into());
    }
    let (t_n, hq, d) = (meta.num_actual_tokens, cfg.num_heads, cfg.head_size);
    if query.len() != t_n * hq * d {
        return Err(Error::invalid(
            "query length",
            query.len(),
            format!("num_tokens x num_heads x head_size = {}", t_n * hq * d),
        )
        .into());
    }
    let qpk = cfg.queries_per_kv();
    if launch.block_q == 0 || launch.block_q * qpk > launch.block_m || launch.tile_size == 0 {
        return Err(Error::invalid(
            "launch",
            format!("{launch:?}"),
            "BLOCK_Q >= 1, BLOCK_Q * qpk <= BLOCK_M, TILE_SIZE >= 1",
        )
        .into());
    }
    if launch.flavor == Flavor::Aiter && !meta.causal {
        return Err(Error::unsupported(
            "non-causal AITER unified_attention",
            "Only causal attention is supported",
        )
        .into());
    }
    let num_segments = match launch.grid {
        Grid::TwoD => 1,
        Grid::ThreeD { num_segments: 0 } => {
            return Err(Error::invalid("num_segments", 0, "must be >= 1").into())
        }
        Grid::ThreeD { num_segments } => num_segments,
    };
    let rows = launch.block_q * qpk;
    let shared = (rows * launch.tile_size + rows * d + 3 * rows) * 4;
    if shared > SHARED_MEMORY_LIMIT {
        return Err(Error::invalid("shared memory of one program", shared, format!("at most {SHARED_MEMORY_LIMIT} bytes: (BLOCK_Q * qpk) x (TILE_SIZE + head_size + 3) f32")).into());
    }
    let out_bytes = t_n * hq * d * cfg.dtype.size_bytes();
    if t_n == 0 {
        return Ok(vec![]);
    }
    let dev = gpu.dev.as_ref();
    let defines = qkv_defines(cfg.dtype, cfg.kv_dtype);
    let q = Buffer::from_bytes(dev, &bytes_of(query, cfg.dtype))?;
    let kc = Buffer::from_bytes(dev, &bytes_of(&cache.k, cfg.kv_dtype))?;
    let vc = Buffer::from_bytes(dev, &bytes_of(&cache.v, cfg.kv_dtype))?;
    let bt = Buffer::from_bytes(dev, &bytes_of_i32(&meta.block_table.data))?;
    let qsl = Buffer::from_bytes(dev, &bytes_of_i32(&meta.query_start_loc))?;
    let sl = Buffer::from_bytes(dev, &bytes_of_i32(&meta.seq_lens))?;
    let sinks = Buffer::from_bytes(
        dev,
        &bytes_of(cfg.sinks.as_deref().unwrap_or(&[0.0]), DType::F32),
    )?;
    let alibi = Buffer::from_bytes(
        dev,
        &bytes_of(cfg.alibi_slopes.as_deref().unwrap_or(&[0.0]), DType::F32),
    )?;
    let out = Buffer::zeroed(dev, out_bytes)?;
    let parts = t_n * hq * num_segments;
    let is_3d = num_segments > 1 || matches!(launch.grid, Grid::ThreeD { .. });
    let (p_n, p_acc) = if is_3d { (parts, parts * d) } else { (1, 1) };
    let segm_acc = Buffer::zeroed(dev, p_acc * 4)?;
    let segm_m = Buffer::from_bytes(dev, &bytes_of(&vec![f32::NEG_INFINITY; p_n], DType::F32))?;
    let segm_l = Buffer::zeroed(dev, p_n * 4)?;
    // AITER folds k_descale into the score scale (as the sim's Kernel::new).
    let scale = match launch.flavor {
        Flavor::Aiter if cfg.kv_dtype.is_fp8() => cfg.scale * cfg.k_scale,
        _ => cfg.scale,
    };
    let args = ArgStruct::default()
        .i64(meta.num_reqs() as i64)
        .i64(hq as i64)
        .i64(cfg.num_kv_heads as i64)
        .i64(d as i64)
        .i64(meta.block_size as i64)
        .i64(meta.block_table.max_blocks as i64)
        .i64(launch.block_m as i64)
        .i64(launch.block_q as i64)
        .i64(launch.tile_size as i64)
        .i64(num_segments as i64)
        .i64(cfg.sliding_window.unwrap_or(0) as i64)
        .i32(meta.causal as i32)
        .i32(matches!(launch.flavor, Flavor::Aiter) as i32)
        .i32(is_3d as i32)
        .i32(cfg.sinks.is_some() as i32)
        .i32(cfg.alibi_slopes.is_some() as i32)
        .f32(scale)
        .f32(softmax_scale_log2(scale))
        .f32(cfg.softcap.unwrap_or(0.0))
        .f32(cfg.k_scale)
        .f32(cfg.v_scale)
        .arg();
    let q_blocks = launch.total_q_blocks(meta);
    let grid = [
        to_u32(q_blocks, "q blocks")?,
        to_u32(cfg.num_kv_heads, "kv heads")?,
        to_u32(num_segments, "segments")?,
    ];
    let f = gpu.function("unified_attention", &defines, "unified_attention")?;
    let ptrs = [
        &q, &kc, &vc, &bt, &qsl, &sl, &sinks, &alibi, &out, &segm_acc, &segm_m, &segm_l,
    ];
    let mut call: Vec<Arg> = ptrs.iter().map(|b| b.arg()).collect();
    call.push(args);
    dev.launch(
        f,
        LaunchDims {
            grid,
            block: [128, 1, 1],
            shared_bytes: shared as u32,
        },
        &call,
    )?;
    if is_3d {
        let r = gpu.function("unified_attention", &defines, "reduce_segments")?;
        let dims = LaunchDims {
            grid: [to_u32(t_n, "tokens")?, to_u32(hq, "heads")?, 1],
            block: [d.min(128) as u32, 1, 1],
            shared_bytes: 0,
        };
        let call = [
            segm_acc.arg(),
            segm_m.arg(),
            segm_l.arg(),
            qsl.arg(),
            sl.arg(),
            out.arg(),
            Arg::I64(meta.num_reqs() as i64),
            Arg::I64(hq as i64),
            Arg::I64(d as i64),
            Arg::I64(num_segments as i64),
            Arg::I64(launch.tile_size as i64),
        ];
        dev.launch(r, dims, &call)?;
    }
    Ok(bits_from_bytes(&out.to_bytes()?, cfg.dtype))
}

pub(crate) fn to_u32(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::invalid(what, v, "a launch dimension below 2^32").into())
}
