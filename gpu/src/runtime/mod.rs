//! The GPU runtime: a small [`Device`] trait (allocate, copy, load a compiled
//! module, launch, synchronize, time with events) and its implementations.
//!
//! Layers as cudarc has them: the vendor FFI stays in one small module per
//! vendor ([`cuda`] over cudarc's `result` layer, [`hip`] over our own
//! declarations in [`hip_sys`]), both with their libraries loaded at run
//! time, and everything above speaks only this safe trait. Building needs no
//! GPU stack: one binary finds an NVIDIA or an AMD GPU when it runs; without
//! one [`open`] returns [`GpuError::NoDevice`] with a one-line reason.

pub mod bytes;
pub mod cuda;
pub mod hip;
pub mod hip_sys;
pub mod host;
pub mod params;

use attnlab_shared::error::Error as SharedError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// No usable device (no driver library, no GPU): callers skip, not fail.
    #[error("no device: {0}")]
    NoDevice(String),
    #[error("compiling {kernel} for {target} failed:\n{log}")]
    Compile {
        kernel: String,
        target: String,
        log: String,
    },
    #[error("{api} failed: {msg}")]
    Driver { api: &'static str, msg: String },
    #[error(transparent)]
    Invalid(#[from] SharedError),
}

pub type Result<T> = std::result::Result<T, GpuError>;

/// A compile target `attnlab gpu compile --target` accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Target {
    /// NVIDIA, compiled by NVRTC: `sm_90` etc. (number = major*10 + minor).
    Cuda { sm: u32 },
    /// AMD, compiled by hipRTC (on the device), hipcc (gfx90a, gfx940) or
    /// clang >= 20 (gfx941, gfx942, gfx950); a device reports any gfx name.
    Amd { gfx: String },
    /// The CPU ([`host`]), compiled by the system C++ compiler, with waves of
    /// 32 or 64 lanes: `host32`, `host64`.
    Host { wave: u32 },
}

impl Target {
    pub const NAMED: [&'static str; 5] = ["gfx90a", "gfx940", "gfx942", "gfx950", "sm_90"];

    /// The AMD targets `attnlab gpu compile` knows.
    pub const AMD: [&'static str; 5] = ["gfx90a", "gfx940", "gfx941", "gfx942", "gfx950"];

    pub fn parse(s: &str) -> Result<Self> {
        if let Some(n) = s.strip_prefix("sm_") {
            if let Ok(sm) = n.parse::<u32>() {
                if (70..=120).contains(&sm) {
                    return Ok(Target::Cuda { sm });
                }
            }
        }
        if Self::AMD.contains(&s) {
            return Ok(Target::Amd { gfx: s.to_string() });
        }
        match s {
            "host32" => return Ok(Target::Host { wave: 32 }),
            "host64" => return Ok(Target::Host { wave: 64 }),
            _ => {}
        }
        Err(SharedError::invalid(
            "target",
            format!("'{s}'"),
            "allowed: gfx90a, gfx940, gfx941, gfx942, gfx950, sm_70 .. sm_120, host32, host64",
        )
        .into())
    }

    /// The target of an AMD device from its `hipDeviceProp_t::gcnArchName`:
    /// the processor before the first `:` (`gfx942:sramecc+:xnack-` ->
    /// `gfx942`); the feature flags after it are dropped (hipRTC then builds
    /// code that runs with either setting). Any `gfx` + 3 or 4 hex digits
    /// is accepted: the device, not this list, says what it is.
    pub fn from_gcn_arch_name(name: &str) -> Result<Self> {
        let processor = name.split(':').next().unwrap_or_default();
        let ok = processor.strip_prefix("gfx").is_some_and(|n| {
            (3..=4).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && n.as_bytes()[0].is_ascii_digit()
        });
        if !ok {
            return Err(SharedError::invalid(
                "gcnArchName",
                format!("'{name}'"),
                "gfx followed by 3 or 4 hex digits, then optional :feature+/- flags (e.g. gfx942:sramecc+:xnack-)",
            )
            .into());
        }
        Ok(Target::Amd {
            gfx: processor.to_string(),
        })
    }

    pub fn name(&self) -> String {
        match self {
            Target::Cuda { sm } => format!("sm_{sm}"),
            Target::Amd { gfx } => gfx.clone(),
            Target::Host { wave } => format!("host{wave}"),
        }
    }

    /// Lanes per wave: NVIDIA warps are 32; GCN/CDNA (gfx9 and older)
    /// wavefronts are 64; RDNA (gfx10, 11, 12) compiles HIP for 32 by default.
    pub fn wave_size(&self) -> u32 {
        match self {
            Target::Cuda { .. } => 32,
            Target::Amd { gfx } => {
                let digits = gfx.trim_start_matches("gfx");
                if digits.len() >= 4 {
                    32
                } else {
                    64
                }
            }
            Target::Host { wave } => *wave,
        }
    }
}

/// What `attnlab diff`/`bench` print about the device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub target: Target,
    pub multiprocessors: u32,
    pub memory_bytes: u64,
    pub l2_bytes: u64,
    /// Peak SM clock in kHz (0 where the driver does not say).
    pub clock_khz: u32,
}

/// A compiled module image (PTX text for NVIDIA, a code object for AMD).
#[derive(Debug, Clone)]
pub struct Image {
    pub target: Target,
    pub bytes: Vec<u8>,
}

/// A kernel argument as the launch passes it (by value).
#[derive(Debug, Clone)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    /// A by-value struct, laid out as the kernel's C struct: a
    /// [`params::ParamBlock`]'s bytes ([`params::ParamBlock::arg`]).
    Struct(Vec<u8>),
}

impl Arg {
    /// The argument's bytes (little-endian), at least 8 so that every
    /// parameter pointer is valid for an 8-byte read.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut b = match self {
            Arg::Ptr(p) => p.to_le_bytes().to_vec(),
            Arg::I32(v) => v.to_le_bytes().to_vec(),
            Arg::I64(v) => v.to_le_bytes().to_vec(),
            Arg::F32(v) => v.to_le_bytes().to_vec(),
            Arg::Struct(b) => b.clone(),
        };
        b.resize(b.len().max(8), 0);
        b
    }
}

/// Launch geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchDims {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchDims {
    /// The dynamic shared memory a backend asks the driver for: `shared_bytes`
    /// rounded up to 16 bytes, the widest shared access. nvcc may fetch two
    /// neighbouring floats of a shared array with one 8-byte load and use the
    /// first alone (the ll4mi reduce kernel's `w_s` with one partition, seen
    /// by compute-sanitizer memcheck on the H100), so an allocation that ends
    /// mid-vector is read past; the padding is never written or used.
    pub fn shared_bytes_padded(&self) -> u32 {
        self.shared_bytes.div_ceil(16).saturating_mul(16)
    }

    /// A 1-D launch of `n` threads in blocks of `block`.
    pub fn linear(n: usize, block: u32) -> Result<Self> {
        let blocks = n.div_ceil(block as usize).max(1);
        let grid_x = u32::try_from(blocks)
            .map_err(|_| SharedError::invalid("1-D launch size", n, "at most 2^32 blocks"))?;
        Ok(LaunchDims {
            grid: [grid_x, 1, 1],
            block: [block, 1, 1],
            shared_bytes: 0,
        })
    }
}

/// The define that makes NVRTC compile a module for the arch-specific
/// target (`sm_90a` for sm 90): instructions such as `wgmma` exist only
/// there, and such a module loads only on that exact architecture.
pub const ARCH_SPECIFIC: &str = "ATTNLAB_SM_ARCH_SPECIFIC";

/// Opaque handles; each backend keeps the real objects behind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleId(pub usize);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FunctionId(pub usize);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventId(pub usize);

/// One GPU. Everything is synchronous with respect to the host except
/// `launch` and `record`, which queue on the device's one stream.
pub trait Device {
    fn info(&self) -> &DeviceInfo;
    /// Compiles one translation unit for this device (NVRTC or hipRTC).
    fn compile(&self, name: &str, source: &str, defines: &[(String, String)]) -> Result<Image>;
    fn alloc(&self, bytes: usize) -> Result<u64>;
    fn free(&self, ptr: u64);
    fn upload(&self, dst: u64, src: &[u8]) -> Result<()>;
    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()>;
    /// Device-to-device copy on the stream (the bandwidth yardstick of bench).
    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()>;
    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()>;
    fn load(&self, image: &Image) -> Result<ModuleId>;
    fn function(&self, module: ModuleId, name: &str) -> Result<FunctionId>;
    /// Queues kernel `f` over `dims` with `args`.
    ///
    /// # Safety
    ///
    /// A kernel dereferences what it is given without bounds checks, as on
    /// any GPU, so the caller guarantees what the device cannot check:
    /// - `args` is the kernel's parameter list: one argument per parameter,
    ///   in order, each of the parameter's kind and size, and every by-value
    ///   struct a [`params::ParamBlock`] whose layout equals the kernel's
    ///   struct field for field (`gpu/tests/param_layout.rs` checks each);
    /// - every pointer argument is a live allocation of this device (a
    ///   [`Buffer`] that outlives the launch's completion) at least as large
    ///   as the kernel indexes it for these scalars and `dims`, which is
    ///   what the launcher's validated argument type (e.g.
    ///   `attnlab_sim::kernels::merge_attn_states::MergeArgs`) establishes;
    /// - `dims.shared_bytes` covers the kernel's dynamic shared memory use.
    ///
    /// The host device checks the argument kinds and sizes and turns a
    /// fault into an error, but a violated contract is undefined behaviour
    /// on a GPU.
    unsafe fn launch(&self, f: FunctionId, dims: LaunchDims, args: &[Arg]) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    fn record(&self) -> Result<EventId>;
    /// Milliseconds between two recorded events (waits for the second).
    fn elapsed_ms(&self, start: EventId, end: EventId) -> Result<f32>;
}

/// Opens the first GPU: HIP when its runtime loads and reports a device,
/// else CUDA. The error is `NoDevice` with the reason each backend gave.
pub fn open() -> Result<Box<dyn Device>> {
    let hip_reason = match hip::HipDevice::open() {
        Ok(d) => return Ok(Box::new(d)),
        Err(GpuError::NoDevice(why)) => why,
        Err(e) => return Err(e),
    };
    match cuda::CudaDevice::open() {
        Ok(d) => Ok(Box::new(d)),
        Err(GpuError::NoDevice(why)) => Err(GpuError::NoDevice(format!(
            "HIP: {hip_reason}; CUDA: {why}"
        ))),
        Err(e) => Err(e),
    }
}

/// Which device `attnlab diff --device` / `bench --device` opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Whichever GPU is present (HIP first, then CUDA), else the host
    /// device with waves of `host_wave` lanes.
    Auto {
        host_wave: u32,
    },
    Cuda,
    Hip,
    /// The CPU with waves of `wave` lanes (32 or 64).
    Host {
        wave: u32,
    },
}

impl DeviceKind {
    /// `--device auto|cuda|hip|host`, with `wave` (`--wave`, default 32)
    /// for the host device (also auto's fallback).
    pub fn parse(device: &str, wave: Option<u32>) -> Result<Self> {
        let host_wave = match wave {
            None => 32,
            Some(w @ (32 | 64)) => w,
            Some(w) => {
                return Err(SharedError::invalid("--wave", w, "allowed: 32, 64").into());
            }
        };
        match device {
            "auto" => Ok(DeviceKind::Auto { host_wave }),
            "host" => Ok(DeviceKind::Host { wave: host_wave }),
            "cuda" | "hip" if wave.is_some() => Err(SharedError::invalid(
                "--wave",
                host_wave,
                "--wave applies to --device host or auto only",
            )
            .into()),
            "cuda" => Ok(DeviceKind::Cuda),
            "hip" => Ok(DeviceKind::Hip),
            other => Err(SharedError::invalid(
                "--device",
                format!("'{other}'"),
                "allowed: auto, cuda, hip, host",
            )
            .into()),
        }
    }
}

/// Opens the device of `kind`. For `Auto`, the second value says why no GPU
/// was used when it fell back to the host device, whose wave runtime is
/// compiled behind `host_header` (the kernels' `portable.h`).
pub fn open_kind_noting(
    kind: DeviceKind,
    host_header: &'static str,
) -> Result<(Box<dyn Device>, Option<String>)> {
    match kind {
        DeviceKind::Auto { host_wave } => match open() {
            Ok(d) => Ok((d, None)),
            Err(GpuError::NoDevice(gpu_why)) => {
                match host::HostDevice::open(host_wave, host_header) {
                    Ok(d) => Ok((Box::new(d), Some(gpu_why))),
                    Err(GpuError::NoDevice(host_why)) => {
                        Err(GpuError::NoDevice(format!("{gpu_why}; host: {host_why}")))
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        },
        other => open_kind(other, host_header).map(|d| (d, None)),
    }
}

/// Opens the device of `kind` (`open` picks a GPU by itself); `host_header`
/// as in [`open_kind_noting`].
pub fn open_kind(kind: DeviceKind, host_header: &'static str) -> Result<Box<dyn Device>> {
    match kind {
        DeviceKind::Auto { .. } => open_kind_noting(kind, host_header).map(|(d, _)| d),
        DeviceKind::Cuda => Ok(Box::new(cuda::CudaDevice::open()?)),
        DeviceKind::Hip => Ok(Box::new(hip::HipDevice::open()?)),
        DeviceKind::Host { wave } => Ok(Box::new(host::HostDevice::open(wave, host_header)?)),
    }
}

/// A device allocation freed on drop.
pub struct Buffer<'d> {
    dev: &'d dyn Device,
    pub ptr: u64,
    pub bytes: usize,
}

impl<'d> Buffer<'d> {
    pub fn zeroed(dev: &'d dyn Device, bytes: usize) -> Result<Self> {
        let ptr = dev.alloc(bytes.max(4))?;
        let b = Buffer { dev, ptr, bytes };
        dev.memset_zero(ptr, bytes.max(4))?;
        Ok(b)
    }

    pub fn from_bytes(dev: &'d dyn Device, data: &[u8]) -> Result<Self> {
        let b = Buffer::zeroed(dev, data.len())?;
        dev.upload(b.ptr, data)?;
        Ok(b)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.bytes];
        self.dev.download(self.ptr, &mut out)?;
        Ok(out)
    }

    pub fn arg(&self) -> Arg {
        Arg::Ptr(self.ptr)
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        self.dev.free(self.ptr);
    }
}

#[cfg(test)]
mod tests {
    use super::{hip, hip_sys, DeviceKind, LaunchDims, Target};

    #[test]
    fn gcn_arch_names_of_cdna_and_rdna_parts_give_their_target_and_wave() {
        // (gcnArchName as HIP reports it, target, lanes per wave)
        let table = [
            ("gfx90a:sramecc+:xnack-", "gfx90a", 64), // MI200
            ("gfx90a:sramecc-:xnack+", "gfx90a", 64),
            ("gfx940:sramecc+:xnack-", "gfx940", 64), // MI300 engineering parts
            ("gfx941:sramecc+:xnack-", "gfx941", 64),
            ("gfx942:sramecc+:xnack-", "gfx942", 64), // MI300X / MI325X
            ("gfx942", "gfx942", 64),
            ("gfx950:sramecc+:xnack-", "gfx950", 64), // MI350X / MI355X
            ("gfx1100", "gfx1100", 32),               // RDNA3 (wave32 by default)
            ("gfx1201", "gfx1201", 32),
        ];
        for (name, gfx, wave) in table {
            let t = Target::from_gcn_arch_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(t, Target::Amd { gfx: gfx.into() }, "{name}");
            assert_eq!(t.wave_size(), wave, "{name}");
            assert_eq!(t.name(), gfx);
        }
    }

    #[test]
    fn names_that_are_not_gfx_processors_are_refused_naming_the_value() {
        // 910 / 942: what the old numeric attribute 10003 gave on HIP 5.
        for bad in [
            "", "910", "942", "gfx", "gfx9", "gfx12345", "gfxzzz", "sm_90", "GFX942", ":xnack-",
            "gfxa42",
        ] {
            let e = Target::from_gcn_arch_name(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            let text = e.to_string();
            assert!(
                text.contains(&format!("'{bad}'")) && text.contains("gfx942:sramecc+:xnack-"),
                "{text}"
            );
        }
    }

    #[test]
    fn the_arch_is_read_at_each_layouts_offset_and_the_numeric_attribute_is_not_used() {
        for (layout, at) in [
            (hip_sys::PropsLayout::R0000, 396),
            (hip_sys::PropsLayout::R0600, 1160),
        ] {
            let mut props = vec![0u8; hip_sys::PROPS_BUFFER_BYTES];
            props[at..at + 22].copy_from_slice(b"gfx942:sramecc+:xnack-");
            assert_eq!(
                hip::gcn_arch_name_in(&props, layout).as_deref(),
                Some("gfx942:sramecc+:xnack-")
            );
            // The other layout's slot is empty there.
            let other = if at == 396 {
                hip_sys::PropsLayout::R0600
            } else {
                hip_sys::PropsLayout::R0000
            };
            assert_eq!(hip::gcn_arch_name_in(&props, other).as_deref(), Some(""));
        }
        // No NUL in the 256 bytes: not a name.
        let props = vec![b'g'; hip_sys::PROPS_BUFFER_BYTES];
        assert_eq!(
            hip::gcn_arch_name_in(&props, hip_sys::PropsLayout::R0000),
            None
        );
        assert_eq!(hip_sys::ATTR_GCN_ARCH_HIP5, 10003);
        let src = include_str!("hip.rs");
        assert!(
            !src.contains("ATTR_GCN_ARCH_HIP5"),
            "hip.rs must not ask attribute 10003"
        );
    }

    #[test]
    fn device_flag_parses_auto_cuda_hip_host_and_wave_only_where_a_host_may_run() {
        assert_eq!(
            DeviceKind::parse("auto", None).unwrap(),
            DeviceKind::Auto { host_wave: 32 }
        );
        assert_eq!(
            DeviceKind::parse("auto", Some(64)).unwrap(),
            DeviceKind::Auto { host_wave: 64 }
        );
        assert_eq!(
            DeviceKind::parse("host", Some(64)).unwrap(),
            DeviceKind::Host { wave: 64 }
        );
        assert_eq!(DeviceKind::parse("hip", None).unwrap(), DeviceKind::Hip);
        assert_eq!(DeviceKind::parse("cuda", None).unwrap(), DeviceKind::Cuda);
        let e = DeviceKind::parse("cuda", Some(64)).unwrap_err().to_string();
        assert!(
            e.contains("--wave applies to --device host or auto only"),
            "{e}"
        );
        let e = DeviceKind::parse("rocm", None).unwrap_err().to_string();
        assert!(
            e.contains("'rocm'") && e.contains("auto, cuda, hip, host"),
            "{e}"
        );
        let e = DeviceKind::parse("host", Some(48)).unwrap_err().to_string();
        assert!(e.contains("48") && e.contains("32, 64"), "{e}");
    }

    #[test]
    fn compile_targets_include_gfx942_and_gfx950() {
        for t in ["gfx90a", "gfx940", "gfx941", "gfx942", "gfx950"] {
            assert_eq!(Target::parse(t).unwrap(), Target::Amd { gfx: t.into() });
        }
        let e = Target::parse("gfx1100").unwrap_err().to_string();
        assert!(e.contains("'gfx1100'") && e.contains("gfx950"), "{e}");
    }

    #[test]
    fn dynamic_shared_memory_is_padded_to_whole_16_byte_vectors() {
        let dims = |shared_bytes| LaunchDims {
            grid: [1, 1, 1],
            block: [256, 1, 1],
            shared_bytes,
        };
        // 1052: the ll4mi reduce kernel with one partition (memcheck's case).
        for (asked, padded) in [
            (0, 0),
            (4, 16),
            (16, 16),
            (1052, 1056),
            (1056, 1056),
            (48 * 1024, 48 * 1024),
        ] {
            assert_eq!(dims(asked).shared_bytes_padded(), padded, "{asked}");
        }
    }
}
