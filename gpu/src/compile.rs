//! Compiling every kernel for a target with no device present
//! (`attnlab gpu compile --target`): NVRTC for `sm_XX` (loaded at run time);
//! for AMD, hipcc for gfx90a and gfx940 (Debian's `hipcc` +
//! `libamdhip64-dev`, HIP 5.2 / clang 15, which knows no later gfx9 part)
//! and a clang >= 20 for gfx941, gfx942 and gfx950 ([`AmdClang`]: Debian
//! 12's `clang-22`, or ROCm's own clang). CI runs every target it has a
//! compiler for, so a kernel that stops compiling for AMD fails there, not
//! on a user's MI300 or MI355.

use crate::kernels::{translation_unit, Defines, Family, FAMILIES};
use crate::runtime::cuda::nvrtc_compile_logged;
use crate::runtime::{GpuError, Result, Target};
use serde::Serialize;
use std::path::Path;
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
    /// With `resources`: per entry point, the compiler's register, spill and
    /// shared-memory report (ptxas -v on NVIDIA; clang's
    /// kernel-resource-usage remarks on AMD), one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
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
    compile_families(target, None, false)
}

/// [`compile_all`] restricted to the family named `only` (an error naming
/// the known families when there is none), and with `resources`, each
/// result carries the compiler's per-kernel resource report: registers and
/// spills decide occupancy, which no device is needed to read.
pub fn compile_families(
    target: &Target,
    only: Option<&str>,
    resources: bool,
) -> Result<CompileReport> {
    compile_families_with(target, only, resources, None, |_, _| {})
}

/// [`compile_families`], calling `on_kernel(done, total)` after each
/// (family, variant): `attnlab gpu compile`'s progress bar.
pub fn compile_families_with(
    target: &Target,
    only: Option<&str>,
    resources: bool,
    dump: Option<&Path>,
    mut on_kernel: impl FnMut(usize, usize),
) -> Result<CompileReport> {
    let families: Vec<&Family> = match only {
        None => FAMILIES.iter().collect(),
        Some(name) => vec![crate::kernels::family(name)?],
    };
    if let Some(dir) = dump {
        std::fs::create_dir_all(dir).map_err(|e| {
            GpuError::Invalid(attnlab_shared::error::Error::invalid(
                "--dump",
                dir.display(),
                format!("a folder that can be created and written ({e})"),
            ))
        })?;
    }
    let compiler = match target {
        Target::Cuda { .. } => {
            if !crate::runtime::cuda::nvrtc_available() {
                return Err(GpuError::NoDevice(
                    "NVRTC (libnvrtc.so) is not on the loader path; run .ci/install-gpu-toolchains.sh".into(),
                ));
            }
            "nvrtc".to_string()
        }
        Target::Amd { gfx } if AmdClang::needed_for(gfx) => AmdClang::detect()?.describe(),
        Target::Amd { .. } => {
            if Command::new("hipcc").arg("--version").output().is_err() {
                return Err(GpuError::NoDevice(
                    "hipcc is not installed; run .ci/install-gpu-toolchains.sh".into(),
                ));
            }
            "hipcc".to_string()
        }
        Target::Host { .. } => {
            let c = crate::runtime::host::HostCompiler::detect(crate::kernels::PORTABLE_H)?;
            format!("{} ({})", c.program, c.version)
        }
    };
    let units: Vec<(&Family, Defines)> = families
        .into_iter()
        .flat_map(|f| (f.variants)().into_iter().map(move |d| (f, d)))
        .collect();
    let mut results = Vec::new();
    for (f, defines) in &units {
        results.push(compile_one(target, f, defines, resources, dump)?);
        on_kernel(results.len(), units.len());
    }
    Ok(CompileReport {
        target: target.name(),
        compiler,
        results,
    })
}

/// The file name `--dump` gives one compiled variant: the family, its
/// defines as `NAME-value` joined by `_` (characters other than ASCII
/// letters, digits, `-` and `_` become `-`), and the image's extension.
pub fn dump_file_name(family: &str, defines: &Defines, target: &Target) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let mut name = clean(family);
    for (k, v) in defines {
        name.push_str(&format!(".{}-{}", clean(k), clean(v)));
    }
    let ext = match target {
        Target::Cuda { .. } => "cubin",
        Target::Amd { .. } => "hsaco",
        Target::Host { .. } => "so",
    };
    format!("{name}.{ext}")
}

fn compile_one(
    target: &Target,
    f: &Family,
    defines: &Defines,
    resources: bool,
    dump: Option<&Path>,
) -> Result<CompileResult> {
    let unit = translation_unit(f)?;
    let start = std::time::Instant::now();
    let name = format!("{}.hip", f.name);
    let outcome = match target {
        Target::Cuda { sm } => {
            let extra: &[&str] = if resources {
                &["--ptxas-options=-v"]
            } else {
                &[]
            };
            nvrtc_compile_logged(*sm, &name, &unit, defines, extra)
                .map(|(img, log)| (img.bytes, ptxas_resources(&log)))
        }
        Target::Amd { gfx } if AmdClang::needed_for(gfx) => {
            AmdClang::detect()?.compile(gfx, &name, &unit, defines, resources)
        }
        Target::Amd { gfx } => hipcc_compile(gfx, &name, &unit, defines, resources),
        Target::Host { wave } => {
            crate::runtime::host::HostCompiler::detect(crate::kernels::PORTABLE_H)?
                .build(*wave, &name, &unit, defines)
                .map(|lib| (std::fs::read(lib).unwrap_or_default(), Vec::new()))
        }
    };
    let define_text = defines
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    let millis = start.elapsed().as_millis();
    if let (Some(dir), Ok((image, _))) = (dump, &outcome) {
        let path = dir.join(dump_file_name(f.name, defines, target));
        std::fs::write(&path, image).map_err(|e| {
            GpuError::Invalid(attnlab_shared::error::Error::invalid(
                "--dump",
                path.display(),
                format!("a writable file ({e})"),
            ))
        })?;
    }
    Ok(match outcome {
        Ok((image, resources)) => CompileResult {
            kernel: f.name.into(),
            defines: define_text,
            ok: true,
            bytes: image.len(),
            millis,
            log: None,
            resources,
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
                resources: Vec::new(),
            }
        }
        Err(e) => return Err(e),
    })
}

/// ptxas -v's report, one line per entry point: "name: N registers, ...".
/// ptxas prints "Compiling entry function 'X'" then "Used N registers, ..."
/// (and a spill line before it); lines are joined per function.
fn ptxas_resources(log: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in log.lines() {
        // "ptxas info    : <text>" or a continuation "ptxas         .     <text>".
        let text = line
            .trim_start_matches("ptxas")
            .trim_start()
            .trim_start_matches([':', '.'])
            .trim();
        let text = text
            .strip_prefix("info")
            .map_or(text, |t| t.trim_start().trim_start_matches(':').trim());
        if let Some(rest) = text.strip_prefix("Compiling entry function '") {
            if let Some((name, parts)) = current.take() {
                out.push(format!("{name}: {}", parts.join(", ")));
            }
            let name = rest.split('\'').next().unwrap_or(rest).to_string();
            current = Some((name, Vec::new()));
        } else if let Some((_, parts)) = current.as_mut() {
            if text.starts_with("Used") || text.contains("spill") {
                parts.push(text.to_string());
            }
        }
    }
    if let Some((name, parts)) = current {
        out.push(format!("{name}: {}", parts.join(", ")));
    }
    out
}

/// clang's `-Rpass-analysis=kernel-resource-usage` remarks, one line per
/// kernel: "name: VGPRs N, ScratchSize N, Occupancy N, LDS N, ...".
fn amd_resources(stderr: &str) -> Vec<String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in stderr.lines() {
        let Some(pos) = line.find("remark: ") else {
            continue;
        };
        let remark = &line[pos + 8..];
        if let Some(name) = remark.strip_prefix("Function Name: ") {
            let name = name.trim_end_matches(" [-Rpass-analysis=kernel-resource-usage]");
            out.push((name.trim().to_string(), Vec::new()));
        } else if let Some((_, parts)) = out.last_mut() {
            let r = remark
                .trim_end_matches(" [-Rpass-analysis=kernel-resource-usage]")
                .trim();
            if ["VGPRs:", "SGPRs:", "ScratchSize", "Occupancy", "LDS Size"]
                .iter()
                .any(|k| r.starts_with(k))
            {
                parts.push(r.to_string());
            }
        }
    }
    out.into_iter()
        .map(|(n, p)| format!("{n}: {}", p.join(", ")))
        .collect()
}

/// The device libraries clang links into every code object, as hipcc does
/// by default (no fast math, IEEE square root, code object ABI 5, wave 64):
/// target-independent bitcode, so Debian's HIP 5.2 copies serve gfx942 and
/// gfx950 too. No `oclc_isa_version_*` is linked (Debian has none past
/// 940): a kernel that needed one would fail to link, naming the symbol.
pub const AMD_DEVICE_LIBS: [&str; 9] = [
    "hip",
    "ockl",
    "ocml",
    "oclc_abi_version_500",
    "oclc_wavefrontsize64_on",
    "oclc_daz_opt_off",
    "oclc_finite_only_off",
    "oclc_unsafe_math_off",
    "oclc_correctly_rounded_sqrt_on",
];

/// A clang that knows gfx941/942/950 (LLVM >= 20) and the HIP device
/// libraries' bitcode. Found as `$ATTNLAB_AMD_CLANG`, else `clang++-22`,
/// `clang++-21`, `clang++-20`, `$ROCM_PATH/llvm/bin/clang++`,
/// `/opt/rocm/llvm/bin/clang++`; the bitcode in `$ATTNLAB_AMD_DEVICE_LIBS`,
/// else Debian's `/usr/lib/x86_64-linux-gnu/amdgcn/bitcode`, else
/// `$ROCM_PATH/amdgcn/bitcode`, `/opt/rocm/amdgcn/bitcode`.
#[derive(Debug, Clone)]
pub struct AmdClang {
    pub program: std::path::PathBuf,
    pub version: String,
    pub device_libs: std::path::PathBuf,
}

impl AmdClang {
    /// The AMD targets Debian's hipcc (clang 15) does not know.
    pub fn needed_for(gfx: &str) -> bool {
        ["gfx941", "gfx942", "gfx950"].contains(&gfx)
    }

    pub fn detect() -> Result<Self> {
        use std::path::PathBuf;
        let rocm = std::env::var_os("ROCM_PATH").map(PathBuf::from);
        let mut programs: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("ATTNLAB_AMD_CLANG") {
            programs.push(p.into());
        }
        programs.extend(["clang++-22", "clang++-21", "clang++-20"].map(PathBuf::from));
        if let Some(r) = &rocm {
            programs.push(r.join("llvm/bin/clang++"));
        }
        programs.push("/opt/rocm/llvm/bin/clang++".into());
        let found = programs.iter().find_map(|p| {
            let out = Command::new(p).arg("--version").output().ok()?;
            out.status.success().then(|| {
                let v = String::from_utf8_lossy(&out.stdout);
                (
                    p.clone(),
                    v.lines().next().unwrap_or_default().trim().to_string(),
                )
            })
        });
        let Some((program, version)) = found else {
            return Err(GpuError::NoDevice(format!(
                "no clang for gfx941/gfx942/gfx950 (LLVM >= 20); tried {}; run .ci/install-gpu-toolchains.sh (Debian 12: clang-22 lld-22) or set ATTNLAB_AMD_CLANG",
                programs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        };
        let mut lib_dirs: Vec<PathBuf> = Vec::new();
        if let Some(p) = std::env::var_os("ATTNLAB_AMD_DEVICE_LIBS") {
            lib_dirs.push(p.into());
        }
        lib_dirs.push("/usr/lib/x86_64-linux-gnu/amdgcn/bitcode".into());
        if let Some(r) = &rocm {
            lib_dirs.push(r.join("amdgcn/bitcode"));
        }
        lib_dirs.push("/opt/rocm/amdgcn/bitcode".into());
        let Some(device_libs) = lib_dirs
            .iter()
            .find(|d| d.join("ocml.bc").exists())
            .cloned()
        else {
            return Err(GpuError::NoDevice(format!(
                "no HIP device libraries (ocml.bc) in {}; apt-get install rocm-device-libs or set ATTNLAB_AMD_DEVICE_LIBS",
                lib_dirs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )));
        };
        Ok(AmdClang {
            program,
            version,
            device_libs,
        })
    }

    pub fn describe(&self) -> String {
        format!("{} ({})", self.program.display(), self.version)
    }

    /// The arguments compiling `src` to the code object `out` for `gfx`.
    pub fn args(
        &self,
        gfx: &str,
        src: &std::path::Path,
        out: &std::path::Path,
        defines: &Defines,
    ) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "-x".into(),
            "hip".into(),
            format!("--offload-arch={gfx}").into(),
            "--cuda-device-only".into(),
            "--no-gpu-bundle-output".into(),
            "-nogpulib".into(),
            // CDNA waves are 64 lanes; LLVM 22 no longer predefines the
            // macro HIP 5.2's headers and kernels/portable.h read.
            "-D__AMDGCN_WAVEFRONT_SIZE=64".into(),
        ];
        a.extend(HIPCC_FLAGS[1..].iter().map(|f| f.into()));
        for lib in AMD_DEVICE_LIBS {
            a.push("-Xclang".into());
            a.push("-mlink-builtin-bitcode".into());
            a.push("-Xclang".into());
            a.push(self.device_libs.join(format!("{lib}.bc")).into());
        }
        a.extend(defines.iter().map(|(k, v)| format!("-D{k}={v}").into()));
        a.push(src.into());
        a.push("-o".into());
        a.push(out.into());
        a
    }

    fn compile(
        &self,
        gfx: &str,
        name: &str,
        unit: &str,
        defines: &Defines,
        resources: bool,
    ) -> Result<(Vec<u8>, Vec<String>)> {
        let mut cmd = Command::new(&self.program);
        let extra: &[&str] = if resources {
            &["-Rpass-analysis=kernel-resource-usage"]
        } else {
            &[]
        };
        run_to_code_object(gfx, name, unit, |src, out| {
            cmd.args(self.args(gfx, src, out, defines)).args(extra);
            cmd.output()
        })
    }
}

/// Writes `unit` to a temporary folder, runs `compile(src, out)` and
/// returns the code object and the resource remarks.
fn run_to_code_object(
    gfx: &str,
    name: &str,
    unit: &str,
    compile: impl FnOnce(&std::path::Path, &std::path::Path) -> std::io::Result<std::process::Output>,
) -> Result<(Vec<u8>, Vec<String>)> {
    let fail = |log: String| GpuError::Compile {
        kernel: name.to_string(),
        target: gfx.to_string(),
        log,
    };
    let dir = std::env::temp_dir().join(format!(
        "attnlab-amd-{}-{}-{gfx}",
        std::process::id(),
        name.trim_end_matches(".hip")
    ));
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("temp dir {}: {e}", dir.display())))?;
    let src = dir.join(name);
    let out = dir.join(format!("{gfx}.hsaco"));
    std::fs::write(&src, unit).map_err(|e| fail(format!("writing {}: {e}", src.display())))?;
    let output = compile(&src, &out).map_err(|e| fail(format!("running the compiler: {e}")))?;
    let result = if output.status.success() {
        std::fs::read(&out)
            .map(|image| {
                (
                    image,
                    amd_resources(&String::from_utf8_lossy(&output.stderr)),
                )
            })
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

/// hipcc to a code object in a temporary folder; returns it (and with
/// `resources` the per-kernel resource remarks).
fn hipcc_compile(
    gfx: &str,
    name: &str,
    unit: &str,
    defines: &Defines,
    resources: bool,
) -> Result<(Vec<u8>, Vec<String>)> {
    run_to_code_object(gfx, name, unit, |src, out| {
        let mut cmd = Command::new("hipcc");
        cmd.arg(format!("--offload-arch={gfx}")).args(HIPCC_FLAGS);
        cmd.args(defines.iter().map(|(k, v)| format!("-D{k}={v}")));
        if resources {
            cmd.arg("-Rpass-analysis=kernel-resource-usage");
        }
        cmd.arg(src).arg("-o").arg(out);
        cmd.output()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    #[test]
    fn dump_file_names_spell_the_defines_and_stay_plain_file_names() {
        let defines: Defines = vec![
            ("Q_DTYPE".into(), "2".into()),
            ("UT_D".into(), "128".into()),
            ("ODD".into(), "a/b c".into()),
        ];
        assert_eq!(
            dump_file_name("paged_decode_tc", &defines, &Target::Cuda { sm: 90 }),
            "paged_decode_tc.Q_DTYPE-2.UT_D-128.ODD-a-b-c.cubin"
        );
        assert!(dump_file_name("x", &Vec::new(), &Target::Host { wave: 64 }).ends_with(".so"));
        let amd = dump_file_name(
            "mla/../x",
            &Vec::new(),
            &Target::Amd {
                gfx: "gfx942".into(),
            },
        );
        assert_eq!(amd, "mla----x.hsaco");
        assert!(!amd.contains('/'));
    }

    #[test]
    fn only_the_gfx9_parts_debians_hipcc_does_not_know_go_to_clang() {
        for (gfx, clang) in [
            ("gfx90a", false),
            ("gfx940", false),
            ("gfx941", true),
            ("gfx942", true),
            ("gfx950", true),
        ] {
            assert_eq!(AmdClang::needed_for(gfx), clang, "{gfx}");
        }
    }

    #[test]
    fn clang_compiles_device_only_with_the_contract_flags_and_every_device_library() {
        let c = AmdClang {
            program: "clang++-22".into(),
            version: "test".into(),
            device_libs: "/bc".into(),
        };
        let defines = vec![("DTYPE".to_string(), "2".to_string())];
        let args: Vec<String> = c
            .args(
                "gfx950",
                Path::new("/t/k.hip"),
                Path::new("/t/k.hsaco"),
                &defines,
            )
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for want in [
            "--offload-arch=gfx950",
            "--cuda-device-only",
            "--no-gpu-bundle-output",
            "-nogpulib",
            "-ffp-contract=off",
            "-fno-fast-math",
            "-O3",
            "-std=c++17",
            "-D__AMDGCN_WAVEFRONT_SIZE=64",
            "-DDTYPE=2",
        ] {
            assert!(args.iter().any(|a| a == want), "no {want} in {args:?}");
        }
        assert!(
            !args.iter().any(|a| a == "--genco"),
            "hipcc's flag, not clang's"
        );
        let linked: Vec<PathBuf> = args
            .windows(2)
            .filter(|w| w[0] == "-Xclang" && w[1].ends_with(".bc"))
            .map(|w| PathBuf::from(&w[1]))
            .collect();
        let want: Vec<PathBuf> = AMD_DEVICE_LIBS
            .iter()
            .map(|l| Path::new("/bc").join(format!("{l}.bc")))
            .collect();
        assert_eq!(linked, want);
        assert!(!linked
            .iter()
            .any(|p| p.to_string_lossy().contains("isa_version")));
        assert_eq!(&args[args.len() - 3..], ["/t/k.hip", "-o", "/t/k.hsaco"]);
    }
}
