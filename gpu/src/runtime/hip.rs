//! HIP backend of [`Device`]: the HIP runtime and hipRTC loaded at run time
//! ([`super::hip_sys`]: `libamdhip64` + `libhiprtc`, HIP 5, 6 or 7), in the
//! same layers as the CUDA side: raw entry points, a `check` that turns
//! status codes into errors, and the safe trait on top. hipRTC compiles with
//! `-ffp-contract=off` (numerics.md §2); HIP's defaults already keep IEEE
//! division and denormals.

use super::hip_sys::{self, HipApi, HipEvent, HipFunction, HipModule, HiprtcProgram};
use super::{
    Arg, Device, DeviceInfo, EventId, FunctionId, GpuError, Image, LaunchDims, ModuleId, Result,
    Target,
};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// hipRTC options every kernel is compiled with.
pub const HIPRTC_FLAGS: [&str; 3] = ["-ffp-contract=off", "-fno-fast-math", "-std=c++17"];

/// A status code as an error naming the call, HIP's message and the code.
fn check(api: &HipApi, call: &'static str, status: c_int) -> Result<()> {
    if status == hip_sys::SUCCESS {
        return Ok(());
    }
    // SAFETY: hipGetErrorString returns a static NUL-terminated string (or
    // null for a code it does not know).
    let text = unsafe { (api.fns.hipGetErrorString)(status) };
    let msg = if text.is_null() {
        "unknown HIP error".to_string()
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    Err(GpuError::Driver {
        api: call,
        msg: format!("{msg} ({status})"),
    })
}

/// hipRTC's name for a status code.
fn rtc_status(api: &HipApi, status: c_int) -> String {
    // SAFETY: as hipGetErrorString.
    let text = unsafe { (api.fns.hiprtcGetErrorString)(status) };
    if text.is_null() {
        format!("hipRTC status {status}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        let s = unsafe { CStr::from_ptr(text) }.to_string_lossy();
        format!("{s} ({status})")
    }
}

/// Compiles one translation unit with hipRTC for `gfx` (a code object).
pub fn hiprtc_compile(
    api: &HipApi,
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
    let mut opts: Vec<CString> = Vec::new();
    for o in HIPRTC_FLAGS
        .iter()
        .map(|s| s.to_string())
        .chain([format!("--gpu-architecture={gfx}")])
        .chain(defines.iter().map(|(k, v)| format!("-D{k}={v}")))
    {
        opts.push(CString::new(o).map_err(|_| fail("an option contains a NUL byte".into()))?);
    }
    let mut ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let f = &api.fns;
    let mut prog: HiprtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer is a live CString for the duration of the calls;
    // the program is destroyed on every path after creation.
    unsafe {
        let created = (f.hiprtcCreateProgram)(
            &mut prog,
            src.as_ptr(),
            cname.as_ptr(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        if created != 0 {
            return Err(GpuError::Driver {
                api: "hiprtcCreateProgram",
                msg: rtc_status(api, created),
            });
        }
        let status = (f.hiprtcCompileProgram)(prog, ptrs.len() as c_int, ptrs.as_mut_ptr());
        let mut log_size = 0usize;
        let mut log = String::new();
        if (f.hiprtcGetProgramLogSize)(prog, &mut log_size) == 0 && log_size > 1 {
            let mut buf = vec![0u8; log_size];
            if (f.hiprtcGetProgramLog)(prog, buf.as_mut_ptr().cast()) == 0 {
                log = String::from_utf8_lossy(&buf[..log_size - 1]).into_owned();
            }
        }
        let result = if status != 0 {
            Err(fail(format!("{}\n{log}", rtc_status(api, status))))
        } else {
            let mut size = 0usize;
            let got = (f.hiprtcGetCodeSize)(prog, &mut size);
            if got != 0 {
                Err(GpuError::Driver {
                    api: "hiprtcGetCodeSize",
                    msg: rtc_status(api, got),
                })
            } else {
                let mut code = vec![0u8; size];
                let got = (f.hiprtcGetCode)(prog, code.as_mut_ptr().cast());
                if got != 0 {
                    Err(GpuError::Driver {
                        api: "hiprtcGetCode",
                        msg: rtc_status(api, got),
                    })
                } else {
                    Ok(Image {
                        target: Target::Amd {
                            gfx: gfx.to_string(),
                        },
                        bytes: code,
                    })
                }
            }
        };
        (f.hiprtcDestroyProgram)(&mut prog);
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
    api: Arc<HipApi>,
    info: DeviceInfo,
    /// `gcnArchName` as the device reports it (e.g. `gfx942:sramecc+:xnack-`).
    pub gcn_arch_name: String,
    tables: Mutex<Tables>,
}

// SAFETY: HIP handles may be used from any thread once the device is set
// (`bind` on every call); the tables are behind a mutex.
unsafe impl Send for HipDevice {}
unsafe impl Sync for HipDevice {}

/// `gcnArchName` read out of a `hipGetDeviceProperties*` buffer of `layout`:
/// the bytes up to the first NUL within its 256.
pub fn gcn_arch_name_in(props: &[u8], layout: hip_sys::PropsLayout) -> Option<String> {
    let at = layout.gcn_arch_name_offset();
    let field = props.get(at..at + 256)?;
    let len = field.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&field[..len]).into_owned())
}

impl HipDevice {
    /// Device 0 of the HIP runtime found in the usual places
    /// ([`HipApi::system`]); `NoDevice` with one line when there is none.
    pub fn open() -> Result<Self> {
        let api = HipApi::system().map_err(GpuError::NoDevice)?;
        Self::open_with(api)
    }

    /// Device 0 of the HIP runtime in `dirs` only (no loader path): the
    /// tests' fake libraries.
    pub fn open_in(dirs: &[PathBuf]) -> Result<Self> {
        let api = HipApi::load_from(dirs, false).map_err(GpuError::NoDevice)?;
        Self::open_with(Arc::new(api))
    }

    pub fn open_with(api: Arc<HipApi>) -> Result<Self> {
        let f = &api.fns;
        // SAFETY: plain HIP runtime queries on device 0; every out-pointer
        // is a live local of the declared size.
        unsafe {
            let init = (f.hipInit)(0);
            if init != 0 {
                let why = check(&api, "hipInit", init)
                    .err()
                    .map_or(String::new(), |e| e.to_string());
                return Err(GpuError::NoDevice(format!(
                    "{} loaded, but {why} (no ROCm driver or GPU)",
                    api.hip_path.display()
                )));
            }
            let mut count = 0;
            if (f.hipGetDeviceCount)(&mut count) != 0 || count < 1 {
                return Err(GpuError::NoDevice(format!(
                    "{} loaded, but HIP reports 0 devices",
                    api.hip_path.display()
                )));
            }
            check(&api, "hipSetDevice", (f.hipSetDevice)(0))?;
            let attr = |a: c_int| -> Result<i32> {
                let mut v = 0;
                check(
                    &api,
                    "hipDeviceGetAttribute",
                    (f.hipDeviceGetAttribute)(&mut v, a, 0),
                )?;
                Ok(v)
            };
            let mut name = [0 as c_char; 256];
            check(
                &api,
                "hipDeviceGetName",
                (f.hipDeviceGetName)(name.as_mut_ptr(), 256, 0),
            )?;
            let mut mem = 0usize;
            check(
                &api,
                "hipDeviceTotalMem",
                (f.hipDeviceTotalMem)(&mut mem, 0),
            )?;
            // The architecture from gcnArchName: the numeric attribute
            // (10003) is gone from HIP 6 on.
            let mut props = vec![0u64; hip_sys::PROPS_BUFFER_BYTES / 8];
            let entry = api.props_layout.entry_point();
            check(&api, entry, (api.get_props)(props.as_mut_ptr().cast(), 0))?;
            let bytes: Vec<u8> = props.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let gcn = gcn_arch_name_in(&bytes, api.props_layout).unwrap_or_default();
            let target = Target::from_gcn_arch_name(&gcn).map_err(|e| GpuError::Driver {
                api: entry,
                msg: format!(
                    "gcnArchName at offset {} of the {:?} layout: {e}",
                    api.props_layout.gcn_arch_name_offset(),
                    api.props_layout
                ),
            })?;
            let info = DeviceInfo {
                name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                target,
                multiprocessors: attr(hip_sys::ATTR_MULTIPROCESSOR_COUNT)?.max(0) as u32,
                memory_bytes: mem as u64,
                l2_bytes: attr(hip_sys::ATTR_L2_CACHE_SIZE)?.max(0) as u64,
                clock_khz: attr(hip_sys::ATTR_CLOCK_RATE)?.max(0) as u32,
            };
            Ok(HipDevice {
                api,
                info,
                gcn_arch_name: gcn,
                tables: Mutex::new(Tables::default()),
            })
        }
    }

    /// Where the runtime and hipRTC were loaded from.
    pub fn libraries(&self) -> (&std::path::Path, &std::path::Path) {
        (&self.api.hip_path, &self.api.rtc_path)
    }

    fn check(&self, call: &'static str, status: c_int) -> Result<()> {
        check(&self.api, call, status)
    }

    fn bind(&self) -> Result<()> {
        // SAFETY: device 0 exists (checked in open).
        self.check("hipSetDevice", unsafe { (self.api.fns.hipSetDevice)(0) })
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
        hiprtc_compile(&self.api, &self.info.target.name(), name, source, defines)
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: plain allocation, freed in `free`.
        self.check("hipMalloc", unsafe {
            (self.api.fns.hipMalloc)(&mut p, bytes.max(1))
        })?;
        Ok(p as u64)
    }

    fn free(&self, ptr: u64) {
        // SAFETY: `ptr` came from `alloc` and is freed once.
        let _ = unsafe { (self.api.fns.hipFree)(ptr as *mut c_void) };
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: callers pass allocations at least `src.len()` bytes long.
        self.check("hipMemcpy", unsafe {
            (self.api.fns.hipMemcpy)(
                dst as *mut c_void,
                src.as_ptr().cast(),
                src.len(),
                hip_sys::MEMCPY_HOST_TO_DEVICE,
            )
        })
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: as `upload`; hipMemcpy waits for queued work on the null stream.
        self.check("hipMemcpy", unsafe {
            (self.api.fns.hipMemcpy)(
                dst.as_mut_ptr().cast(),
                src as *const c_void,
                dst.len(),
                hip_sys::MEMCPY_DEVICE_TO_HOST,
            )
        })
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both allocations hold `bytes`.
        self.check("hipMemcpyAsync", unsafe {
            (self.api.fns.hipMemcpyAsync)(
                dst as *mut c_void,
                src as *const c_void,
                bytes,
                hip_sys::MEMCPY_DEVICE_TO_DEVICE,
                std::ptr::null_mut(),
            )
        })
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: `dst` holds `bytes`.
        self.check("hipMemset", unsafe {
            (self.api.fns.hipMemset)(dst as *mut c_void, 0, bytes)
        })
    }

    fn load(&self, image: &Image) -> Result<ModuleId> {
        if image.target != self.info.target {
            return Err(GpuError::Driver {
                api: "hipModuleLoadData",
                msg: format!(
                    "image compiled for {}, device is {}",
                    image.target.name(),
                    self.info.target.name()
                ),
            });
        }
        self.bind()?;
        let mut m: HipModule = std::ptr::null_mut();
        // SAFETY: a code object hipRTC built for this device's gfx target.
        self.check("hipModuleLoadData", unsafe {
            (self.api.fns.hipModuleLoadData)(&mut m, image.bytes.as_ptr().cast())
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
            msg: format!("NUL in kernel name {name:?}"),
        })?;
        let mut f: HipFunction = std::ptr::null_mut();
        // SAFETY: `m` is a loaded module.
        self.check("hipModuleGetFunction", unsafe {
            (self.api.fns.hipModuleGetFunction)(&mut f, m, cname.as_ptr())
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
        let mut params: Vec<*mut c_void> =
            slots.iter_mut().map(|s| s.as_mut_ptr().cast()).collect();
        let [gx, gy, gz] = dims.grid;
        let [bx, by, bz] = dims.block;
        // SAFETY: the parameter list matches the kernel signature (each ops
        // module passes what its .hip entry point declares); `slots` outlives
        // the call, which copies the parameters.
        self.check("hipModuleLaunchKernel", unsafe {
            (self.api.fns.hipModuleLaunchKernel)(
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
        self.check("hipDeviceSynchronize", unsafe {
            (self.api.fns.hipDeviceSynchronize)()
        })
    }

    fn record(&self) -> Result<EventId> {
        self.bind()?;
        let mut e: HipEvent = std::ptr::null_mut();
        // SAFETY: a fresh event recorded on the null stream; kept in the
        // table (destroyed on drop) as soon as it exists.
        unsafe {
            self.check("hipEventCreate", (self.api.fns.hipEventCreate)(&mut e))?;
            let mut t = self.tables();
            t.events.push(e);
            let id = EventId(t.events.len() - 1);
            drop(t);
            self.check(
                "hipEventRecord",
                (self.api.fns.hipEventRecord)(e, std::ptr::null_mut()),
            )?;
            Ok(id)
        }
    }

    fn elapsed_ms(&self, start: EventId, end: EventId) -> Result<f32> {
        let t = self.tables();
        let (Some(&a), Some(&b)) = (t.events.get(start.0), t.events.get(end.0)) else {
            return Err(GpuError::Driver {
                api: "elapsed_ms",
                msg: format!(
                    "unknown event {} or {} ({} recorded)",
                    start.0,
                    end.0,
                    t.events.len()
                ),
            });
        };
        drop(t);
        let mut ms = 0f32;
        // SAFETY: both events were recorded by this device.
        unsafe {
            self.check("hipEventSynchronize", (self.api.fns.hipEventSynchronize)(b))?;
            self.check(
                "hipEventElapsedTime",
                (self.api.fns.hipEventElapsedTime)(&mut ms, a, b),
            )?;
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
                (self.api.fns.hipEventDestroy)(e);
            }
            for &m in &t.modules {
                (self.api.fns.hipModuleUnload)(m);
            }
        }
    }
}
