//! CUDA backend of [`Device`], over cudarc's `result` layer (error-returning
//! wrappers of the driver API and NVRTC, both loaded at run time, so this
//! builds and links on machines with no CUDA at all).
//!
//! NVRTC compiles with the contract's flags (numerics.md §2): no FMA
//! contraction, no flush-to-zero, IEEE division and square root. It emits a
//! cubin for the exact `sm_XX`, so ptxas runs at compile time and
//! `attnlab gpu compile --target sm_90` needs no device.

use super::{
    Arg, Device, DeviceInfo, EventId, FunctionId, GpuError, Image, LaunchDims, ModuleId, Result,
    Target,
};
use cudarc::driver::{result as drv, sys as dsys};
use cudarc::nvrtc::{result as rtc, sys as rsys};
use std::ffi::{c_void, CString};
use std::sync::Mutex;

/// The NVRTC options every kernel is compiled with (numerics.md §2), plus
/// `--default-device`: every function of a translation unit is device code
/// (generic lambdas inside kernels, e.g. paged_decode's per-head-group pass,
/// carry no execution-space annotation of their own).
pub const NVRTC_FLAGS: [&str; 6] = [
    "--fmad=false",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--std=c++17",
    "-default-device",
];

fn driver_err(api: &'static str) -> impl Fn(drv::DriverError) -> GpuError {
    move |e| GpuError::Driver {
        api,
        msg: format!("{e:?}"),
    }
}

/// Whether NVRTC can be loaded (searched as cudarc does: libnvrtc.so, .so.13,
/// .so.12, ... on the loader path).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries dlopen on candidate names.
    unsafe { rsys::is_culib_present() }
}

/// Compiles one translation unit with NVRTC to a cubin for `sm`.
pub fn nvrtc_compile(
    sm: u32,
    name: &str,
    source: &str,
    defines: &[(String, String)],
) -> Result<Image> {
    nvrtc_compile_logged(sm, name, source, defines, &[]).map(|(image, _)| image)
}

/// [`nvrtc_compile`] with extra NVRTC options (e.g. `--ptxas-options=-v`,
/// whose register / spill / shared-memory report lands in the log), returning
/// the program log beside the image.
pub fn nvrtc_compile_logged(
    sm: u32,
    name: &str,
    source: &str,
    defines: &[(String, String)],
    extra_options: &[&str],
) -> Result<(Image, String)> {
    let target = Target::Cuda { sm };
    let fail = |log: String| GpuError::Compile {
        kernel: name.to_string(),
        target: target.name(),
        log,
    };
    if !nvrtc_available() {
        return Err(GpuError::NoDevice(
            "NVRTC (libnvrtc.so) not found on the loader path: install it (.ci/install-gpu-toolchains.sh) and set LD_LIBRARY_PATH".into(),
        ));
    }
    let src = CString::new(source).map_err(|_| fail("source contains a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| fail("name contains a NUL byte".into()))?;
    let prog = rtc::create_program(&src, Some(&cname)).map_err(|e| fail(format!("{e:?}")))?;
    let mut opts: Vec<String> = NVRTC_FLAGS.iter().map(|s| s.to_string()).collect();
    // a module that asks for the arch-specific target (wgmma) gets sm_XXa
    let suffix = if defines.iter().any(|(k, _)| k == super::ARCH_SPECIFIC) {
        "a"
    } else {
        ""
    };
    opts.push(format!("--gpu-architecture=sm_{sm}{suffix}"));
    opts.extend(defines.iter().map(|(k, v)| format!("-D{k}={v}")));
    opts.extend(extra_options.iter().map(|o| o.to_string()));
    // SAFETY: `prog` is live until destroy_program below; src/cname outlive it.
    unsafe {
        let compiled = rtc::compile_program(prog, &opts);
        let log = rtc::get_program_log(prog)
            .map(|l| c_chars_to_string(&l))
            .unwrap_or_default();
        if let Err(e) = compiled {
            let _ = rtc::destroy_program(prog);
            return Err(fail(format!("{e:?}\n{log}")));
        }
        let mut size = 0usize;
        let got = rsys::nvrtcGetCUBINSize(prog, &mut size)
            .result()
            .and_then(|_| {
                let mut bytes = vec![0u8; size];
                rsys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast())
                    .result()
                    .map(|_| bytes)
            });
        let _ = rtc::destroy_program(prog);
        let bytes = got.map_err(|e| fail(format!("nvrtcGetCUBIN: {e:?}")))?;
        Ok((Image { target, bytes }, log))
    }
}

fn c_chars_to_string(v: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}

/// Handles owned by one CUDA device (modules, functions, events).
#[derive(Default)]
struct Tables {
    modules: Vec<dsys::CUmodule>,
    functions: Vec<dsys::CUfunction>,
    events: Vec<dsys::CUevent>,
}

pub struct CudaDevice {
    ctx: dsys::CUcontext,
    dev: dsys::CUdevice,
    info: DeviceInfo,
    tables: Mutex<Tables>,
}

// SAFETY: the context is made current on every call (`bind`), and the handle
// tables are behind a mutex; CUDA driver handles may be used from any thread.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    /// Opens device 0 through its primary context.
    pub fn open() -> Result<Self> {
        // SAFETY: dlopen probe only.
        if !unsafe { dsys::is_culib_present() } {
            return Err(GpuError::NoDevice(
                "the CUDA driver library (libcuda.so) is not installed".into(),
            ));
        }
        drv::init().map_err(|e| GpuError::NoDevice(format!("cuInit: {e:?}")))?;
        let count = drv::device::get_count()
            .map_err(|e| GpuError::NoDevice(format!("cuDeviceGetCount: {e:?}")))?;
        if count < 1 {
            return Err(GpuError::NoDevice(
                "the CUDA driver reports 0 devices".into(),
            ));
        }
        let dev = drv::device::get(0).map_err(driver_err("cuDeviceGet"))?;
        // SAFETY: `dev` is a valid ordinal; the primary context lives until release in Drop.
        unsafe {
            let ctx =
                drv::primary_ctx::retain(dev).map_err(driver_err("cuDevicePrimaryCtxRetain"))?;
            drv::ctx::set_current(ctx).map_err(driver_err("cuCtxSetCurrent"))?;
            let attr =
                |a| drv::device::get_attribute(dev, a).map_err(driver_err("cuDeviceGetAttribute"));
            use dsys::CUdevice_attribute::*;
            let major = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            let info = DeviceInfo {
                name: drv::device::get_name(dev).map_err(driver_err("cuDeviceGetName"))?,
                target: Target::Cuda {
                    sm: (major * 10 + minor) as u32,
                },
                multiprocessors: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32,
                memory_bytes: drv::device::total_mem(dev).map_err(driver_err("cuDeviceTotalMem"))?
                    as u64,
                l2_bytes: attr(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)? as u64,
                clock_khz: attr(CU_DEVICE_ATTRIBUTE_CLOCK_RATE).unwrap_or(0) as u32,
            };
            Ok(CudaDevice {
                ctx,
                dev,
                info,
                tables: Mutex::new(Tables::default()),
            })
        }
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: `ctx` is the retained primary context of this device.
        unsafe { drv::ctx::set_current(self.ctx) }.map_err(driver_err("cuCtxSetCurrent"))
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Device for CudaDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn compile(&self, name: &str, source: &str, defines: &[(String, String)]) -> Result<Image> {
        match self.info.target {
            Target::Cuda { sm } => nvrtc_compile(sm, name, source, defines),
            Target::Amd { .. } | Target::Host { .. } => {
                unreachable!("a CUDA device has a CUDA target")
            }
        }
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: plain device allocation, freed in `free`.
        unsafe { drv::malloc_sync(bytes.max(1)) }.map_err(driver_err("cuMemAlloc"))
    }

    fn free(&self, ptr: u64) {
        if self.bind().is_ok() {
            // SAFETY: `ptr` came from `alloc` and is freed once (Buffer's Drop).
            let _ = unsafe { drv::free_sync(ptr) };
        }
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: callers pass allocations at least `src.len()` bytes long (Buffer).
        unsafe { drv::memcpy_htod_sync(dst, src) }.map_err(driver_err("cuMemcpyHtoD"))
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: as `upload`; the null stream orders this after queued launches.
        unsafe { drv::memcpy_dtoh_sync(dst, src) }.map_err(driver_err("cuMemcpyDtoH"))
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both allocations hold `bytes`; queued on the null stream.
        unsafe { drv::memcpy_dtod_async(dst, src, bytes, drv::stream::null()) }
            .map_err(driver_err("cuMemcpyDtoDAsync"))
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds `bytes`.
        unsafe { drv::memset_d8_sync(dst, 0, bytes) }.map_err(driver_err("cuMemsetD8"))
    }

    fn load(&self, image: &Image) -> Result<ModuleId> {
        self.bind()?;
        // SAFETY: `image.bytes` is a cubin NVRTC produced for this device's sm.
        let m = unsafe { drv::module::load_data(image.bytes.as_ptr() as *const c_void) }
            .map_err(driver_err("cuModuleLoadData"))?;
        let mut t = self.tables();
        t.modules.push(m);
        Ok(ModuleId(t.modules.len() - 1))
    }

    fn function(&self, module: ModuleId, name: &str) -> Result<FunctionId> {
        self.bind()?;
        let mut t = self.tables();
        let m = *t.modules.get(module.0).ok_or(GpuError::Driver {
            api: "function",
            msg: format!("unknown module {}", module.0),
        })?;
        let cname = CString::new(name).map_err(|_| GpuError::Driver {
            api: "cuModuleGetFunction",
            msg: "NUL in name".into(),
        })?;
        // SAFETY: `m` is a loaded module.
        let f = unsafe { drv::module::get_function(m, cname) }.map_err(|e| GpuError::Driver {
            api: "cuModuleGetFunction",
            msg: format!("{name}: {e:?}"),
        })?;
        t.functions.push(f);
        Ok(FunctionId(t.functions.len() - 1))
    }

    unsafe fn launch(&self, f: FunctionId, dims: LaunchDims, args: &[Arg]) -> Result<()> {
        self.bind()?;
        let func = *self.tables().functions.get(f.0).ok_or(GpuError::Driver {
            api: "launch",
            msg: format!("unknown function {}", f.0),
        })?;
        let mut slots: Vec<Vec<u8>> = args.iter().map(|a| a.bytes()).collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut c_void)
            .collect();
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        let shared = dims.shared_bytes_padded();
        // Dynamic shared memory above the 48 KiB default needs the per-function
        // opt-in (paged_decode's staged V).
        if shared > 48 * 1024 {
            // SAFETY: `func` is a function of a loaded module.
            unsafe {
                drv::function::set_function_attribute(
                    func,
                    dsys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    shared as i32,
                )
            }
            .map_err(driver_err("cuFuncSetAttribute"))?;
        }
        // SAFETY: the kernel's parameter list matches `args` (each call site
        // passes the signature its .hip entry point declares); `slots`
        // outlives the call, which copies the parameters before returning.
        unsafe {
            drv::launch_kernel(
                func,
                (gx, gy, gz),
                (bx, by, bz),
                shared,
                drv::stream::null(),
                &mut params,
            )
        }
        .map_err(driver_err("cuLaunchKernel"))
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        drv::ctx::synchronize().map_err(driver_err("cuCtxSynchronize"))
    }

    fn record(&self) -> Result<EventId> {
        self.bind()?;
        let e = drv::event::create(dsys::CUevent_flags::CU_EVENT_DEFAULT)
            .map_err(driver_err("cuEventCreate"))?;
        // SAFETY: a fresh event on the null stream.
        unsafe { drv::event::record(e, drv::stream::null()) }
            .map_err(driver_err("cuEventRecord"))?;
        let mut t = self.tables();
        t.events.push(e);
        Ok(EventId(t.events.len() - 1))
    }

    fn elapsed_ms(&self, start: EventId, end: EventId) -> Result<f32> {
        self.bind()?;
        let t = self.tables();
        let (a, b) = match (t.events.get(start.0), t.events.get(end.0)) {
            (Some(&a), Some(&b)) => (a, b),
            _ => {
                return Err(GpuError::Driver {
                    api: "elapsed_ms",
                    msg: "unknown event".into(),
                })
            }
        };
        // SAFETY: both events were recorded on this context.
        unsafe {
            drv::event::synchronize(b).map_err(driver_err("cuEventSynchronize"))?;
            drv::event::elapsed(a, b).map_err(driver_err("cuEventElapsedTime"))
        }
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        let t = self.tables.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: handles were created on this context and are dropped once.
        unsafe {
            let _ = drv::ctx::set_current(self.ctx);
            for &e in &t.events {
                let _ = drv::event::destroy(e);
            }
            for &m in &t.modules {
                let _ = drv::module::unload(m);
            }
            let _ = drv::primary_ctx::release(self.dev);
        }
    }
}
