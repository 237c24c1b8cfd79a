//! Launcher for `kernels/mma_probe.hip`: `n` independent executions of one
//! matrix instruction, one tile each (the instruction-level diff).

use crate::kernels::Gpu;
use crate::runtime::{Arg, Buffer, LaunchDims, Result, Target};
use attnlab_shared::dtype::DType;
use attnlab_shared::error::Error as SharedError;
use attnlab_sim::numerics::mma::{InFormat, MatrixTarget, Model, Shape};

/// One instruction form: its shape and input format, and the target whose
/// matrix cores run it (on the host device: whose model the host runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instr {
    pub target: MatrixTarget,
    pub shape: Shape,
    pub format: InFormat,
}

impl Instr {
    /// The instruction's assembly name and the target, e.g.
    /// `mma.m16n8k16.bf16@sm_90`, `mfma.32x32x8.f16@gfx942`.
    pub fn name(&self) -> String {
        let op = match self.shape {
            Shape::M16N8K16 => "mma",
            Shape::M64N8K16 => "wgmma",
            _ => "mfma",
        };
        format!(
            "{op}.{}.{}@{}",
            self.shape.name(),
            self.format.name(),
            self.target.name()
        )
    }

    /// The published model of this instruction on its target.
    pub fn model(&self) -> Model {
        self.target.model(self.format)
    }

    fn entry(&self) -> &'static str {
        match self.shape {
            Shape::M16N8K16 => "mma_m16n8k16_probe",
            Shape::M64N8K16 => "wgmma_m64n8k16_probe",
            Shape::M16N16K16 => "mfma_16x16x16_probe",
            Shape::M32N32K8 => "mfma_32x32x8_probe",
            Shape::M16N16K32 => "mfma_16x16x32_probe",
            Shape::M32N32K16 => "mfma_32x32x16_probe",
        }
    }

    /// Every instruction form a device of `target` executes, with the
    /// target whose model describes it: sm_90 runs `mma.sync`, CDNA2/3 the
    /// MFMA forms (CDNA3 also fp8/bf8); the host device with 32-lane waves
    /// runs Hopper's model and with 64-lane waves both CDNA models.
    pub fn for_device(target: &Target) -> Result<Vec<Instr>> {
        let targets: Vec<MatrixTarget> = match target {
            Target::Cuda { sm: 90 } => vec![MatrixTarget::Sm90],
            Target::Cuda { sm } => {
                return Err(SharedError::unsupported(
                    format!("the matrix-instruction diff on sm_{sm}"),
                    "only Hopper (sm_90) has a model among the NVIDIA targets",
                )
                .into())
            }
            Target::Amd { gfx } => vec![MatrixTarget::parse(gfx)?],
            Target::Host { wave: 32 } => vec![MatrixTarget::Sm90],
            Target::Host { .. } => vec![MatrixTarget::Gfx942, MatrixTarget::Gfx90a],
        };
        Ok(targets
            .into_iter()
            .flat_map(|t| {
                InFormat::ALL.into_iter().flat_map(move |format| {
                    t.shapes(format).iter().map(move |&shape| Instr {
                        target: t,
                        shape,
                        format,
                    })
                })
            })
            .collect())
    }
}

/// `kernels/portable.h`'s MMA_* code of a format (the `MMA_FORMAT` define).
pub fn format_code(f: InFormat) -> i32 {
    match f {
        InFormat::Bf16 => 0,
        InFormat::F16 => 1,
        InFormat::Fp8E4m3Fnuz => 2,
        InFormat::Bf8E5m2Fnuz => 3,
    }
}

fn host_target_code(t: MatrixTarget) -> i32 {
    match t {
        MatrixTarget::Sm90 => 0,
        MatrixTarget::Gfx90a => 1,
        MatrixTarget::Gfx942 => 2,
    }
}

fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Runs `n` instructions on the device: `a` is n x M x K and `b` n x K x N
/// (row-major storage bits of the format), `c` n x M x N f32. Returns D's
/// f32 bit patterns, n x M x N.
pub fn run(gpu: &Gpu, instr: Instr, a: &[u16], b: &[u16], c: &[f32]) -> Result<Vec<u32>> {
    let (m, n_, k) = instr.shape.mnk();
    let n = c.len() / (m * n_);
    if a.len() != n * m * k || b.len() != n * k * n_ || c.len() != n * m * n_ {
        return Err(SharedError::invalid(
            "matrix-instruction operands",
            format!("A {} B {} C {} elements", a.len(), b.len(), c.len()),
            format!("n x {m}x{k}, n x {k}x{n_} and n x {m}x{n_} for one n"),
        )
        .into());
    }
    let dev = gpu.dev.as_ref();
    let wave = dev.info().target.wave_size() as usize;
    // wgmma's warpgroup is four 32-lane warps; the other forms one wave
    let fits = match instr.shape {
        Shape::M64N8K16 => wave == 32,
        shape => wave == shape.lanes(),
    };
    if !fits {
        return Err(SharedError::unsupported(
            instr.name(),
            format!(
                "it runs on {} lanes of 32-lane warps (wgmma) or one wave of that many lanes; this device has {wave}-lane waves",
                instr.shape.lanes()
            ),
        )
        .into());
    }
    let format = (
        "MMA_FORMAT".to_string(),
        format_code(instr.format).to_string(),
    );
    let f = match instr.shape {
        Shape::M64N8K16 => gpu.function(
            "wgmma_probe",
            &[
                format,
                (crate::kernels::ARCH_SPECIFIC.to_string(), "1".to_string()),
            ],
            instr.entry(),
        )?,
        _ => gpu.function("mma_probe", &[format], instr.entry())?,
    };
    let da = Buffer::from_bytes(dev, &u16_bytes(a))?;
    let db = Buffer::from_bytes(dev, &u16_bytes(b))?;
    let dc = Buffer::from_bytes(dev, &crate::runtime::bytes::bytes_of(c, DType::F32))?;
    let dd = Buffer::zeroed(dev, c.len() * 4)?;
    // one wave per tile (one 128-thread block per tile for wgmma), at most
    // 2^16 blocks; waves stride on
    let dims = match instr.shape {
        Shape::M64N8K16 => LaunchDims::linear(n.min(65536) * 128, 128)?,
        _ => LaunchDims::linear((n * wave).min(256 * 65536), 256)?,
    };
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe {
        dev.launch(
            f,
            dims,
            &[
                da.arg(),
                db.arg(),
                dc.arg(),
                dd.arg(),
                Arg::I64(n as i64),
                Arg::I32(host_target_code(instr.target)),
            ],
        )
    }?;
    Ok(crate::runtime::bytes::bits_from_bytes(
        &dd.to_bytes()?,
        DType::F32,
    ))
}
