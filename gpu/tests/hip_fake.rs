//! The HIP side of `Device` end to end against fake HIP libraries
//! (`fake_hip/fake_hip.c`, built here with the system `cc`): library search,
//! init, the architecture from `gcnArchName` in both struct layouts,
//! attributes, alloc/copy, hipRTC compile (options, logs, errors), module
//! load, launch argument packing (the fake runs two kernels on the CPU),
//! events and error strings. Without a C compiler each test prints one line
//! and passes.

use attnlab_gpu::param_block;
use attnlab_gpu::runtime::hip::HipDevice;
use attnlab_gpu::runtime::params::ParamBlock;
use attnlab_gpu::runtime::{Arg, Device, GpuError, LaunchDims, Target};
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;

const FAKE_C: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fake_hip/fake_hip.c");

/// Builds one fake library (`defines` pick its parts) as `dir/file`.
fn build(dir: &Path, file: &str, defines: &[&str]) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let out = dir.join(file);
    let o = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-std=c11", "-D_GNU_SOURCE"])
        .args(defines)
        .arg(FAKE_C)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| format!("no C compiler (cc: {e})"))?;
    if !o.status.success() {
        return Err(format!(
            "cc failed building {}: {}",
            out.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(out)
}

fn scratch(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("attnlab-fakehip-{}-{test}", std::process::id()))
}

/// A ROCm-6-like folder: libamdhip64 with both property entry points and a
/// separate libhiprtc. `None` (after one line) without a C compiler.
fn rocm6(test: &str, arch: &str) -> Option<PathBuf> {
    let dir = scratch(test).join("lib");
    let arch_def = format!("-DFAKE_ARCH=\"{arch}\"");
    let hip = build(
        &dir,
        "libamdhip64.so",
        &["-DFAKE_PART_HIP", "-DFAKE_R0600", &arch_def],
    );
    match hip.and_then(|_| build(&dir, "libhiprtc.so", &["-DFAKE_PART_RTC"])) {
        Ok(_) => Some(dir),
        Err(e) if e.starts_with("no C compiler") => {
            eprintln!("{test}: skipped, {e}");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// A handle on a fake library the device has loaded: the same path gives
/// the same library (dlopen counts references), so its log survives the
/// device and can be read after the device's drop.
fn log_handle(lib: &Path) -> libloading::Library {
    // SAFETY: the fake library, already loaded by the device.
    unsafe { libloading::Library::new(lib) }.expect("fake library loads")
}

/// The call log a fake library kept.
fn log_of(lib: &libloading::Library) -> String {
    // SAFETY: fake_log returns the library's NUL-terminated log buffer.
    unsafe {
        let f = lib
            .get::<unsafe extern "C" fn() -> *const c_char>(b"fake_log\0")
            .expect("fake_log");
        CStr::from_ptr(f()).to_string_lossy().into_owned()
    }
}

const KERNELS: &str = r#"
extern "C" __global__ void fake_scale(float* out, const float* in, float a, int n) {}
struct S { long long a; int b; float c; };
extern "C" __global__ void fake_struct(long long* out, S s) {}
"#;

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn hip6_device_runs_init_compile_copy_launch_and_events_through_the_fake_runtime_and_hiprtc() {
    let test = "hip6";
    let Some(dir) = rocm6(test, "gfx942:sramecc+:xnack-") else {
        return;
    };
    let dev = HipDevice::open_in(std::slice::from_ref(&dir)).expect("opens the fake device");
    let (hip_lib, rtc_lib) = dev.libraries();
    let (hip_handle, rtc_handle) = (log_handle(hip_lib), log_handle(rtc_lib));
    assert_eq!(hip_lib, dir.join("libamdhip64.so"));
    assert_eq!(
        rtc_lib,
        dir.join("libhiprtc.so"),
        "hipRTC from its own library (HIP >= 6)"
    );

    // Info: architecture from gcnArchName (R0600 layout), attributes.
    let info = dev.info().clone();
    assert_eq!(
        info.target,
        Target::Amd {
            gfx: "gfx942".into()
        }
    );
    assert_eq!(dev.gcn_arch_name, "gfx942:sramecc+:xnack-");
    assert_eq!(info.target.wave_size(), 64);
    assert_eq!(info.name, "Fake Instinct MI300X");
    assert_eq!(info.multiprocessors, 304);
    assert_eq!(info.l2_bytes, 4 << 20);
    assert_eq!(info.clock_khz, 2_100_000);
    assert_eq!(info.memory_bytes, 192 << 30);

    // Compile: our flags and the device's architecture reach hipRTC.
    let defines = vec![("N".to_string(), "4".to_string())];
    let image = dev
        .compile("fake.hip", KERNELS, &defines)
        .expect("compiles");
    assert_eq!(image.target, info.target);
    assert!(
        image.bytes.starts_with(b"FAKECO gfx942\n"),
        "{:?}",
        &image.bytes[..20]
    );

    // Load, look up, copy, launch with pointer / float / int arguments.
    let m = dev.load(&image).expect("loads");
    let scale = dev.function(m, "fake_scale").expect("fake_scale");
    let input = [1.5f32, -2.0, 0.25, 8.0, 3.0];
    let n = input.len();
    let src = dev.alloc(4 * n).unwrap();
    let dst = dev.alloc(4 * n).unwrap();
    dev.memset_zero(dst, 4 * n).unwrap();
    dev.upload(src, &bytes_of(&input)).unwrap();
    let start = dev.record().unwrap();
    // SAFETY: the fake runtime runs no kernel; the arguments are
    // fake_scale's (dst, src, scale, n) with n-float allocations.
    unsafe {
        dev.launch(
            scale,
            LaunchDims::linear(n, 64).unwrap(),
            &[
                Arg::Ptr(dst),
                Arg::Ptr(src),
                Arg::F32(-3.0),
                Arg::I32(n as i32),
            ],
        )
    }
    .expect("launches");
    let end = dev.record().unwrap();
    dev.synchronize().unwrap();
    let mut out = vec![0u8; 4 * n];
    dev.download(dst, &mut out).unwrap();
    let want: Vec<f32> = input.iter().map(|x| -3.0 * x).collect();
    assert_eq!(out, bytes_of(&want));
    let ms = dev.elapsed_ms(start, end).expect("elapsed");
    assert!(ms >= 0.0 && ms.is_finite(), "{ms}");

    // A by-value struct: a parameter block laid out as the kernel's `S`.
    param_block! {
        struct FakeS as "S" {
            a: i64,
            b: i32,
            c: f32,
        }
    }
    let st = dev.function(m, "fake_struct").unwrap();
    let out3 = dev.alloc(24).unwrap();
    let s = FakeS {
        a: -(1 << 40) - 7,
        b: -123,
        c: 0.1,
    }
    .arg();
    // SAFETY: the fake runtime runs no kernel; fake_struct(out, s) with a
    // 24-byte allocation.
    unsafe { dev.launch(st, LaunchDims::linear(1, 1).unwrap(), &[Arg::Ptr(out3), s]) }.unwrap();
    let mut got = vec![0u8; 24];
    dev.download(out3, &mut got).unwrap();
    let words: Vec<i64> = got
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(words, vec![-(1 << 40) - 7, -123, 0.1f32.to_bits() as i64]);

    // Device-to-device copy.
    dev.copy(src, dst, 4 * n).unwrap();
    let mut back = vec![0u8; 4 * n];
    dev.download(src, &mut back).unwrap();
    assert_eq!(back, bytes_of(&want));

    // Errors carry the call, HIP's message and the code.
    let e = dev.alloc(1 << 41).unwrap_err().to_string();
    assert_eq!(e, "hipMalloc failed: fake out of memory (2)");
    let e = dev.function(m, "no_such_kernel").unwrap_err().to_string();
    assert_eq!(
        e,
        "hipModuleGetFunction failed: fake named symbol not found (500)"
    );
    let bad = dev
        .compile("bad.hip", "#error this kernel does not build\n", &[])
        .unwrap_err();
    match bad {
        GpuError::Compile {
            kernel,
            target,
            log,
        } => {
            assert_eq!((kernel.as_str(), target.as_str()), ("bad.hip", "gfx942"));
            assert!(log.starts_with("HIPRTC_ERROR_COMPILATION (6)\n"), "{log}");
            assert!(
                log.contains("bad.hip:1: error: #error this kernel does not build"),
                "{log}"
            );
        }
        other => panic!("expected a compile error, got {other}"),
    }
    let foreign = attnlab_gpu::runtime::Image {
        target: Target::Amd {
            gfx: "gfx90a".into(),
        },
        bytes: image.bytes.clone(),
    };
    let e = dev.load(&foreign).unwrap_err().to_string();
    assert!(e.contains("compiled for gfx90a, device is gfx942"), "{e}");
    for p in [src, dst, out3] {
        dev.free(p);
    }
    drop(dev);

    let hip_log = log_of(&hip_handle);
    let rtc_log = log_of(&rtc_handle);
    assert!(
        hip_log.contains("hipGetDevicePropertiesR0600 0"),
        "{hip_log}"
    );
    assert!(
        !hip_log.contains("R0000"),
        "the HIP 5 layout is not read when R0600 exists"
    );
    assert!(
        !hip_log.contains("hipDeviceGetAttribute 10003"),
        "the numeric arch attribute (gone in HIP 6) is never asked"
    );
    for line in [
        "hipInit 0",
        "hipDeviceGetAttribute 63 0",
        "hipMemcpy 20 kind 1",
        "hipMemcpy 20 kind 2",
        "hipMemcpyAsync 20 kind 3 stream (nil)",
        "hipModuleLoadData FAKECO gfx942",
        "hipModuleLaunchKernel 1 grid 1 1 1 block 64 1 1 shared 0 stream (nil) extra (nil)",
        "hipEventElapsedTime",
        "hipEventDestroy",
        "hipModuleUnload",
    ] {
        assert!(
            hip_log.lines().any(|l| l == line),
            "no '{line}' in\n{hip_log}"
        );
    }
    for opt in [
        "-ffp-contract=off",
        "-fno-fast-math",
        "-std=c++17",
        "--gpu-architecture=gfx942",
        "-DN=4",
    ] {
        let line = format!("hiprtcCompileProgram option {opt}");
        assert!(
            rtc_log.lines().any(|l| l == line),
            "no '{line}' in\n{rtc_log}"
        );
    }
    assert_eq!(
        rtc_log.matches("hiprtcDestroyProgram").count(),
        2,
        "{rtc_log}"
    );
    let _ = std::fs::remove_dir_all(scratch(test));
}

#[test]
fn hip5_runtime_with_hiprtc_inside_and_no_r0600_reads_the_old_layout() {
    let test = "hip5";
    let dir = scratch(test).join("lib");
    match build(
        &dir,
        "libamdhip64.so",
        &[
            "-DFAKE_PART_HIP",
            "-DFAKE_PART_RTC",
            "-DFAKE_ARCH=\"gfx90a:sramecc+:xnack-\"",
        ],
    ) {
        Ok(_) => {}
        Err(e) if e.starts_with("no C compiler") => return eprintln!("{test}: skipped, {e}"),
        Err(e) => panic!("{e}"),
    }
    let dev = HipDevice::open_in(std::slice::from_ref(&dir)).expect("opens");
    let (hip_lib, rtc_lib) = dev.libraries();
    assert_eq!(hip_lib, rtc_lib, "hipRTC taken from libamdhip64 (HIP 5)");
    let handle = log_handle(hip_lib);
    assert_eq!(
        dev.info().target,
        Target::Amd {
            gfx: "gfx90a".into()
        }
    );
    let image = dev.compile("k.hip", KERNELS, &[]).unwrap();
    assert!(image.bytes.starts_with(b"FAKECO gfx90a\n"));
    drop(dev);
    let log = log_of(&handle);
    assert!(log.contains("hipGetDeviceProperties R0000 0"), "{log}");
    assert!(
        log.contains("hiprtcCompileProgram option --gpu-architecture=gfx90a"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(scratch(test));
}

#[test]
fn an_arch_name_that_is_not_gfx_fails_open_naming_the_layout_and_offset() {
    let test = "badarch";
    let Some(dir) = rocm6(test, "") else {
        return;
    };
    let e = HipDevice::open_in(std::slice::from_ref(&dir))
        .err()
        .expect("an empty gcnArchName is refused")
        .to_string();
    assert!(e.starts_with("hipGetDevicePropertiesR0600 failed: gcnArchName at offset 1160 of the R0600 layout: invalid gcnArchName ''"), "{e}");
    let _ = std::fs::remove_dir_all(scratch(test));
}

#[test]
fn a_folder_without_hip_is_no_device_with_one_line_naming_it() {
    let dir = scratch("empty");
    std::fs::create_dir_all(&dir).unwrap();
    match HipDevice::open_in(std::slice::from_ref(&dir)) {
        Err(GpuError::NoDevice(why)) => {
            assert!(why.starts_with("libamdhip64 not found; tried "), "{why}");
            assert!(
                why.contains(&dir.display().to_string()) && !why.contains('\n'),
                "{why}"
            );
        }
        Err(e) => panic!("expected NoDevice, got {e}"),
        Ok(_) => panic!("an empty folder has no HIP runtime"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_runtime_without_hiprtc_anywhere_is_no_device_saying_so() {
    let test = "nortc";
    let dir = scratch(test).join("lib");
    match build(&dir, "libamdhip64.so", &["-DFAKE_PART_HIP", "-DFAKE_R0600"]) {
        Ok(_) => {}
        Err(e) if e.starts_with("no C compiler") => return eprintln!("{test}: skipped, {e}"),
        Err(e) => panic!("{e}"),
    }
    match HipDevice::open_in(std::slice::from_ref(&dir)) {
        Err(GpuError::NoDevice(why)) => {
            assert!(
                why.contains("has no hipRTC and libhiprtc was not found"),
                "{why}"
            )
        }
        Err(e) => panic!("expected NoDevice, got {e}"),
        Ok(_) => panic!("no hipRTC: the device cannot compile"),
    }
    let _ = std::fs::remove_dir_all(scratch(test));
}
