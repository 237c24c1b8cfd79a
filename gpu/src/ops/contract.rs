//! Launchers for `kernels/contract.hip`: the contract functions elementwise.

use crate::kernels::{dtype_define, Gpu};
use crate::runtime::bytes::{bits_from_bytes, bytes_of};
use crate::runtime::{Arg, Buffer, LaunchDims, Result};
use attnlab_shared::dtype::DType;

/// The unary contract functions, in `contract_unary`'s `op` numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Exp2c = 0,
    Log2c = 1,
    Tanhc = 2,
    Expc = 3,
    /// `softcap_with(VllmTwoExp, x, x * LOG2E, 1)`: the seed era's vLLM soft-cap.
    SoftcapVllmTwoExp = 4,
    /// `softcap_with(VllmOneExp, ..)`: vLLM 0.34's.
    SoftcapVllmOneExp = 5,
    /// `softcap_with(AiterTwoExp2, ..)`: AITER's.
    SoftcapAiterTwoExp2 = 6,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 7] = [
        UnaryOp::Exp2c,
        UnaryOp::Log2c,
        UnaryOp::Tanhc,
        UnaryOp::Expc,
        UnaryOp::SoftcapVllmTwoExp,
        UnaryOp::SoftcapVllmOneExp,
        UnaryOp::SoftcapAiterTwoExp2,
    ];

    pub fn name(self) -> &'static str {
        [
            "exp2c",
            "log2c",
            "tanhc",
            "expc",
            "softcap_vllm_two_exp",
            "softcap_vllm_one_exp",
            "softcap_aiter_two_exp2",
        ][self as usize]
    }

    /// The sim's definition (numerics.rs).
    pub fn sim(self, x: f32) -> f32 {
        use attnlab_sim::numerics as n;
        match self {
            UnaryOp::Exp2c => n::exp2c(x),
            UnaryOp::Log2c => n::log2c(x),
            UnaryOp::Tanhc => n::tanhc(x),
            UnaryOp::Expc => n::expc(x),
            UnaryOp::SoftcapVllmTwoExp => {
                n::softcap_with(n::SoftcapFormula::VllmTwoExp, x, x * n::LOG2E, 1.0)
            }
            UnaryOp::SoftcapVllmOneExp => {
                n::softcap_with(n::SoftcapFormula::VllmOneExp, x, x * n::LOG2E, 1.0)
            }
            UnaryOp::SoftcapAiterTwoExp2 => {
                n::softcap_with(n::SoftcapFormula::AiterTwoExp2, x, x * n::LOG2E, 1.0)
            }
        }
    }
}

/// `op(x)` for every element on the device; returns the f32 bit patterns.
pub fn unary(gpu: &Gpu, op: UnaryOp, x: &[f32]) -> Result<Vec<u32>> {
    let dev = gpu.dev.as_ref();
    let f = gpu.function(
        "contract",
        &[dtype_define("ROUND_DTYPE", DType::F32)],
        "contract_unary",
    )?;
    let input = Buffer::from_bytes(dev, &bytes_of(x, DType::F32))?;
    let out = Buffer::zeroed(dev, x.len() * 4)?;
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe {
        dev.launch(
            f,
            LaunchDims::linear(x.len(), 256)?,
            &[
                input.arg(),
                out.arg(),
                Arg::I64(x.len() as i64),
                Arg::I32(op as i32),
            ],
        )
    }?;
    Ok(bits_from_bytes(&out.to_bytes()?, DType::F32))
}

/// `DType::round` of every element on the device (store to `dtype`, load back).
pub fn round(gpu: &Gpu, dtype: DType, x: &[f32]) -> Result<Vec<u32>> {
    let dev = gpu.dev.as_ref();
    let f = gpu.function(
        "contract",
        &[dtype_define("ROUND_DTYPE", dtype)],
        "contract_round",
    )?;
    let input = Buffer::from_bytes(dev, &bytes_of(x, DType::F32))?;
    let out = Buffer::zeroed(dev, x.len() * 4)?;
    // SAFETY: the arguments are the kernel's parameter list in order (by-value
    // blocks layout-checked by gpu/tests/param_layout.rs), and every buffer was
    // sized above for the shapes those scalars and this grid index.
    unsafe {
        dev.launch(
            f,
            LaunchDims::linear(x.len(), 256)?,
            &[input.arg(), out.arg(), Arg::I64(x.len() as i64)],
        )
    }?;
    Ok(bits_from_bytes(&out.to_bytes()?, DType::F32))
}
