//! The raw HIP runtime and hipRTC entry points, loaded at run time (the
//! design of cudarc's `dynamic-loading`): no ROCm is needed to build, and one
//! binary serves HIP 5, 6 and 7.
//!
//! * `libamdhip64` is searched in `$ROCM_PATH/lib`, `$HIP_PATH/lib`,
//!   `/opt/rocm/lib`, `/opt/rocm-*/lib` (newest first), then by bare name on
//!   the loader path (`LD_LIBRARY_PATH`, the ldconfig cache).
//! * hipRTC lives in `libamdhip64` up to HIP 5 and in its own `libhiprtc`
//!   from HIP 6 on (ROCm/rocm-examples#362): `libhiprtc` is searched next to
//!   the `libamdhip64` that was found, then like it; without one, the hipRTC
//!   symbols are taken from `libamdhip64` (HIP 5).
//! * The architecture comes from `hipDeviceProp_t::gcnArchName`; HIP 6 gave
//!   the struct a new layout and a new entry point,
//!   `hipGetDevicePropertiesR0600`, and kept `hipGetDeviceProperties` for
//!   the HIP 5 layout ([`PropsLayout`]). The numeric attribute 10003
//!   (`hipDeviceAttributeGcnArch`) is never asked: HIP 6 renamed it `Unused4`
//!   and answers it with an error.
//!
//! The declarations are written once, in `hip_api!`'s table, which gives
//! both the function-pointer fields and [`DECLARATIONS`], the C prototypes
//! `gpu/tests/hip_headers.rs` compiles against HIP's own headers.

use libloading::Library;
use std::ffi::{c_char, c_int, c_void, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

// Aliases named after the C types they stand for: the header check maps
// each to its C name (`hipError_t`, `hipModule_t`, ...).
pub type HipStatus = c_int;
pub type HiprtcStatus = c_int;
pub type HipModule = *mut c_void;
pub type HipFunction = *mut c_void;
pub type HipEvent = *mut c_void;
pub type HipStream = *mut c_void;
pub type HiprtcProgram = *mut c_void;
pub type MemcpyKind = c_int;
pub type DeviceAttribute = c_int;
/// `hipDeviceProp_t*` (layout per [`PropsLayout`]).
pub type DevicePropPtr = *mut c_void;

// Values from hip_runtime_api.h / driver_types.h, the same in HIP 5.2, 6.x
// and 7.x (checked against HIP 5.2's headers by gpu/tests/hip_headers.rs).
pub const SUCCESS: HipStatus = 0;
pub const ATTR_CLOCK_RATE: DeviceAttribute = 5;
pub const ATTR_L2_CACHE_SIZE: DeviceAttribute = 19;
pub const ATTR_MULTIPROCESSOR_COUNT: DeviceAttribute = 63;
/// `hipDeviceAttributeGcnArch` in HIP 5, `hipDeviceAttributeUnused4` from
/// HIP 6 on: never asked (kept to say so in tests).
pub const ATTR_GCN_ARCH_HIP5: DeviceAttribute = 10003;
pub const MEMCPY_HOST_TO_DEVICE: MemcpyKind = 1;
pub const MEMCPY_DEVICE_TO_HOST: MemcpyKind = 2;
pub const MEMCPY_DEVICE_TO_DEVICE: MemcpyKind = 3;

/// The two layouts of `hipDeviceProp_t` and where `gcnArchName` (a
/// `char[256]`) sits in each, from the headers (x86-64):
///
/// | layout | entry point | struct size | `gcnArchName` at | headers |
/// |---|---|---|---|---|
/// | `R0000` | `hipGetDeviceProperties` | 792 | 396 | HIP 5.2 (Debian), 5.7.1; `hipDeviceProp_tR0000` of HIP 6 |
/// | `R0600` | `hipGetDevicePropertiesR0600` | 1472 | 1160 | HIP 6.0.0, 6.2.2 and the 2024-10 HEAD (ROCm/HIP + ROCm/clr); 7.x (ROCm/rocm-systems: same fields up to `gcnArchName`) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropsLayout {
    R0000,
    R0600,
}

impl PropsLayout {
    pub const fn gcn_arch_name_offset(self) -> usize {
        match self {
            PropsLayout::R0000 => 396,
            PropsLayout::R0600 => 1160,
        }
    }
    pub const fn struct_size(self) -> usize {
        match self {
            PropsLayout::R0000 => 792,
            PropsLayout::R0600 => 1472,
        }
    }
    pub const fn entry_point(self) -> &'static str {
        match self {
            PropsLayout::R0000 => "hipGetDeviceProperties",
            PropsLayout::R0600 => "hipGetDevicePropertiesR0600",
        }
    }
}

/// The buffer handed to `hipGetDeviceProperties*`: larger than either
/// layout, 8-byte aligned.
pub const PROPS_BUFFER_BYTES: usize = 4096;

/// One declaration as C sees it (Rust type names; the header check maps the
/// aliases above to HIP's types).
#[derive(Debug, Clone, Copy)]
pub struct Declaration {
    /// `"hip"` (libamdhip64) or `"hiprtc"` (libhiprtc, or libamdhip64 on HIP 5).
    pub library: &'static str,
    pub name: &'static str,
    pub ret: &'static str,
    pub args: &'static [&'static str],
}

macro_rules! hip_api {
    ($( $lib:ident $name:ident ( $($t:ty),* ) -> $ret:ty; )*) => {
        /// The function pointers, resolved once when the libraries load.
        #[allow(non_snake_case)]
        pub struct Fns {
            $(pub $name: unsafe extern "C" fn($($t),*) -> $ret,)*
        }

        /// Every required entry point, as declared here.
        pub const DECLARATIONS: &[Declaration] = &[
            $(Declaration {
                library: stringify!($lib),
                name: stringify!($name),
                ret: stringify!($ret),
                args: &[$(stringify!($t)),*],
            },)*
        ];

        impl Fns {
            /// # Safety
            /// `hip` and `rtc` must be HIP runtime / hipRTC libraries whose
            /// symbols have the declared signatures.
            unsafe fn resolve(hip: &Library, rtc: &Library) -> Result<Fns, String> {
                Ok(Fns {
                    $($name: {
                        let lib = if stringify!($lib) == "hip" { hip } else { rtc };
                        *lib.get::<unsafe extern "C" fn($($t),*) -> $ret>(
                            concat!(stringify!($name), "\0").as_bytes(),
                        )
                        .map_err(|e| format!("{}: {e}", stringify!($name)))?
                    },)*
                })
            }
        }
    };
}

hip_api! {
    hip hipInit(u32) -> HipStatus;
    hip hipGetDeviceCount(*mut c_int) -> HipStatus;
    hip hipSetDevice(c_int) -> HipStatus;
    hip hipDeviceGetAttribute(*mut c_int, DeviceAttribute, c_int) -> HipStatus;
    hip hipDeviceGetName(*mut c_char, c_int, c_int) -> HipStatus;
    hip hipDeviceTotalMem(*mut usize, c_int) -> HipStatus;
    hip hipGetErrorString(HipStatus) -> *const c_char;
    hip hipMalloc(*mut *mut c_void, usize) -> HipStatus;
    hip hipFree(*mut c_void) -> HipStatus;
    hip hipMemcpy(*mut c_void, *const c_void, usize, MemcpyKind) -> HipStatus;
    hip hipMemcpyAsync(*mut c_void, *const c_void, usize, MemcpyKind, HipStream) -> HipStatus;
    hip hipMemset(*mut c_void, c_int, usize) -> HipStatus;
    hip hipModuleLoadData(*mut HipModule, *const c_void) -> HipStatus;
    hip hipModuleUnload(HipModule) -> HipStatus;
    hip hipModuleGetFunction(*mut HipFunction, HipModule, *const c_char) -> HipStatus;
    hip hipModuleLaunchKernel(
        HipFunction, u32, u32, u32, u32, u32, u32, u32, HipStream,
        *mut *mut c_void, *mut *mut c_void
    ) -> HipStatus;
    hip hipDeviceSynchronize() -> HipStatus;
    hip hipEventCreate(*mut HipEvent) -> HipStatus;
    hip hipEventDestroy(HipEvent) -> HipStatus;
    hip hipEventRecord(HipEvent, HipStream) -> HipStatus;
    hip hipEventSynchronize(HipEvent) -> HipStatus;
    hip hipEventElapsedTime(*mut f32, HipEvent, HipEvent) -> HipStatus;
    hiprtc hiprtcGetErrorString(HiprtcStatus) -> *const c_char;
    hiprtc hiprtcCreateProgram(
        *mut HiprtcProgram, *const c_char, *const c_char, c_int,
        *mut *const c_char, *mut *const c_char
    ) -> HiprtcStatus;
    hiprtc hiprtcCompileProgram(HiprtcProgram, c_int, *mut *const c_char) -> HiprtcStatus;
    hiprtc hiprtcGetProgramLogSize(HiprtcProgram, *mut usize) -> HiprtcStatus;
    hiprtc hiprtcGetProgramLog(HiprtcProgram, *mut c_char) -> HiprtcStatus;
    hiprtc hiprtcGetCodeSize(HiprtcProgram, *mut usize) -> HiprtcStatus;
    hiprtc hiprtcGetCode(HiprtcProgram, *mut c_char) -> HiprtcStatus;
    hiprtc hiprtcDestroyProgram(*mut HiprtcProgram) -> HiprtcStatus;
}

/// `hipGetDeviceProperties` / `hipGetDevicePropertiesR0600`: same C
/// signature up to the struct, so one Rust type (checked per header
/// version by the header test).
pub type GetDeviceProperties = unsafe extern "C" fn(DevicePropPtr, c_int) -> HipStatus;

/// The loaded libraries and their entry points. The libraries stay loaded
/// as long as this lives.
pub struct HipApi {
    pub fns: Fns,
    pub get_props: GetDeviceProperties,
    pub props_layout: PropsLayout,
    /// Where the runtime and hipRTC were loaded from (the same path on HIP 5).
    pub hip_path: PathBuf,
    pub rtc_path: PathBuf,
    _rtc: Option<Library>,
    _hip: Library,
}

const HIP_NAMES: [&str; 4] = [
    "libamdhip64.so",
    "libamdhip64.so.7",
    "libamdhip64.so.6",
    "libamdhip64.so.5",
];
const RTC_NAMES: [&str; 4] = [
    "libhiprtc.so",
    "libhiprtc.so.7",
    "libhiprtc.so.6",
    "libhiprtc.so.5",
];

/// The folders searched, in order, from the environment (`var`) and the
/// `/opt/rocm*` folders that exist under `opt` (normally `/opt`).
pub fn search_dirs(var: &dyn Fn(&str) -> Option<OsString>, opt: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for v in ["ROCM_PATH", "HIP_PATH"] {
        if let Some(root) = var(v).filter(|r| !r.is_empty()) {
            dirs.push(PathBuf::from(root).join("lib"));
        }
    }
    dirs.push(opt.join("rocm").join("lib"));
    let mut versioned: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(opt)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("rocm-")?;
            let key = version
                .split(['.', '-'])
                .map(|p| p.parse::<u64>().unwrap_or(0))
                .collect();
            Some((key, e.path().join("lib")))
        })
        .collect();
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    dirs.extend(versioned.into_iter().map(|(_, p)| p));
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// Opens the first of `names` found in `dirs`, then (with `loader_path`)
/// the first the dynamic loader finds by bare name. On failure, one line
/// saying what was tried.
fn open_first(
    what: &str,
    names: &[&str],
    dirs: &[PathBuf],
    loader_path: bool,
) -> Result<(Library, PathBuf), String> {
    let mut tried = Vec::new();
    let mut broken = Vec::new();
    for dir in dirs {
        for name in names {
            let path = dir.join(name);
            if !path.exists() {
                continue;
            }
            // SAFETY: loading a HIP library runs its initialisers, which is
            // what linking against it would do.
            match unsafe { Library::new(&path) } {
                Ok(lib) => return Ok((lib, path)),
                Err(e) => broken.push(format!("{}: {e}", path.display())),
            }
        }
        tried.push(dir.display().to_string());
    }
    if loader_path {
        for name in names {
            // SAFETY: as above.
            if let Ok(lib) = unsafe { Library::new(*name) } {
                return Ok((lib, PathBuf::from(name)));
            }
        }
        tried.push(format!("the loader path ({})", names.join(", ")));
    }
    let mut line = format!("{what} not found; tried {}", tried.join(", "));
    if !broken.is_empty() {
        line.push_str(&format!("; could not load {}", broken.join("; ")));
    }
    line.push_str(" (set ROCM_PATH to the ROCm folder)");
    Err(line)
}

impl HipApi {
    /// Loads from `dirs` (then the loader path, with `loader_path`).
    pub fn load_from(dirs: &[PathBuf], loader_path: bool) -> Result<HipApi, String> {
        let (hip, hip_path) = open_first("libamdhip64", &HIP_NAMES, dirs, loader_path)?;
        // libhiprtc next to the runtime first, so that both come from one ROCm.
        let mut rtc_dirs: Vec<PathBuf> = hip_path
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect();
        rtc_dirs.retain(|d| !d.as_os_str().is_empty());
        rtc_dirs.extend(dirs.iter().cloned());
        let rtc = open_first("libhiprtc", &RTC_NAMES, &rtc_dirs, loader_path).ok();
        // SAFETY: the libraries are HIP's; the declared signatures are
        // checked against HIP's headers (gpu/tests/hip_headers.rs).
        unsafe {
            let (rtc_lib, rtc_path) = match rtc {
                Some((lib, path)) => (Some(lib), path),
                None => {
                    if hip.get::<*const c_void>(b"hiprtcCreateProgram\0").is_err() {
                        return Err(format!(
                            "{} has no hipRTC and libhiprtc was not found next to it or on the loader path",
                            hip_path.display()
                        ));
                    }
                    (None, hip_path.clone())
                }
            };
            let fns = Fns::resolve(&hip, rtc_lib.as_ref().unwrap_or(&hip))
                .map_err(|e| format!("{}: missing entry point {e}", hip_path.display()))?;
            let (get_props, props_layout) =
                match hip.get::<GetDeviceProperties>(b"hipGetDevicePropertiesR0600\0") {
                    Ok(f) => (*f, PropsLayout::R0600),
                    Err(_) => (
                        *hip.get::<GetDeviceProperties>(b"hipGetDeviceProperties\0")
                            .map_err(|e| {
                                format!("{}: no hipGetDeviceProperties: {e}", hip_path.display())
                            })?,
                        PropsLayout::R0000,
                    ),
                };
            Ok(HipApi {
                fns,
                get_props,
                props_layout,
                hip_path,
                rtc_path,
                _rtc: rtc_lib,
                _hip: hip,
            })
        }
    }

    /// The libraries from the usual places ([`search_dirs`] of this
    /// process's environment and `/opt`, then the loader path), loaded once
    /// per process.
    pub fn system() -> Result<Arc<HipApi>, String> {
        static API: OnceLock<Result<Arc<HipApi>, String>> = OnceLock::new();
        API.get_or_init(|| {
            let dirs = search_dirs(&|v| std::env::var_os(v), Path::new("/opt"));
            HipApi::load_from(&dirs, true).map(Arc::new)
        })
        .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_starts_with_rocm_path_and_hip_path_then_opt_rocm_newest_first() {
        let opt = std::env::temp_dir().join(format!("attnlab-opt-{}", std::process::id()));
        for d in ["rocm-6.4.1", "rocm-7.0.2", "rocm-6.10.0", "rocm", "other"] {
            std::fs::create_dir_all(opt.join(d)).unwrap();
        }
        let env = |v: &str| match v {
            "ROCM_PATH" => Some(OsString::from("/r")),
            "HIP_PATH" => Some(OsString::from("/h")),
            _ => None,
        };
        let dirs = search_dirs(&env, &opt);
        let _ = std::fs::remove_dir_all(&opt);
        let want: Vec<PathBuf> = vec![
            "/r/lib".into(),
            "/h/lib".into(),
            opt.join("rocm/lib"),
            opt.join("rocm-7.0.2/lib"),
            opt.join("rocm-6.10.0/lib"),
            opt.join("rocm-6.4.1/lib"),
        ];
        assert_eq!(dirs, want);
    }

    #[test]
    fn unset_or_empty_variables_add_no_folder() {
        let env = |v: &str| (v == "HIP_PATH").then(OsString::new);
        let dirs = search_dirs(&env, Path::new("/nonexistent-opt"));
        assert_eq!(dirs, vec![PathBuf::from("/nonexistent-opt/rocm/lib")]);
    }

    #[test]
    fn nothing_found_says_in_one_line_what_was_tried() {
        let dir = std::env::temp_dir().join(format!("attnlab-nohip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = HipApi::load_from(std::slice::from_ref(&dir), false)
            .err()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!err.contains('\n'), "{err}");
        assert!(err.starts_with("libamdhip64 not found; tried "), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
        assert!(err.contains("ROCM_PATH"), "{err}");
    }

    #[test]
    fn every_declaration_is_named_once_and_belongs_to_a_known_library() {
        let mut names = std::collections::HashSet::new();
        for d in DECLARATIONS {
            assert!(names.insert(d.name), "{} declared twice", d.name);
            assert!(["hip", "hiprtc"].contains(&d.library), "{}", d.name);
            assert_eq!(
                d.library == "hiprtc",
                d.name.starts_with("hiprtc"),
                "{}",
                d.name
            );
        }
        assert!(
            !names.contains("hipGetDeviceProperties"),
            "loaded per layout, not in the table"
        );
    }

    #[test]
    fn both_property_layouts_fit_the_buffer_and_hold_a_256_byte_arch_name() {
        for l in [PropsLayout::R0000, PropsLayout::R0600] {
            assert!(l.gcn_arch_name_offset() + 256 <= l.struct_size());
            assert!(l.struct_size() <= PROPS_BUFFER_BYTES);
        }
    }
}
