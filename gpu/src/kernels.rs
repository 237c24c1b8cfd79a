//! The HIP sources in `kernels/`, how they are compiled, and the per-device
//! module cache.
//!
//! Each family is one `kernels/<name>.hip` file; [`translation_unit`] pastes
//! `portable.h` in front of it so NVRTC, hipRTC and hipcc all see one
//! self-contained unit (no include paths to configure). The sources are
//! embedded at build time; `ATTNLAB_KERNELS_DIR` points at a checkout's
//! `kernels/` to try edits without rebuilding. Compile-time constants (dtypes,
//! block sizes) are `-D` defines; modules are cached per (family, target,
//! defines).

use crate::runtime::{Device, FunctionId, GpuError, ModuleId, Result};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error as SharedError;
use std::collections::HashMap;
use std::sync::Mutex;

/// One kernel family: a `.hip` file and the `-D` variants `gpu compile` builds.
pub struct Family {
    pub name: &'static str,
    embedded: &'static str,
    /// Entry points (`extern "C" __global__`), for reports.
    pub entries: &'static [&'static str],
    /// Representative define sets: every one must compile on every target.
    pub variants: fn() -> Vec<Defines>,
}

pub type Defines = Vec<(String, String)>;

pub const PORTABLE_H: &str = include_str!("../../kernels/portable.h");

/// `-D NAME=<dtype code>` in `portable.h`'s DT_* numbering.
pub fn dtype_define(name: &str, dt: DType) -> (String, String) {
    let code = match dt {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Bf16 => 2,
        DType::Fp8E4m3Fnuz => 3,
        DType::Fp8E4m3Fn => 4,
    };
    (name.to_string(), code.to_string())
}

/// The query and KV-cache dtype defines every attention family is compiled with.
pub fn qkv_defines(q: DType, kv: DType) -> [(String, String); 2] {
    [dtype_define("Q_DTYPE", q), dtype_define("KV_DTYPE", kv)]
}

/// The `-D` set of one compiled `flash_varlen_tc` shape (the module cache
/// keys on it).
pub fn varlen_tc_defines(
    dt: DType,
    d: usize,
    dv: usize,
    block_n: usize,
    warps: usize,
) -> Vec<(String, String)> {
    vec![
        dtype_define("DTYPE", dt),
        ("FT_D".to_string(), d.to_string()),
        ("FT_DV".to_string(), dv.to_string()),
        ("FT_BN".to_string(), block_n.to_string()),
        ("FT_WARPS".to_string(), warps.to_string()),
    ]
}

/// One variant per dtype of the single define `name`.
fn each_dtype(name: &str, dtypes: &[DType]) -> Vec<Defines> {
    dtypes
        .iter()
        .map(|&d| vec![dtype_define(name, d)])
        .collect()
}

/// One variant per (a, b) dtype pair of the defines `a` and `b`.
fn dtype_pairs(a: &str, b: &str, pairs: &[(DType, DType)]) -> Vec<Defines> {
    pairs
        .iter()
        .map(|&(x, y)| vec![dtype_define(a, x), dtype_define(b, y)])
        .collect()
}

fn contract_variants() -> Vec<Defines> {
    each_dtype("ROUND_DTYPE", &attnlab_shared::dtype::ALL_DTYPES)
}

/// (source, cache) dtype pairs: same-dtype caches and both fp8 flavours.
fn reshape_and_cache_variants() -> Vec<Defines> {
    dtype_pairs(
        "SRC_DTYPE",
        "CACHE_DTYPE",
        &[
            (DType::Bf16, DType::Bf16),
            (DType::F16, DType::Fp8E4m3Fnuz),
            (DType::F32, DType::Fp8E4m3Fn),
        ],
    )
}

fn merge_variants() -> Vec<Defines> {
    each_dtype("OUT_DTYPE", &[DType::F32, DType::F16, DType::Bf16])
}

/// (query, cache) dtype pairs of the attention kernels.
fn attention_variants() -> Vec<Defines> {
    [
        (DType::Bf16, DType::Bf16),
        (DType::F16, DType::Fp8E4m3Fnuz),
        (DType::Bf16, DType::Fp8E4m3Fn),
    ]
    .iter()
    .map(|&(q, kv)| qkv_defines(q, kv).to_vec())
    .collect()
}

/// (cache, workspace) dtype pairs of the context gathers (MHA's
/// cp_mha_gather_cache and MLA's gather_and_maybe_dequant_cache).
fn gather_variants() -> Vec<Defines> {
    dtype_pairs(
        "KV_DTYPE",
        "DST_DTYPE",
        &[
            (DType::Bf16, DType::Bf16),
            (DType::Fp8E4m3Fnuz, DType::Bf16),
            (DType::Fp8E4m3Fn, DType::F16),
        ],
    )
}

/// (query, cache) dtypes of the tensor-core kernels: bf16 and f16, cache as the query.
fn tc_variants() -> Vec<Defines> {
    [DType::Bf16, DType::F16]
        .iter()
        .map(|&d| qkv_defines(d, d).to_vec())
        .collect()
}

/// The `-D` set of one compiled `unified_attention_tc` shape: query and
/// cache dtypes (the cache in the query dtype or fp8), head size,
/// TILE_SIZE, BLOCK_M, waves per workgroup.
pub fn unified_tc_defines(
    q: DType,
    kv: DType,
    d: usize,
    tile: usize,
    block_m: usize,
    warps: usize,
) -> Vec<(String, String)> {
    let mut v = qkv_defines(q, kv).to_vec();
    for (k, x) in [
        ("UT_D", d),
        ("UT_TILE", tile),
        ("UT_BM", block_m),
        ("UT_WARPS", warps),
    ] {
        v.push((k.to_string(), x.to_string()));
    }
    v
}

/// The `-D` set of one compiled `prefix_prefill_tc` shape: query and cache
/// dtypes, head size, the two phases' key tiles (cached context, new
/// tokens), waves per workgroup.
pub fn prefix_tc_defines(
    q: DType,
    kv: DType,
    d: usize,
    ctx_tile: usize,
    block_n: usize,
    warps: usize,
) -> Vec<(String, String)> {
    let mut v = qkv_defines(q, kv).to_vec();
    for (k, x) in [
        ("PP_D", d),
        ("PP_CT", ctx_tile),
        ("PP_BN", block_n),
        ("PP_WARPS", warps),
    ] {
        v.push((k.to_string(), x.to_string()));
    }
    v
}

/// `_fwd_kernel`'s tiles (32 / 64) at d 128 for bf16, f16 and an fp8 cache,
/// and `_fwd_kernel_alibi`'s (128 / 128) for bf16.
fn prefix_tc_variants() -> Vec<Defines> {
    vec![
        prefix_tc_defines(DType::Bf16, DType::Bf16, 128, 32, 64, 4),
        prefix_tc_defines(DType::F16, DType::F16, 128, 32, 64, 4),
        prefix_tc_defines(DType::Bf16, DType::Fp8E4m3Fnuz, 128, 32, 64, 4),
        prefix_tc_defines(DType::Bf16, DType::Bf16, 128, 128, 128, 4),
    ]
}

/// The `-D` set of one compiled `paged_decode_2d_tc` shape: query and
/// cache dtypes, head size, the staged tile (the 2D decode's TILE rounded
/// up to 16 keys).
pub fn decode_2d_tc_defines(
    q: DType,
    kv: DType,
    d: usize,
    padded_tile: usize,
) -> Vec<(String, String)> {
    let mut v = qkv_defines(q, kv).to_vec();
    v.push(("D2_D".to_string(), d.to_string()));
    v.push(("D2_TP".to_string(), padded_tile.to_string()));
    v
}

/// Block size 16 at d 128 for bf16, f16 and an fp8 cache, and the 128-key
/// tile (block size 128) for bf16.
fn decode_2d_tc_variants() -> Vec<Defines> {
    vec![
        decode_2d_tc_defines(DType::Bf16, DType::Bf16, 128, 16),
        decode_2d_tc_defines(DType::F16, DType::F16, 128, 16),
        decode_2d_tc_defines(DType::Bf16, DType::Fp8E4m3Fnuz, 128, 16),
        decode_2d_tc_defines(DType::Bf16, DType::Bf16, 128, 128),
    ]
}

/// The `-D` set of one compiled `flex_attention_tc` shape: dtype, head
/// size, BLOCK_N.
pub fn flex_tc_defines(dt: DType, d: usize, block_n: usize) -> Vec<(String, String)> {
    vec![
        dtype_define("DTYPE", dt),
        ("FX_D".to_string(), d.to_string()),
        ("FX_BN".to_string(), block_n.to_string()),
    ]
}

/// Both dtypes at d 128 with BLOCK_N 32 (FLEX_ATTENTION's on ROCm).
fn flex_tc_variants() -> Vec<Defines> {
    [DType::Bf16, DType::F16]
        .into_iter()
        .map(|dt| flex_tc_defines(dt, 128, 32))
        .collect()
}

/// Both dtypes at the bench's shape (d 128, vLLM's 2D TILE 32 and AITER's
/// prefill TILE 64, BLOCK_M 16, 4 waves) and one multi-wave program
/// (BLOCK_M 64), each with the cache in the query dtype; and both fp8
/// caches (TILE 16, vLLM 0.34's 3D decode tile, and TILE 32).
fn unified_tc_variants() -> Vec<Defines> {
    let mut v: Vec<Defines> = [DType::Bf16, DType::F16]
        .into_iter()
        .flat_map(|dt| {
            [(32usize, 16usize), (64, 16), (32, 64)]
                .map(|(tile, bm)| unified_tc_defines(dt, dt, 128, tile, bm, 4))
        })
        .collect();
    for (q, kv, tile) in [
        (DType::Bf16, DType::Fp8E4m3Fn, 16),
        (DType::F16, DType::Fp8E4m3Fnuz, 32),
    ] {
        v.push(unified_tc_defines(q, kv, 128, tile, 16, 4));
    }
    v
}

fn varlen_variants() -> Vec<Defines> {
    each_dtype("DTYPE", &[DType::Bf16, DType::F16])
}

/// Both dtypes at the bench's shape (d 128, 64-key tiles) with 4 and 8
/// waves per workgroup.
fn varlen_tc_variants() -> Vec<Defines> {
    [DType::Bf16, DType::F16]
        .into_iter()
        .flat_map(|dt| [4usize, 8].map(|w| varlen_tc_defines(dt, 128, 128, 64, w)))
        .collect()
}

/// (source, latent cache) dtype pairs.
fn mla_cache_variants() -> Vec<Defines> {
    dtype_pairs(
        "SRC_DTYPE",
        "CACHE_DTYPE",
        &[
            (DType::Bf16, DType::Bf16),
            (DType::Bf16, DType::Fp8E4m3Fnuz),
            (DType::F16, DType::Fp8E4m3Fn),
            // GpuExecutor writes the backends' steps from f32 (exact) sources.
            (DType::F32, DType::Fp8E4m3Fnuz),
        ],
    )
}

/// (query, latent cache, output, lse) dtypes: TRITON_MLA (lse in the query
/// dtype) and AITER (f32 lse) with both fp8 latent flavours.
fn mla_decode_variants() -> Vec<Defines> {
    [
        (DType::Bf16, DType::Bf16, DType::Bf16),
        (DType::Bf16, DType::Fp8E4m3Fnuz, DType::F32),
        (DType::F16, DType::Fp8E4m3Fn, DType::F16),
    ]
    .iter()
    .map(|&(q, kv, lse)| {
        vec![
            dtype_define("Q_DTYPE", q),
            dtype_define("KV_DTYPE", kv),
            dtype_define("OUT_DTYPE", q),
            dtype_define("LSE_DTYPE", lse),
        ]
    })
    .collect()
}

/// The `-D` set of one compiled `mla_decode_tc` shape: query and latent
/// cache dtypes, latent and rope widths (the module cache keys on it).
pub fn mla_tc_defines(q: DType, kv: DType, lkv: usize, rope: usize) -> Vec<(String, String)> {
    vec![
        dtype_define("Q_DTYPE", q),
        dtype_define("KV_DTYPE", kv),
        ("MTC_LKV".to_string(), lkv.to_string()),
        ("MTC_ROPE".to_string(), rope.to_string()),
    ]
}

/// DeepSeek's 512 + 64 latent with a 16-bit and both fp8 latent caches.
fn mla_tc_variants() -> Vec<Defines> {
    [
        (DType::Bf16, DType::Bf16),
        (DType::Bf16, DType::Fp8E4m3Fnuz),
        (DType::F16, DType::Fp8E4m3Fn),
    ]
    .iter()
    .map(|&(q, kv)| mla_tc_defines(q, kv, 512, 64))
    .collect()
}

/// Activation dtypes of the MLA projections.
fn mla_proj_variants() -> Vec<Defines> {
    each_dtype("DTYPE", &[DType::Bf16, DType::F16, DType::F32])
}

/// The input formats of the matrix-instruction probes (MMA_* codes:
/// bf16, f16, fp8, bf8).
fn mma_variants() -> Vec<Defines> {
    (0..4)
        .map(|code| vec![("MMA_FORMAT".to_string(), code.to_string())])
        .collect()
}

/// wgmma exists on bf16 and f16 only, and only on the arch-specific
/// target (sm_90a), which [`ARCH_SPECIFIC`] asks NVRTC for.
fn wgmma_variants() -> Vec<Defines> {
    [0, 1]
        .map(|code| {
            vec![
                ("MMA_FORMAT".to_string(), format!("{code}")),
                (ARCH_SPECIFIC.to_string(), "1".to_string()),
            ]
        })
        .to_vec()
}

pub use crate::runtime::ARCH_SPECIFIC;

fn fill_variants() -> Vec<Defines> {
    each_dtype("DTYPE", &[DType::Bf16])
}

pub static FAMILIES: &[Family] = &[
    Family {
        name: "contract",
        embedded: include_str!("../../kernels/contract.hip"),
        entries: &["contract_unary", "contract_round"],
        variants: contract_variants,
    },
    Family {
        name: "reshape_and_cache",
        embedded: include_str!("../../kernels/reshape_and_cache.hip"),
        entries: &["reshape_and_cache"],
        variants: reshape_and_cache_variants,
    },
    Family {
        name: "merge_attn_states",
        embedded: include_str!("../../kernels/merge_attn_states.hip"),
        entries: &["merge_attn_states"],
        variants: merge_variants,
    },
    Family {
        name: "unified_attention",
        embedded: include_str!("../../kernels/unified_attention.hip"),
        entries: &["unified_attention", "reduce_segments"],
        variants: attention_variants,
    },
    Family {
        name: "unified_attention_tc",
        embedded: include_str!("../../kernels/unified_attention_tc.hip"),
        entries: &["unified_attention_tc"],
        variants: unified_tc_variants,
    },
    Family {
        name: "paged_decode",
        embedded: include_str!("../../kernels/paged_decode.hip"),
        entries: &[
            "paged_attention_2d",
            "paged_attention_ll4mi_partition",
            "paged_attention_ll4mi_reduce",
        ],
        variants: attention_variants,
    },
    Family {
        name: "paged_decode_tc",
        embedded: include_str!("../../kernels/paged_decode_tc.hip"),
        entries: &[
            "paged_decode_tc_d64",
            "paged_decode_tc_d64_r16",
            "paged_decode_tc_d128",
            "paged_decode_tc_d128_r16",
            "paged_decode_tc_d128_prefetch",
            "paged_decode_tc_d128_b3",
            "paged_decode_tc_d128_l2",
            "paged_decode_tc_reduce",
        ],
        variants: tc_variants,
    },
    Family {
        name: "paged_decode_2d_tc",
        embedded: include_str!("../../kernels/paged_decode_2d_tc.hip"),
        entries: &["paged_decode_2d_tc"],
        variants: decode_2d_tc_variants,
    },
    Family {
        name: "prefix_prefill",
        embedded: include_str!("../../kernels/prefix_prefill.hip"),
        entries: &["context_attention_fwd"],
        variants: attention_variants,
    },
    Family {
        name: "prefix_prefill_tc",
        embedded: include_str!("../../kernels/prefix_prefill_tc.hip"),
        entries: &["context_attention_fwd_tc"],
        variants: prefix_tc_variants,
    },
    Family {
        name: "gather_cache",
        embedded: include_str!("../../kernels/gather_cache.hip"),
        entries: &["cp_mha_gather_cache"],
        variants: gather_variants,
    },
    Family {
        name: "flash_varlen",
        embedded: include_str!("../../kernels/flash_varlen.hip"),
        entries: &["flash_attn_varlen"],
        variants: varlen_variants,
    },
    Family {
        name: "flash_varlen_tc",
        embedded: include_str!("../../kernels/flash_varlen_tc.hip"),
        entries: &["flash_attn_varlen_tc"],
        variants: varlen_tc_variants,
    },
    Family {
        name: "mla_cache",
        embedded: include_str!("../../kernels/mla_cache.hip"),
        entries: &["concat_and_cache_mla"],
        variants: mla_cache_variants,
    },
    Family {
        name: "mla_decode",
        embedded: include_str!("../../kernels/mla_decode.hip"),
        entries: &["mla_decode_stage1", "mla_decode_stage2"],
        variants: mla_decode_variants,
    },
    Family {
        name: "mla_decode_tc",
        embedded: include_str!("../../kernels/mla_decode_tc.hip"),
        entries: &["mla_decode_tc_stage1"],
        variants: mla_tc_variants,
    },
    Family {
        name: "mla_proj",
        embedded: include_str!("../../kernels/mla_proj.hip"),
        entries: &["mla_proj_gemm"],
        variants: mla_proj_variants,
    },
    Family {
        name: "mla_prefill",
        embedded: include_str!("../../kernels/mla_prefill.hip"),
        entries: &["gather_and_maybe_dequant_cache"],
        variants: gather_variants,
    },
    Family {
        name: "flex_attention",
        embedded: include_str!("../../kernels/flex_attention.hip"),
        entries: &["flex_attention"],
        variants: varlen_variants,
    },
    Family {
        name: "flex_attention_tc",
        embedded: include_str!("../../kernels/flex_attention_tc.hip"),
        entries: &["flex_attention_tc"],
        variants: flex_tc_variants,
    },
    Family {
        name: "mma_probe",
        embedded: include_str!("../../kernels/mma_probe.hip"),
        entries: &[
            "mma_m16n8k16_probe",
            "mfma_16x16x16_probe",
            "mfma_32x32x8_probe",
            "mfma_16x16x32_probe",
            "mfma_32x32x16_probe",
        ],
        variants: mma_variants,
    },
    Family {
        name: "wgmma_probe",
        embedded: include_str!("../../kernels/wgmma_probe.hip"),
        entries: &["wgmma_m64n8k16_probe"],
        variants: wgmma_variants,
    },
    Family {
        name: "fill",
        embedded: include_str!("../../kernels/fill.hip"),
        entries: &["fill_hash"],
        variants: fill_variants,
    },
];

pub fn family(name: &str) -> Result<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name).ok_or_else(|| {
        let names: Vec<&str> = FAMILIES.iter().map(|f| f.name).collect();
        GpuError::Invalid(SharedError::invalid(
            "kernel family",
            format!("'{name}'"),
            format!("known: {}", names.join(", ")),
        ))
    })
}

/// `portable.h` + the family's source, from `ATTNLAB_KERNELS_DIR` if set.
pub fn translation_unit(f: &Family) -> Result<String> {
    let (header, body) = match std::env::var_os("ATTNLAB_KERNELS_DIR") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            let read = |file: &str| {
                std::fs::read_to_string(dir.join(file)).map_err(|e| {
                    GpuError::Invalid(SharedError::invalid(
                        "ATTNLAB_KERNELS_DIR",
                        dir.display(),
                        format!("a kernels/ folder with {file} ({e})"),
                    ))
                })
            };
            (read("portable.h")?, read(&format!("{}.hip", f.name))?)
        }
        None => (PORTABLE_H.to_string(), f.embedded.to_string()),
    };
    // `#pragma once` in the header is harmless; the #line keeps compiler
    // messages pointing at the .hip file's own line numbers.
    Ok(format!("{header}\n#line 1 \"{}.hip\"\n{body}", f.name))
}

/// A device plus its compiled-module cache: what diff and bench hold.
pub struct Gpu {
    pub dev: Box<dyn Device>,
    modules: Mutex<HashMap<(String, Defines), ModuleId>>,
    functions: Mutex<HashMap<(ModuleId, String), FunctionId>>,
}

impl Gpu {
    pub fn new(dev: Box<dyn Device>) -> Self {
        Gpu {
            dev,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        }
    }

    /// Opens the first device ([`crate::runtime::open`]).
    pub fn open() -> Result<Self> {
        Ok(Gpu::new(crate::runtime::open()?))
    }

    /// Opens the device of `kind` ([`crate::runtime::open_kind`]; the host
    /// device gets [`PORTABLE_H`]).
    pub fn open_kind(kind: crate::runtime::DeviceKind) -> Result<Self> {
        Ok(Gpu::new(crate::runtime::open_kind(kind, PORTABLE_H)?))
    }

    /// [`Gpu::open_kind`], also saying why no GPU was used when `Auto` fell
    /// back to the host device ([`crate::runtime::open_kind_noting`]).
    pub fn open_kind_noting(kind: crate::runtime::DeviceKind) -> Result<(Self, Option<String>)> {
        crate::runtime::open_kind_noting(kind, PORTABLE_H).map(|(dev, note)| (Gpu::new(dev), note))
    }

    /// The CPU as the device, with waves of `wave` lanes (32 or 64): the
    /// kernels run through [`crate::runtime::host`] with no GPU.
    pub fn open_host(wave: u32) -> Result<Self> {
        Self::open_kind(crate::runtime::DeviceKind::Host { wave })
    }

    /// Compiles the `variants` of `family` not yet cached ahead of their
    /// first use: on NVIDIA the NVRTC compiles (no context needed) run in
    /// parallel threads, then the images load one by one; on other devices
    /// this does nothing (they compile on first use, the host device from
    /// its disk cache). For a diff that meets many shapes in its first cases.
    pub fn precompile(&self, family_name: &str, variants: &[Defines]) -> Result<()> {
        let crate::runtime::Target::Cuda { sm } = self.dev.info().target else {
            return Ok(());
        };
        let f = family(family_name)?;
        let unit = translation_unit(f)?;
        let todo: Vec<&Defines> = {
            let modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
            variants
                .iter()
                .filter(|d| !modules.contains_key(&(family_name.to_string(), d.to_vec())))
                .collect()
        };
        let name = format!("{}.hip", f.name);
        let images: Vec<Result<crate::runtime::Image>> = std::thread::scope(|s| {
            let handles: Vec<_> = todo
                .iter()
                .map(|d| s.spawn(|| crate::runtime::cuda::nvrtc_compile(sm, &name, &unit, d)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(GpuError::Driver {
                            api: "nvrtc",
                            msg: "a compile thread panicked".into(),
                        })
                    })
                })
                .collect()
        });
        for (d, image) in todo.into_iter().zip(images) {
            let m = self.dev.load(&image?)?;
            self.modules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((family_name.to_string(), d.to_vec()), m);
        }
        Ok(())
    }

    /// The entry point `entry` of `family` compiled with `defines` (compiled
    /// and loaded on first use, cached after).
    pub fn function(
        &self,
        family_name: &str,
        defines: &[(String, String)],
        entry: &str,
    ) -> Result<FunctionId> {
        let key = (family_name.to_string(), defines.to_vec());
        let cached = self
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        let module = match cached {
            Some(m) => m,
            None => {
                let f = family(family_name)?;
                let image =
                    self.dev
                        .compile(&format!("{}.hip", f.name), &translation_unit(f)?, defines)?;
                let m = self.dev.load(&image)?;
                self.modules
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, m);
                m
            }
        };
        let fkey = (module, entry.to_string());
        if let Some(&id) = self
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fkey)
        {
            return Ok(id);
        }
        let id = self.dev.function(module, entry)?;
        self.functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fkey, id);
        Ok(id)
    }
}
