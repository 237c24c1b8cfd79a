//! HIP backend of [`Device`] (cargo feature `rocm`): our own small FFI
//! module over `libamdhip64` (HIP runtime + hipRTC, which ROCm 5.x ships in
//! the same library), in the same layers as the CUDA side: raw `extern "C"`
//! declarations, a `check` that turns status codes into errors, and the safe
//! trait on top. hipRTC compiles with `-ffp-contract=off` (numerics.md §2);
//! HIP's defaults already keep IEEE division and denormals.

use super::{
    Arg, Device, DeviceInfo, EventId, FunctionId, GpuError, Image, LaunchDims, ModuleId, Result,
    Target,
};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

type HipModule = *mut c_void;
type HipFunction = *mut c_void;
type HipEvent = *mut c_void;
type HiprtcProgram = *mut c_void;

// Values from hip_runtime_api.h / driver_types.h (HIP 5.x).
const ATTR_CLOCK_RATE: c_int = 5;
const ATTR_L2_CACHE_SIZE: c_int = 19;
const ATTR_MULTIPROCESSOR_COUNT: c_int = 63;
const ATTR_GCN_ARCH: c_int = 10003;
const MEMCPY_HOST_TO_DEVICE: c_int = 1;
const MEMCPY_DEVICE_TO_HOST: c_int = 2;
const MEMCPY_DEVICE_TO_DEVICE: c_int = 3;

/// hipRTC options every kernel is compiled with.
pub const HIPRTC_FLAGS: [&str; 3] = ["-ffp-contract=off", "-fno-fast-math", "-std=c++17"];

#[link(name = "amdhip64")]
extern "C" {
    fn hipInit(flags: u32) -> c_int;
    fn hipGetDeviceCount(count: *mut c_int) -> c_int;
    fn hipSetDevice(device: c_int) -> c_int;
    fn hipDeviceGetAttribute(value: *mut c_int, attr: c_int, device: c_int) -> c_int;
    fn hipDeviceGetName(name: *mut c_char, len: c_int, device: c_int) -> c_int;
    fn hipDeviceTotalMem(bytes: *mut usize, device: c_int) -> c_int;
    fn hipGetErrorString(status: c_int) -> *const c_char;
    fn hipMalloc(ptr: *mut *mut c_void, size: usize) -> c_int;
    fn hipFree(ptr: *mut c_void) -> c_int;
    fn hipMemcpy(dst: *mut c_void, src: *const c_void, size: usize, kind: c_int) -> c_int;
    fn hipMemcpyAsync(
        dst: *mut c_void,
        src: *const c_void,
        size: usize,
        kind: c_int,
        stream: *mut c_void,
    ) -> c_int;
    fn hipMemset(dst: *mut c_void, value: c_int, size: usize) -> c_int;
    fn hipModuleLoadData(module: *mut HipModule, image: *const c_void) -> c_int;
    fn hipModuleUnload(module: HipModule) -> c_int;
    fn hipModuleGetFunction(
        function: *mut HipFunction,
        module: HipModule,
        name: *const c_char,
    ) -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn hipModuleLaunchKernel(
        f: HipFunction,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shared: u32,
        stream: *mut c_void,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) -> c_int;
    fn hipDeviceSynchronize() -> c_int;
    fn hipEventCreate(event: *mut HipEvent) -> c_int;
    fn hipEventDestroy(event: HipEvent) -> c_int;
    fn hipEventRecord(event: HipEvent, stream: *mut c_void) -> c_int;
    fn hipEventSynchronize(event: HipEvent) -> c_int;
    fn hipEventElapsedTime(ms: *mut f32, start: HipEvent, end: HipEvent) -> c_int;
    fn hiprtcCreateProgram(
        prog: *mut HiprtcProgram,
        src: *const c_char,
        name: *const c_char,
        num_headers: c_int,
        headers: *const *const c_char,
        include_names: *const *const c_char,
    ) -> c_int;
    fn hiprtcCompileProgram(
        prog: HiprtcProgram,
        num_options: c_int,
        options: *const *const c_char,
    ) -> c_int;
    fn hiprtcGetProgramLogSize(prog: HiprtcProgram, size: *mut usize) -> c_int;
    fn hiprtcGetProgramLog(prog: HiprtcProgram, log: *mut c_char) -> c_int;
    fn hiprtcGetCodeSize(prog: HiprtcProgram, size: *mut usize) -> c_int;
    fn hiprtcGetCode(prog: HiprtcProgram, code: *mut c_char) -> c_int;
    fn hiprtcDestroyProgram(prog: *mut HiprtcProgram) -> c_int;
}

fn check(api: &'static str, status: c_int) -> Result<()> {
    if status == 0 {
        return Ok(());
    }
    // SAFETY: hipGetErrorString returns a static NUL-terminated string.
    let msg = unsafe { CStr::from_ptr(hipGetErrorString(status)) }
        .to_string_lossy()
        .into_owned();
    Err(GpuError::Driver {
        api,
        msg: format!("{msg} ({status})"),
    })
}

/// Compiles one translation unit with hipRTC for `gfx` (a code object).
pub fn hiprtc_compile(
    gfx: &str,
    name: &str,
    source: &str,
    defines: &[(String, String)],
) -> Result<Image> {
    let fail = |log: String| GpuError::Compile {
        kernel: name.to_string(),
        target: gfx.to_string(),
        log,
    };
    let src = CString::new(source).map_err(|_| fail("source contains a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| fail("name contains a NUL byte".into()))?;
    let mut opts: Vec<CString> = HIPRTC_FLAGS
        .iter()
        .map(|s| CString::new(*s).expect("static flag"))
        .collect();
    opts.push(CString::new(format!("--gpu-architecture={gfx}")).expect("no NUL"));
    for (k, v) in defines {
        opts.push(
            CString::new(format!("-D{k}={v}"))
                .map_err(|_| fail("define contains a NUL byte".into()))?,
        );
    }
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: HiprtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is a live CString for the duration of the calls;
    // the program is destroyed on every path.
    unsafe {
        check(
            "hiprtcCreateProgram",
            hiprtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            ),
        )?;
        let status = hiprtcCompileProgram(prog, ptrs.len() as c_int, ptrs.as_ptr());
        let mut log_size = 0usize;
        let mut log = String::new();
        if hiprtcGetProgramLogSize(prog, &mut log_size) == 0 && log_size > 1 {
            let mut buf = vec![0u8; log_size];
            if hiprtcGetProgramLog(prog, buf.as_mut_ptr().cast()) == 0 {
                log = String::from_utf8_lossy(&buf[..log_size - 1]).into_owned();
            }
        }
        let result = if status != 0 {
            Err(fail(format!("hiprtc status {status}\n{log}")))
        } else {
            let mut size = 0usize;
            let mut code = Vec::new();
            let got = hiprtcGetCodeSize(prog, &mut size);
            if got == 0 {
                code = vec![0u8; size];
                check(
                    "hiprtcGetCode",
                    hiprtcGetCode(prog, code.as_mut_ptr().cast()),
                )?;
            }
            check("hiprtcGetCodeSize", got).map(|_| Image {
                target: Target::Amd {
                    gfx: gfx.to_string(),
                },
                bytes: code,
            })
        };
        hiprtcDestroyProgram(&mut prog);
        result
    }
}

#[derive(Default)]
struct Tables {
    modules: Vec<HipModule>,
    functions: Vec<HipFunction>,
    events: Vec<HipEvent>,
}

pub struct HipDevice {
    info: DeviceInfo,
    tables: Mutex<Tables>,
}

// SAFETY: HIP handles may be used from any thread once the device is set
// (`bind` on every call); the tables are behind a mutex.
unsafe impl Send for HipDevice {}
unsafe impl Sync for HipDevice {}

impl HipDevice {
    pub fn open() -> Result<Self> {
        // SAFETY: plain HIP runtime queries on device 0.
        unsafe {
            if hipInit(0) != 0 {
                return Err(GpuError::NoDevice("hipInit failed (no ROCm driver)".into()));
            }
            let mut count = 0;
            if hipGetDeviceCount(&mut count) != 0 || count < 1 {
                return Err(GpuError::NoDevice("HIP reports 0 devices".into()));
            }
            check("hipSetDevice", hipSetDevice(0))?;
            let attr = |a: c_int| -> Result<i32> {
                let mut v = 0;
                check("hipDeviceGetAttribute", hipDeviceGetAttribute(&mut v, a, 0))?;
                Ok(v)
            };
            let mut name = [0 as c_char; 256];
            check(
                "hipDeviceGetName",
                hipDeviceGetName(name.as_mut_ptr(), 256, 0),
            )?;
            let mut mem = 0usize;
            check("hipDeviceTotalMem", hipDeviceTotalMem(&mut mem, 0))?;
            // gcnArch 910 is gfx90a; 940/941/942 are gfx94x.
            let gfx = match attr(ATTR_GCN_ARCH)? {
                910 => "gfx90a".to_string(),
                n => format!("gfx{n}"),
            };
            let info = DeviceInfo {
                name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                target: Target::Amd { gfx },
                multiprocessors: attr(ATTR_MULTIPROCESSOR_COUNT)? as u32,
                memory_bytes: mem as u64,
                l2_bytes: attr(ATTR_L2_CACHE_SIZE)? as u64,
                clock_khz: attr(ATTR_CLOCK_RATE)? as u32,
            };
            Ok(HipDevice {
                info,
                tables: Mutex::new(Tables::default()),
            })
        }
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: device 0 exists (checked in open).
        check("hipSetDevice", unsafe { hipSetDevice(0) })
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Device for HipDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn compile(&self, name: &str, source: &str, defines: &[(String, String)]) -> Result<Image> {
        hiprtc_compile(&self.info.target.name(), name, source, defines)
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: plain allocation, freed in `free`.
        check("hipMalloc", unsafe { hipMalloc(&mut p, bytes.max(1)) })?;
        Ok(p as u64)
    }

    fn free(&self, ptr: u64) {
        // SAFETY: `ptr` came from `alloc` and is freed once.
        let _ = unsafe { hipFree(ptr as *mut c_void) };
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: callers pass allocations at least `src.len()` bytes long.
        check("hipMemcpy", unsafe {
            hipMemcpy(
                dst as *mut c_void,
                src.as_ptr().cast(),
                src.len(),
                MEMCPY_HOST_TO_DEVICE,
            )
        })
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: as `upload`; hipMemcpy waits for queued work on the null stream.
        check("hipMemcpy", unsafe {
            hipMemcpy(
                dst.as_mut_ptr().cast(),
                src as *const c_void,
                dst.len(),
                MEMCPY_DEVICE_TO_HOST,
            )
        })
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both allocations hold `bytes`.
        check("hipMemcpyAsync", unsafe {
            hipMemcpyAsync(
                dst as *mut c_void,
                src as *const c_void,
                bytes,
                MEMCPY_DEVICE_TO_DEVICE,
                std::ptr::null_mut(),
            )
        })
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds `bytes`.
        check("hipMemset", unsafe {
            hipMemset(dst as *mut c_void, 0, bytes)
        })
    }

    fn load(&self, image: &Image) -> Result<ModuleId> {
        self.bind()?;
        let mut m: HipModule = std::ptr::null_mut();
        // SAFETY: a code object hipRTC built for this device's gfx target.
        check("hipModuleLoadData", unsafe {
            hipModuleLoadData(&mut m, image.bytes.as_ptr().cast())
        })?;
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
            api: "hipModuleGetFunction",
            msg: "NUL in name".into(),
        })?;
        let mut f: HipFunction = std::ptr::null_mut();
        // SAFETY: `m` is a loaded module.
        check("hipModuleGetFunction", unsafe {
            hipModuleGetFunction(&mut f, m, cname.as_ptr())
        })?;
        t.functions.push(f);
        Ok(FunctionId(t.functions.len() - 1))
    }

    fn launch(&self, f: FunctionId, dims: LaunchDims, args: &[Arg]) -> Result<()> {
        self.bind()?;
        let func = *self.tables().functions.get(f.0).ok_or(GpuError::Driver {
            api: "launch",
            msg: format!("unknown function {}", f.0),
        })?;
        let mut slots: Vec<Vec<u8>> = args.iter().map(|a| a.bytes()).collect();
        let mut params: Vec<*mut c_void> =
            slots.iter_mut().map(|s| s.as_mut_ptr().cast()).collect();
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        // SAFETY: the parameter list matches the kernel signature (each ops
        // module passes what its .hip entry point declares); `slots` outlives
        // the call, which copies the parameters.
        check("hipModuleLaunchKernel", unsafe {
            hipModuleLaunchKernel(
                func,
                gx,
                gy,
                gz,
                bx,
                by,
                bz,
                dims.shared_bytes_padded(),
                std::ptr::null_mut(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: no arguments.
        check("hipDeviceSynchronize", unsafe { hipDeviceSynchronize() })
    }

    fn record(&self) -> Result<EventId> {
        self.bind()?;
        let mut e: HipEvent = std::ptr::null_mut();
        // SAFETY: a fresh event recorded on the null stream.
        unsafe {
            check("hipEventCreate", hipEventCreate(&mut e))?;
            check("hipEventRecord", hipEventRecord(e, std::ptr::null_mut()))?;
        }
        let mut t = self.tables();
        t.events.push(e);
        Ok(EventId(t.events.len() - 1))
    }

    fn elapsed_ms(&self, start: EventId, end: EventId) -> Result<f32> {
        let t = self.tables();
        let (Some(&a), Some(&b)) = (t.events.get(start.0), t.events.get(end.0)) else {
            return Err(GpuError::Driver {
                api: "elapsed_ms",
                msg: "unknown event".into(),
            });
        };
        let mut ms = 0f32;
        // SAFETY: both events were recorded by this device.
        unsafe {
            check("hipEventSynchronize", hipEventSynchronize(b))?;
            check("hipEventElapsedTime", hipEventElapsedTime(&mut ms, a, b))?;
        }
        Ok(ms)
    }
}

impl Drop for HipDevice {
    fn drop(&mut self) {
        let t = self.tables.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: handles created by this device, destroyed once.
        unsafe {
            for &e in &t.events {
                hipEventDestroy(e);
            }
            for &m in &t.modules {
                hipModuleUnload(m);
            }
        }
    }
}
