//! The host backend of [`Device`]: runs the HIP kernels on the CPU, so every
//! diff family checks the kernels' bits against the emulator on any machine,
//! with NVIDIA's 32-lane waves or AMD's 64-lane ones.
//!
//! `compile` writes one C++ file per (family, defines, wave size): the
//! translation unit (portable.h's `ATTNLAB_HOST` branch maps `__shared__`,
//! `__syncthreads`, shuffles and the index variables onto the runtime),
//! `host_launch.h` and one generated `attnlab_launch_<entry>` per `extern "C"
//! __global__` entry, whose parameter types C++ deduces from the kernel. The
//! runtime (`host_shim.cpp`: every GPU thread a fiber, barriers per block
//! and per wave) is its own library per wave size, linked by each kernel
//! library, so the heavy standard headers compile once. The
//! system `c++` builds it into a shared library, cached on disk under a hash
//! of everything that went into it, and `load` dlopens it. Memory is host
//! memory; launches run synchronously and events are host wall time.
//!
//! The compile flags keep the contract (numerics.md §2): no FMA contraction,
//! no fast math, so every `fmaf` is one rounding and every `a * b + c` two,
//! as NVRTC (`--fmad=false`) and hipcc (`-ffp-contract=off`) compile them.

use super::{
    Arg, Device, DeviceInfo, EventId, FunctionId, GpuError, Image, LaunchDims, ModuleId, Result,
    Target,
};
use attnlab_shared::error::Error as SharedError;
use std::alloc::Layout;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// The runtime (fibers, barriers, shuffles), one shared library per wave size.
pub const HOST_SHIM: &str = include_str!("host_shim.cpp");
/// The launch template every kernel library is built with.
pub const HOST_LAUNCH_H: &str = include_str!("host_launch.h");

/// Flags of every host build (numerics.md §2). `-O1`: the kernels' loops run
/// fast enough while a family compiles in seconds. No strict aliasing: the
/// kernels reinterpret shared memory as GPU compilers allow.
pub const HOST_CXX_FLAGS: [&str; 8] = [
    "-std=c++20",
    "-O1",
    "-shared",
    "-fPIC",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-fno-strict-aliasing",
    "-pthread",
];

/// Dynamic shared memory one host block may take: the most a CDNA workgroup
/// has (64 KiB of LDS), so a launch that could not run on AMD fails here too.
pub const HOST_SHARED_LIMIT: u32 = 64 * 1024;

/// The C++ compiler: `$ATTNLAB_HOST_CXX` or `c++`, with its version line.
#[derive(Debug, Clone)]
pub struct HostCompiler {
    pub program: String,
    pub version: String,
    /// The kernels' portability header (`kernels/portable.h`), which the
    /// wave runtime (`host_shim.cpp`) is compiled behind; the kernel layer
    /// hands it in.
    pub runtime_header: &'static str,
}

impl HostCompiler {
    /// `NoDevice` with one line when there is no working compiler;
    /// `runtime_header` is `portable.h` (see [`HostCompiler::runtime_header`]).
    pub fn detect(runtime_header: &'static str) -> Result<Self> {
        let program = std::env::var("ATTNLAB_HOST_CXX").unwrap_or_else(|_| "c++".into());
        let out = Command::new(&program).arg("--version").output().map_err(|e| {
            GpuError::NoDevice(format!(
                "host device: no C++ compiler ('{program}': {e}); install g++ or set ATTNLAB_HOST_CXX"
            ))
        })?;
        if !out.status.success() {
            return Err(GpuError::NoDevice(format!(
                "host device: '{program} --version' failed"
            )));
        }
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(HostCompiler {
            program,
            version,
            runtime_header,
        })
    }

    /// Builds `source` (a `.hip` translation unit as `kernels::translation_unit`
    /// makes it) for waves of `wave` lanes into a cached shared library
    /// linked to the wave's runtime, and returns its path.
    pub fn build(
        &self,
        wave: u32,
        name: &str,
        source: &str,
        defines: &[(String, String)],
    ) -> Result<PathBuf> {
        let fail = |log: String| GpuError::Compile {
            kernel: name.to_string(),
            target: Target::Host { wave }.name(),
            log,
        };
        check_wave(wave)?;
        let runtime = self.runtime(wave)?;
        let mut args = self.flags(wave);
        // A unit that opens with the runtime header (every family's and
        // probe's does) gets it and host_launch.h from the wave's prelude,
        // parsed once into a precompiled header; any other is built whole.
        let file = match source.strip_prefix(self.runtime_header) {
            Some(body) => {
                let prelude = self.prelude(wave).map_err(fail)?;
                args.push("-include".into());
                args.push(prelude.display().to_string());
                host_body_file(body)
            }
            None => host_file(source),
        }
        .map_err(fail)?;
        args.extend(defines.iter().map(|(k, v)| format!("-D{k}={v}")));
        self.build_file(
            wave,
            name.trim_end_matches(".hip"),
            &file,
            &args,
            Some(&runtime),
        )
        .map_err(fail)
    }

    /// Compiles `source` (a translation unit, as for [`HostCompiler::build`])
    /// for waves of `wave` lanes without generating code (`-fsyntax-only`):
    /// its compile-time checks run (e.g. the parameter-block layouts of
    /// [`crate::runtime::params::static_asserts`]), nothing is built or cached.
    pub fn check_syntax(
        &self,
        wave: u32,
        name: &str,
        source: &str,
        defines: &[(String, String)],
    ) -> Result<()> {
        let fail = |log: String| GpuError::Compile {
            kernel: name.to_string(),
            target: Target::Host { wave }.name(),
            log,
        };
        check_wave(wave)?;
        let file = host_file(source).map_err(fail)?;
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let src = dir.join(format!(
            "check-{}-{}.{}.cpp",
            name.trim_end_matches(".hip"),
            std::process::id(),
            unique()
        ));
        std::fs::write(&src, file).map_err(|e| fail(format!("{}: {e}", src.display())))?;
        let mut args = self.flags(wave);
        args.extend(defines.iter().map(|(k, v)| format!("-D{k}={v}")));
        let out = Command::new(&self.program)
            .args(&args)
            .arg("-fsyntax-only")
            .arg(&src)
            .output();
        let _ = std::fs::remove_file(&src);
        let out = out.map_err(|e| fail(format!("running {}: {e}", self.program)))?;
        if !out.status.success() {
            let log = String::from_utf8_lossy(&out.stderr);
            return Err(fail(log.chars().take(8000).collect()));
        }
        Ok(())
    }

    /// The wave's runtime library (host_shim.cpp behind portable.h), built once.
    pub fn runtime(&self, wave: u32) -> Result<PathBuf> {
        let file = format!(
            "#define ATTNLAB_HOST_RUNTIME 1\n{}\n#line 1 \"host_launch.h\"\n{HOST_LAUNCH_H}\n#line 1 \"host_shim.cpp\"\n{HOST_SHIM}",
            self.runtime_header
        );
        let mut args = self.flags(wave);
        // Never unloaded: it installs a fault reporter (a signal handler).
        args.push("-Wl,-z,nodelete".into());
        self.build_file(wave, "attnlab_host_runtime", &file, &args, None)
            .map_err(|log| GpuError::Compile {
                kernel: "host_shim.cpp".into(),
                target: Target::Host { wave }.name(),
                log,
            })
    }

    /// The wave's prelude header (the runtime header, then host_launch.h),
    /// written once into the cache with its precompiled form beside it
    /// (`.gch` for g++, `.pch` for clang, both found by `-include`), and
    /// its path. Every kernel library of the wave includes it, so the
    /// standard headers and portable.h are parsed once instead of once per
    /// library: the same code, a shorter compile. Should the precompiled
    /// form fail to build or not match, the compiler reads the header as
    /// text (same code, only slower).
    pub fn prelude(&self, wave: u32) -> std::result::Result<PathBuf, String> {
        let text = format!(
            "{}\n#line 1 \"host_launch.h\"\n{HOST_LAUNCH_H}",
            self.runtime_header
        );
        let args = self.flags(wave);
        let key = fnv128(&[&self.version, &args.join(" "), &text]);
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let header = dir.join(format!("attnlab_host_prelude-w{wave}-{key}.h"));
        let ext = if self.version.contains("clang") {
            "pch"
        } else {
            "gch"
        };
        let pch = dir.join(format!("attnlab_host_prelude-w{wave}-{key}.h.{ext}"));
        let tmp = format!("{}.{}", std::process::id(), unique());
        if !header.exists() {
            let header_tmp = dir.join(format!("attnlab_host_prelude-w{wave}-{key}.{tmp}.h"));
            std::fs::write(&header_tmp, &text)
                .map_err(|e| format!("{}: {e}", header_tmp.display()))?;
            std::fs::rename(&header_tmp, &header)
                .map_err(|e| format!("{}: {e}", header.display()))?;
        }
        let building = key_lock(&format!("attnlab_host_prelude-w{wave}-{key}"));
        let _building = building.lock().unwrap_or_else(|e| e.into_inner());
        if !pch.exists() {
            let pch_tmp = dir.join(format!("attnlab_host_prelude-w{wave}-{key}.{tmp}.{ext}"));
            let built = Command::new(&self.program)
                .args(&args)
                .args(["-x", "c++-header"])
                .arg(&header)
                .arg("-o")
                .arg(&pch_tmp)
                .output()
                .is_ok_and(|o| o.status.success());
            if built {
                let _ = std::fs::rename(&pch_tmp, &pch);
            } else {
                let _ = std::fs::remove_file(&pch_tmp);
            }
        }
        Ok(header)
    }

    fn flags(&self, wave: u32) -> Vec<String> {
        let mut args: Vec<String> = HOST_CXX_FLAGS.iter().map(|s| s.to_string()).collect();
        if cfg!(target_arch = "x86_64") {
            // fmaf as one instruction instead of glibc's software fma (same bits).
            args.push("-march=native".into());
        }
        args.push("-DATTNLAB_HOST=1".into());
        args.push(format!("-DATTNLAB_HOST_WAVE={wave}"));
        args
    }

    /// Compiles `file` with `args` (linking `link`) into
    /// `<cache>/<stem>-w<wave>-<hash>.so` unless it is there already.
    fn build_file(
        &self,
        wave: u32,
        stem: &str,
        file: &str,
        args: &[String],
        link: Option<&Path>,
    ) -> std::result::Result<PathBuf, String> {
        let link_text = link.map(|p| p.display().to_string()).unwrap_or_default();
        let key = fnv128(&[&self.version, &args.join(" "), &link_text, file]);
        let dir = cache_dir();
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let base = format!("{stem}-w{wave}-{key}");
        let lib = dir.join(format!("{base}.so"));
        // Two threads of this process that need the same library (the
        // wave's runtime, a variant two tests share) build it once: the
        // second waits for the first and finds it in the cache.
        let building = key_lock(&base);
        let _building = building.lock().unwrap_or_else(|e| e.into_inner());
        if lib.exists() {
            return Ok(lib);
        }
        // Unique temporaries, renamed into place: concurrent builds of one key agree.
        let tmp = format!("{}.{}", std::process::id(), unique());
        let src = dir.join(format!("{base}.cpp"));
        let src_tmp = dir.join(format!("{base}.{tmp}.cpp"));
        let lib_tmp = dir.join(format!("{base}.{tmp}.so"));
        std::fs::write(&src_tmp, file).map_err(|e| format!("{}: {e}", src_tmp.display()))?;
        std::fs::rename(&src_tmp, &src).map_err(|e| format!("{}: {e}", src.display()))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(args).arg("-o").arg(&lib_tmp).arg(&src);
        if let Some(l) = link {
            // An absolute path: the kernel library's DT_NEEDED finds the runtime.
            cmd.arg(l);
        }
        let out = cmd
            .output()
            .map_err(|e| format!("running {}: {e}", self.program))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&lib_tmp);
            let log = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "{} {} (source kept at {})\n{}",
                self.program,
                args.join(" "),
                src.display(),
                log.chars().take(8000).collect::<String>()
            ));
        }
        std::fs::rename(&lib_tmp, &lib).map_err(|e| format!("{}: {e}", lib.display()))?;
        Ok(lib)
    }
}

fn check_wave(wave: u32) -> Result<()> {
    if wave == 32 || wave == 64 {
        Ok(())
    } else {
        Err(SharedError::invalid("host wave size", wave, "32 or 64").into())
    }
}

/// `$ATTNLAB_HOST_CACHE`, else `attnlab-host-kernels` in the temp folder.
fn cache_dir() -> PathBuf {
    std::env::var_os("ATTNLAB_HOST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("attnlab-host-kernels"))
}

/// The lock of one cache entry while this process builds it. One entry per
/// library built (a few hundred in the whole test suite), never removed.
fn key_lock(key: &str) -> Arc<Mutex<()>> {
    type Locks = Mutex<BTreeMap<String, Arc<Mutex<()>>>>;
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    locks.entry(key.to_string()).or_default().clone()
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Two 64-bit FNV-1a hashes (different offsets) of the parts, as 32 hex digits.
fn fnv128(parts: &[&str]) -> String {
    let mut h = [0xcbf2_9ce4_8422_2325u64, 0x6c62_272e_07bb_0142u64];
    for part in parts {
        for b in part.bytes().chain([0xff]) {
            for x in h.iter_mut() {
                *x = (*x ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    format!("{:016x}{:016x}", h[0], h[1])
}

/// The whole host file of a kernel library: the unit with its dynamic shared
/// memory rewritten, host_launch.h, and one launcher per entry point.
pub fn host_file(source: &str) -> std::result::Result<String, String> {
    let mut out = rewrite_dynamic_shared(source)?;
    out.push_str("\n#line 1 \"host_launch.h\"\n");
    out.push_str(HOST_LAUNCH_H);
    out.push_str("\n#line 1 \"host_launchers.cpp\"\n");
    push_launchers(&mut out, source)?;
    Ok(out)
}

/// A kernel library's file when the prelude (runtime header and
/// host_launch.h, [`HostCompiler::prelude`]) comes in by `-include`: the
/// unit's `body` after the runtime header, its dynamic shared memory
/// rewritten, and one launcher per entry point.
pub fn host_body_file(body: &str) -> std::result::Result<String, String> {
    let mut out = rewrite_dynamic_shared(body)?;
    out.push_str("\n#line 1 \"host_launchers.cpp\"\n");
    push_launchers(&mut out, body)?;
    Ok(out)
}

/// Appends one `attnlab_launch_<entry>` per entry point of `unit`.
fn push_launchers(out: &mut String, unit: &str) -> std::result::Result<(), String> {
    let entries = entry_points(unit);
    if entries.is_empty() {
        return Err("no `extern \"C\" __global__` entry point in the unit".into());
    }
    for e in &entries {
        out.push_str(&format!(
            "extern \"C\" int attnlab_launch_{e}(const attnlab_host::Launch* l, void* const* args, \
             const unsigned* kinds, const unsigned long long* sizes, unsigned long long nargs, char* err, \
             unsigned long long errlen) {{\n    return attnlab_host::launch(&{e}, l, args, kinds, sizes, nargs, err, errlen);\n}}\n"
        ));
    }
    Ok(())
}

/// `extern __shared__ T name[];` cannot be declared on the host: each becomes
/// `T* name = (T*)attnlab_host_dynamic_shared();` (the block's buffer).
pub fn rewrite_dynamic_shared(source: &str) -> std::result::Result<String, String> {
    const DECL: &str = "extern __shared__";
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find(DECL) {
        out.push_str(&rest[..at]);
        let after = &rest[at + DECL.len()..];
        // Only declarations: the first thing on their line (not comments).
        let line_start = out.rfind('\n').map_or(0, |i| i + 1);
        if !out[line_start..].trim().is_empty() {
            out.push_str(DECL);
            rest = after;
            continue;
        }
        let end = after
            .find(';')
            .ok_or_else(|| format!("`{DECL}` without a `;`"))?;
        let decl = after[..end].trim();
        let parsed = decl.strip_suffix("[]").and_then(|d| {
            let d = d.trim_end();
            let split = d.rfind(|c: char| !(c.is_alphanumeric() || c == '_'))?;
            let (ty, name) = (d[..=split].trim(), &d[split + 1..]);
            (!ty.is_empty() && !name.is_empty()).then_some((ty, name))
        });
        let (ty, name) = parsed.ok_or_else(|| {
            format!("cannot rewrite `{DECL} {decl};` for the host: expected `{DECL} T name[];`")
        })?;
        out.push_str(&format!(
            "{ty}* {name} = ({ty}*)attnlab_host_dynamic_shared()"
        ));
        rest = &after[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The names of the unit's `extern "C" __global__` functions: the identifier
/// before the first `(` that does not open `__launch_bounds__(...)`.
pub fn entry_points(source: &str) -> Vec<String> {
    const MARK: &str = "extern \"C\" __global__";
    let mut names = Vec::new();
    for (at, _) in source.match_indices(MARK) {
        let mut s = &source[at + MARK.len()..];
        let name = loop {
            let Some(paren) = s.find('(') else { break None };
            let head = s[..paren].trim_end();
            if head.ends_with("__launch_bounds__") {
                let Some(close) = s[paren..].find(')') else {
                    break None;
                };
                s = &s[paren + close + 1..];
                continue;
            }
            let start = head
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map_or(0, |i| i + 1);
            break Some(head[start..].to_string());
        };
        if let Some(n) = name.filter(|n| !n.is_empty() && !names.contains(n)) {
            names.push(n);
        }
    }
    names
}

/// Launch geometry as the shim reads it (`attnlab_host::Launch`).
#[repr(C)]
struct HostLaunch {
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    workers: u32,
}

/// `attnlab_launch_<entry>`: 0, or 1 with a message in `err`.
type LaunchFn = unsafe extern "C" fn(
    *const HostLaunch,
    *const *mut c_void,
    *const u32,
    *const u64,
    u64,
    *mut c_char,
    u64,
) -> c_int;

#[derive(Default)]
struct Tables {
    libraries: Vec<libloading::Library>,
    functions: Vec<(LaunchFn, String)>,
    events: Vec<Instant>,
    /// Live allocations: start address -> layout.
    allocations: BTreeMap<u64, Layout>,
}

/// The CPU as a [`Device`] with waves of `wave` lanes.
pub struct HostDevice {
    wave: u32,
    compiler: HostCompiler,
    workers: u32,
    info: DeviceInfo,
    tables: Mutex<Tables>,
}

impl HostDevice {
    /// A host device whose kernels see `WAVE_SIZE == wave` (32 or 64). Blocks
    /// run on `$ATTNLAB_HOST_THREADS` OS threads (default: every core);
    /// `runtime_header` is the kernels' `portable.h`.
    pub fn open(wave: u32, runtime_header: &'static str) -> Result<Self> {
        check_wave(wave)?;
        let compiler = HostCompiler::detect(runtime_header)?;
        let workers = std::env::var("ATTNLAB_HOST_THREADS")
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        let info = DeviceInfo {
            name: format!("host CPU ({}), {workers} threads", compiler.version),
            target: Target::Host { wave },
            multiprocessors: workers,
            memory_bytes: 0,
            l2_bytes: 0,
            clock_khz: 0,
        };
        Ok(HostDevice {
            wave,
            compiler,
            workers,
            info,
            tables: Mutex::new(Tables::default()),
        })
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The allocation holding `[ptr, ptr + bytes)`, or an error naming the range.
    fn check_range(&self, api: &'static str, ptr: u64, bytes: usize) -> Result<()> {
        let t = self.tables();
        let ok = t
            .allocations
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&start, l)| ptr + bytes as u64 <= start + l.size() as u64);
        if ok {
            Ok(())
        } else {
            Err(GpuError::Driver {
                api,
                msg: format!("{bytes} bytes at {ptr:#x} are not inside one host allocation"),
            })
        }
    }
}

fn arg_kind(a: &Arg) -> (u32, u64) {
    match a {
        Arg::Ptr(_) => (0, 8),
        Arg::I32(_) => (1, 4),
        Arg::I64(_) => (2, 8),
        Arg::F32(_) => (3, 4),
        Arg::Struct(b) => (4, b.len() as u64),
    }
}

impl Device for HostDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The image's bytes are the path of the cached shared library.
    fn compile(&self, name: &str, source: &str, defines: &[(String, String)]) -> Result<Image> {
        let lib = self.compiler.build(self.wave, name, source, defines)?;
        Ok(Image {
            target: self.info.target.clone(),
            bytes: lib.to_string_lossy().into_owned().into_bytes(),
        })
    }

    fn alloc(&self, bytes: usize) -> Result<u64> {
        let layout = Layout::from_size_align(bytes.max(1), 256)
            .map_err(|_| SharedError::invalid("host allocation", bytes, "at most isize::MAX"))?;
        // SAFETY: the layout has a non-zero size; freed with the same layout in `free`.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(GpuError::Driver {
                api: "host alloc",
                msg: format!("out of memory allocating {bytes} bytes"),
            });
        }
        self.tables().allocations.insert(p as u64, layout);
        Ok(p as u64)
    }

    fn free(&self, ptr: u64) {
        if let Some(layout) = self.tables().allocations.remove(&ptr) {
            // SAFETY: `ptr` came from `alloc` with this layout and is removed from the table once.
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) };
        }
    }

    fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.check_range("host upload", dst, src.len())?;
        // SAFETY: check_range: `dst..dst + len` lies in one live allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: u64, dst: &mut [u8]) -> Result<()> {
        self.check_range("host download", src, dst.len())?;
        // SAFETY: as `upload`.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.check_range("host copy", dst, bytes)?;
        self.check_range("host copy", src, bytes)?;
        // SAFETY: both ranges lie in live allocations; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        self.check_range("host memset", dst, bytes)?;
        // SAFETY: the range lies in a live allocation.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }

    fn load(&self, image: &Image) -> Result<ModuleId> {
        if image.target != self.info.target {
            return Err(GpuError::Driver {
                api: "host load",
                msg: format!(
                    "image for {}, device is {}",
                    image.target.name(),
                    self.info.target.name()
                ),
            });
        }
        let path = PathBuf::from(String::from_utf8_lossy(&image.bytes).into_owned());
        // SAFETY: the library is one `compile` built from a kernel unit and
        // host_launch.h, linked to the runtime; neither has initialisers.
        let lib = unsafe { libloading::Library::new(Path::new(&path)) }.map_err(|e| {
            GpuError::Driver {
                api: "dlopen",
                msg: format!("{}: {e}", path.display()),
            }
        })?;
        let mut t = self.tables();
        t.libraries.push(lib);
        Ok(ModuleId(t.libraries.len() - 1))
    }

    fn function(&self, module: ModuleId, name: &str) -> Result<FunctionId> {
        let mut t = self.tables();
        let lib = t.libraries.get(module.0).ok_or(GpuError::Driver {
            api: "function",
            msg: format!("unknown module {}", module.0),
        })?;
        let symbol = format!("attnlab_launch_{name}");
        // SAFETY: every attnlab_launch_* the host file defines has the LaunchFn
        // signature; the pointer stays valid while the library is in `libraries`
        // (until the device drops).
        let f: LaunchFn = unsafe {
            *lib.get::<LaunchFn>(symbol.as_bytes())
                .map_err(|e| GpuError::Driver {
                    api: "dlsym",
                    msg: format!("{name}: no such `extern \"C\" __global__` entry ({e})"),
                })?
        };
        t.functions.push((f, name.to_string()));
        Ok(FunctionId(t.functions.len() - 1))
    }

    unsafe fn launch(&self, f: FunctionId, dims: LaunchDims, args: &[Arg]) -> Result<()> {
        let (func, name) = self
            .tables()
            .functions
            .get(f.0)
            .cloned()
            .ok_or(GpuError::Driver {
                api: "launch",
                msg: format!("unknown function {}", f.0),
            })?;
        if dims.shared_bytes > HOST_SHARED_LIMIT {
            return Err(SharedError::invalid(
                "dynamic shared memory",
                dims.shared_bytes,
                format!("at most {HOST_SHARED_LIMIT} bytes (a CDNA workgroup's LDS)"),
            )
            .into());
        }
        let mut slots: Vec<Vec<u8>> = args.iter().map(|a| a.bytes()).collect();
        let params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut c_void)
            .collect();
        let (kinds, sizes): (Vec<u32>, Vec<u64>) = args.iter().map(arg_kind).unzip();
        let launch = HostLaunch {
            grid: dims.grid,
            block: dims.block,
            shared_bytes: dims.shared_bytes_padded(),
            workers: self.workers,
        };
        let mut err = vec![0u8; 1024];
        // SAFETY: the launcher checks the argument count and each argument's
        // kind and size against the kernel's parameter types before reading
        // `params`; the kernel then dereferences the pointer arguments as on a
        // GPU, i.e. the op launchers' host-side validation keeps it inside
        // the buffers they allocated (as on a device, a kernel bug is UB).
        let rc = unsafe {
            func(
                &launch,
                params.as_ptr(),
                kinds.as_ptr(),
                sizes.as_ptr(),
                args.len() as u64,
                err.as_mut_ptr() as *mut c_char,
                err.len() as u64,
            )
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(GpuError::Driver {
                api: "host launch",
                msg: format!("{name}: {}", String::from_utf8_lossy(&err[..end])),
            });
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn record(&self) -> Result<EventId> {
        let mut t = self.tables();
        t.events.push(Instant::now());
        Ok(EventId(t.events.len() - 1))
    }

    fn elapsed_ms(&self, start: EventId, end: EventId) -> Result<f32> {
        let t = self.tables();
        match (t.events.get(start.0), t.events.get(end.0)) {
            (Some(a), Some(b)) => Ok(b.saturating_duration_since(*a).as_secs_f32() * 1e3),
            _ => Err(GpuError::Driver {
                api: "elapsed_ms",
                msg: "unknown event".into(),
            }),
        }
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        let t = self.tables.get_mut().unwrap_or_else(|p| p.into_inner());
        for (&ptr, &layout) in &t.allocations {
            // SAFETY: each live allocation is freed once, with its layout.
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) };
        }
        t.allocations.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_shared_declarations_become_the_block_buffer() {
        let src = "  extern __shared__ float smem[];\n  extern __shared__ fv_f4 smem4[];";
        assert_eq!(
            rewrite_dynamic_shared(src).unwrap(),
            "  float* smem = (float*)attnlab_host_dynamic_shared();\n  \
             fv_f4* smem4 = (fv_f4*)attnlab_host_dynamic_shared();"
        );
        assert!(rewrite_dynamic_shared("extern __shared__ float smem[4];").is_err());
    }

    #[test]
    fn entry_points_skip_launch_bounds_and_attribute_macros() {
        let src =
            "extern \"C\" __global__ void __launch_bounds__(T, 3) paged_attention_2d(int a) {}\n\
                   extern \"C\" __global__ void FV_LAUNCH_BOUNDS flash_attn_varlen(\n\
                   extern \"C\" __global__ void contract_round(const float* x) {}";
        assert_eq!(
            entry_points(src),
            ["paged_attention_2d", "flash_attn_varlen", "contract_round"]
        );
    }

    #[test]
    fn every_family_has_its_listed_entry_points() {
        for f in crate::kernels::FAMILIES {
            let unit = crate::kernels::translation_unit(f).unwrap();
            let found = entry_points(&unit);
            for e in f.entries {
                assert!(
                    found.iter().any(|n| n == e),
                    "{}: {e} not in {found:?}",
                    f.name
                );
            }
            assert!(rewrite_dynamic_shared(&unit).is_ok(), "{}", f.name);
        }
    }
}
