//! Compiling every kernel for a target with no device present
//! (`attnlab gpu compile --target`): NVRTC for `sm_XX` (loaded at run time),
//! hipcc for `gfx*` (Debian's `hipcc` + `libamdhip64-dev`, HIP 5.2 / clang
//! 15). CI runs it for gfx90a, gfx940 and sm_90 so a kernel that stops
//! compiling for AMD fails there, not on a user's MI300.

use crate::kernels::{translation_unit, Defines, Family, FAMILIES};
use crate::runtime::cuda::nvrtc_compile;
use crate::runtime::{GpuError, Result, Target};
use serde::Serialize;
use std::process::Command;

/// hipcc flags matching NVRTC's contract flags (numerics.md §2): no FMA
/// contraction; clang's HIP defaults keep IEEE division and denormals.
pub const HIPCC_FLAGS: [&str; 5] = [
    "--genco",
    "-O3",
    "-ffp-contract=off",
    "-fno-fast-math",
    "-std=c++17",
];

/// One (family, variant) compiled for one target.
#[derive(Debug, Clone, Serialize)]
pub struct CompileResult {
    pub kernel: String,
    pub defines: String,
    pub ok: bool,
    pub bytes: usize,
    pub millis: u128,
    /// The compiler's log on failure (first 4000 characters).
    pub log: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompileReport {
    pub target: String,
    pub compiler: String,
    pub results: Vec<CompileResult>,
}

impl CompileReport {
    pub fn all_ok(&self) -> bool {
        self.results.iter().all(|r| r.ok)
    }
}

/// Compiles every family's every variant for `target`. Returns `NoDevice`
/// when the target's compiler is not installed (one line saying which).
pub fn compile_all(target: &Target) -> Result<CompileReport> {
    let compiler = match target {
        Target::Cuda { .. } => {
            if !crate::runtime::cuda::nvrtc_available() {
                return Err(GpuError::NoDevice(
                    "NVRTC (libnvrtc.so) is not on the loader path; run .ci/install-gpu-toolchains.sh".into(),
                ));
            }
            "nvrtc".to_string()
        }
        Target::Amd { .. } => {
            if Command::new("hipcc").arg("--version").output().is_err() {
                return Err(GpuError::NoDevice(
                    "hipcc is not installed; run .ci/install-gpu-toolchains.sh".into(),
                ));
            }
            "hipcc".to_string()
        }
    };
    let mut results = Vec::new();
    for f in FAMILIES {
        for defines in (f.variants)() {
            results.push(compile_one(target, f, &defines)?);
        }
    }
    Ok(CompileReport {
        target: target.name(),
        compiler,
        results,
    })
}

fn compile_one(target: &Target, f: &Family, defines: &Defines) -> Result<CompileResult> {
    let unit = translation_unit(f)?;
    let start = std::time::Instant::now();
    let name = format!("{}.hip", f.name);
    let outcome = match target {
        Target::Cuda { sm } => nvrtc_compile(*sm, &name, &unit, defines).map(|img| img.bytes.len()),
        Target::Amd { gfx } => hipcc_compile(gfx, &name, &unit, defines),
    };
    let define_text = defines
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let millis = start.elapsed().as_millis();
    Ok(match outcome {
        Ok(bytes) => CompileResult {
            kernel: f.name.into(),
            defines: define_text,
            ok: true,
            bytes,
            millis,
            log: None,
        },
        Err(GpuError::Compile { log, .. }) => {
            let log: String = log.chars().take(4000).collect();
            CompileResult {
                kernel: f.name.into(),
                defines: define_text,
                ok: false,
                bytes: 0,
                millis,
                log: Some(log),
            }
        }
        Err(e) => return Err(e),
    })
}

/// hipcc to a code object in a temporary folder; returns its size.
fn hipcc_compile(gfx: &str, name: &str, unit: &str, defines: &Defines) -> Result<usize> {
    let fail = |log: String| GpuError::Compile {
        kernel: name.to_string(),
        target: gfx.to_string(),
        log,
    };
    let dir = std::env::temp_dir().join(format!(
        "attnlab-hipcc-{}-{}",
        std::process::id(),
        name.trim_end_matches(".hip")
    ));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("temp dir {}: {e}", dir.display())))?;
    let src = dir.join(name);
    let out = dir.join(format!("{gfx}.hsaco"));
    std::fs::write(&src, unit).map_err(|e| fail(format!("writing {}: {e}", src.display())))?;
    let mut cmd = Command::new("hipcc");
    cmd.arg(format!("--offload-arch={gfx}")).args(HIPCC_FLAGS);
    cmd.args(defines.iter().map(|(k, v)| format!("-D{k}={v}")));
    cmd.arg(&src).arg("-o").arg(&out);
    let output = cmd
        .output()
        .map_err(|e| fail(format!("running hipcc: {e}")))?;
    let result = if output.status.success() {
        std::fs::metadata(&out)
            .map(|m| m.len() as usize)
            .map_err(|e| fail(format!("no code object: {e}")))
    } else {
        Err(fail(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        )))
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}
