//! Our HIP declarations (`gpu/src/runtime/hip_sys.rs`) against HIP's own
//! headers: a C++ file generated from `DECLARATIONS` assigns each entry
//! point to a function pointer of exactly our signature (C++ refuses any
//! mismatch), and static_asserts the enum values and the `gcnArchName`
//! offset and struct size of the layout that HIP version uses.
//!
//! Headers: `$ATTNLAB_HIP_INCLUDE` (folders separated by `:`), else
//! Debian's HIP 5.2 in /usr/include (`apt-get install libamdhip64-dev`,
//! which `.ci/install-gpu-toolchains.sh` does). Without headers or a C++
//! compiler the test prints one line and passes.

use attnlab_gpu::runtime::hip_sys::{self, PropsLayout, DECLARATIONS};
use std::path::PathBuf;
use std::process::Command;

/// Our Rust type (as `stringify!` wrote it) in C++, east-const.
fn c_type(rust: &str) -> String {
    let rust = rust.trim();
    if let Some(rest) = rust.strip_prefix("*mut ") {
        return format!("{}*", c_type(rest));
    }
    if let Some(rest) = rust.strip_prefix("*const ") {
        return format!("{} const*", c_type(rest));
    }
    match rust {
        "HipStatus" => "hipError_t",
        "HiprtcStatus" => "hiprtcResult",
        "HipModule" => "hipModule_t",
        "HipFunction" => "hipFunction_t",
        "HipEvent" => "hipEvent_t",
        "HipStream" => "hipStream_t",
        "HiprtcProgram" => "hiprtcProgram",
        "MemcpyKind" => "hipMemcpyKind",
        "DeviceAttribute" => "hipDeviceAttribute_t",
        "u32" => "unsigned int",
        "c_int" => "int",
        "usize" => "size_t",
        "f32" => "float",
        "c_char" => "char",
        "c_void" => "void",
        other => panic!("no C type for Rust type '{other}': add it to c_type"),
    }
    .to_string()
}

fn check_source() -> String {
    let mut s = String::from(
        "#include <hip/hip_runtime_api.h>\n#include <hip/hiprtc.h>\n#include <cstddef>\n\
         static_assert(sizeof(hipError_t) == sizeof(int) && sizeof(hiprtcResult) == sizeof(int), \"status codes are C ints\");\n\
         static_assert(sizeof(hipMemcpyKind) == sizeof(int) && sizeof(hipDeviceAttribute_t) == sizeof(int), \"enums are C ints\");\n\
         static_assert(sizeof(hipModule_t) == 8 && sizeof(hipFunction_t) == 8 && sizeof(hipEvent_t) == 8 && sizeof(hipStream_t) == 8 && sizeof(hiprtcProgram) == 8, \"handles are pointers\");\n",
    );
    s += &format!(
        "static_assert(hipSuccess == {} && HIPRTC_SUCCESS == 0, \"success\");\n",
        hip_sys::SUCCESS
    );
    for (name, v) in [
        ("hipDeviceAttributeClockRate", hip_sys::ATTR_CLOCK_RATE),
        ("hipDeviceAttributeL2CacheSize", hip_sys::ATTR_L2_CACHE_SIZE),
        (
            "hipDeviceAttributeMultiprocessorCount",
            hip_sys::ATTR_MULTIPROCESSOR_COUNT,
        ),
        ("hipMemcpyHostToDevice", hip_sys::MEMCPY_HOST_TO_DEVICE),
        ("hipMemcpyDeviceToHost", hip_sys::MEMCPY_DEVICE_TO_HOST),
        ("hipMemcpyDeviceToDevice", hip_sys::MEMCPY_DEVICE_TO_DEVICE),
    ] {
        s += &format!("static_assert({name} == {v}, \"{name}\");\n");
    }
    let old = PropsLayout::R0000;
    let new = PropsLayout::R0600;
    s += &format!(
        "#if HIP_VERSION_MAJOR < 6\n\
         static_assert(hipDeviceAttributeGcnArch == {attr}, \"the numeric arch attribute HIP 6 dropped\");\n\
         static_assert(offsetof(hipDeviceProp_t, gcnArchName) == {o0}, \"gcnArchName, HIP 5 layout\");\n\
         static_assert(sizeof(hipDeviceProp_t) == {s0}, \"hipDeviceProp_t size, HIP 5 layout\");\n\
         hipError_t (*props_entry)(hipDeviceProp_t*, int) = &hipGetDeviceProperties;\n\
         #else\n\
         static_assert(offsetof(hipDeviceProp_tR0600, gcnArchName) == {o6}, \"gcnArchName, R0600 layout\");\n\
         static_assert(sizeof(hipDeviceProp_tR0600) == {s6}, \"hipDeviceProp_tR0600 size\");\n\
         hipError_t (*props_entry)(hipDeviceProp_tR0600*, int) = &hipGetDevicePropertiesR0600;\n\
         #endif\n\
         static_assert({o0} + 256 <= {buf} && {s6} <= {buf}, \"the props buffer holds both layouts\");\n",
        attr = hip_sys::ATTR_GCN_ARCH_HIP5,
        o0 = old.gcn_arch_name_offset(),
        s0 = old.struct_size(),
        o6 = new.gcn_arch_name_offset(),
        s6 = new.struct_size(),
        buf = hip_sys::PROPS_BUFFER_BYTES,
    );
    for d in DECLARATIONS {
        let args: Vec<String> = d.args.iter().map(|a| c_type(a)).collect();
        s += &format!(
            "{} (*decl_{})({}) = &{};\n",
            c_type(d.ret),
            d.name,
            args.join(", "),
            d.name
        );
    }
    s
}

#[test]
fn c_types_follow_pointer_constness_from_the_outside_in() {
    assert_eq!(c_type("*mut *const c_char"), "char const**");
    assert_eq!(c_type("*const c_void"), "void const*");
    assert_eq!(c_type("*mut HipModule"), "hipModule_t*");
}

#[test]
fn our_hip_declarations_match_the_hip_headers() {
    let includes: Vec<PathBuf> = match std::env::var_os("ATTNLAB_HIP_INCLUDE") {
        Some(v) => std::env::split_paths(&v).collect(),
        None => vec![PathBuf::from("/usr/include")],
    };
    if !includes
        .iter()
        .any(|d| d.join("hip/hip_runtime_api.h").exists())
    {
        eprintln!(
            "our_hip_declarations_match_the_hip_headers: skipped, no hip/hip_runtime_api.h under {includes:?} (apt-get install libamdhip64-dev, or set ATTNLAB_HIP_INCLUDE)"
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("attnlab-hip-headers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("hip_decls.cpp");
    std::fs::write(&src, check_source()).unwrap();
    let mut cmd = Command::new("c++");
    cmd.args(["-fsyntax-only", "-std=c++17", "-D__HIP_PLATFORM_AMD__"]);
    for inc in &includes {
        cmd.arg("-I").arg(inc);
    }
    cmd.arg(&src);
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "our_hip_declarations_match_the_hip_headers: skipped, no C++ compiler (c++: {e})"
            );
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "our declarations disagree with the headers in {includes:?}:\n{stderr}"
    );
    // Say which HIP was checked.
    let version = includes
        .iter()
        .map(|d| d.join("hip/hip_version.h"))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("HIP_VERSION_MAJOR") || l.contains("HIP_VERSION_MINOR"))
                .filter_map(|l| l.split_whitespace().nth(2))
                .take(2)
                .collect::<Vec<_>>()
                .join(".")
        })
        .unwrap_or_default();
    eprintln!(
        "checked {} declarations against HIP {version} headers in {includes:?}",
        DECLARATIONS.len()
    );
}
