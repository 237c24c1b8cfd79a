//! The backend registry: every name vLLM's `AttentionBackendEnum` accepts, and
//! what each ROCm backend can do.
//!
//! Names are the enum members of the PR #26980 era (selection.md §2 step 0), in
//! vLLM's declaration order, because that order is what envs.py prints in its
//! "Valid options" list. Capabilities are those of the validate-based selector
//! (vllm-backends.md §4.6, §14.1, §15.1, §16): the `latest` profile checks them
//! one by one; the `pr26980` profile never looks at them (selection.md §5.12),
//! which is exactly why it can "select" configurations that fail later.
//!
//! Backends vLLM only offers on other platforms (FLASH_ATTN, FLASHINFER, ...)
//! have no ROCm capabilities here: [`BackendName::capabilities`] is `None`.

use crate::block_table::common_block_size;
pub use crate::block_table::KernelBlockSize;
use crate::dtype::{DType, KvCacheDtype};
use crate::error::{Error, Result};
use crate::fault::{Fault, FaultSet};
use serde::{Serialize, Serializer};

/// Declares [`BackendName`], its `ALL` list and `name()` from one table, so
/// the member order (which envs.py prints) and the names cannot drift apart.
macro_rules! backend_names {
    ($($member:ident => $name:literal,)+) => {
        /// One member of vLLM's `AttentionBackendEnum`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum BackendName {
            $($member,)+
        }

        impl BackendName {
            /// Every member, in `AttentionBackendEnum` declaration order.
            pub const ALL: [BackendName; [$($name),+].len()] = [$(BackendName::$member),+];

            /// The enum member name, e.g. "ROCM_AITER_FA".
            pub fn name(self) -> &'static str {
                match self {
                    $(BackendName::$member => $name,)+
                }
            }
        }
    };
}

backend_names! {
    FlashAttn => "FLASH_ATTN",
    TritonAttn => "TRITON_ATTN",
    Xformers => "XFORMERS",
    RocmAttn => "ROCM_ATTN",
    RocmAiterMla => "ROCM_AITER_MLA",
    RocmAiterTritonMla => "ROCM_AITER_TRITON_MLA",
    RocmAiterFa => "ROCM_AITER_FA",
    RocmAiterMlaSparse => "ROCM_AITER_MLA_SPARSE",
    TorchSdpa => "TORCH_SDPA",
    Flashinfer => "FLASHINFER",
    FlashinferMla => "FLASHINFER_MLA",
    TritonMla => "TRITON_MLA",
    CutlassMla => "CUTLASS_MLA",
    Flashmla => "FLASHMLA",
    FlashmlaSparse => "FLASHMLA_SPARSE",
    FlashAttnMla => "FLASH_ATTN_MLA",
    Pallas => "PALLAS",
    Ipex => "IPEX",
    NoAttention => "NO_ATTENTION",
    FlexAttention => "FLEX_ATTENTION",
    TreeAttn => "TREE_ATTN",
    RocmAiterUnifiedAttn => "ROCM_AITER_UNIFIED_ATTN",
    CpuAttn => "CPU_ATTN",
    Custom => "CUSTOM",
}

use BackendName::*;

impl BackendName {
    /// Exact, case-sensitive lookup, as `AttentionBackendEnum[name]`.
    pub fn from_name(name: &str) -> Option<BackendName> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// `VLLM_ATTENTION_BACKEND` as envs.py's `env_with_choices` checks it:
    /// case-sensitive, so "rocm_attn", "ROCM_FLASH" and legacy `*_VLLM_V1`
    /// names are rejected with vLLM's exact message (selection.md §5.8).
    pub fn parse_env(value: &str) -> Result<BackendName, String> {
        Self::from_name(value).ok_or_else(|| {
            format!(
                "Invalid value '{value}' for VLLM_ATTENTION_BACKEND. Valid options: {}.",
                Self::python_list()
            )
        })
    }

    /// `--attention-backend` as the AttentionConfig era parses it:
    /// `AttentionBackendEnum[value.upper()]`, with "auto" meaning no choice.
    pub fn parse_config(value: &str) -> Result<Option<BackendName>, String> {
        if value.eq_ignore_ascii_case("auto") {
            return Ok(None);
        }
        Self::from_name(&value.to_uppercase())
            .map(Some)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "Unknown attention backend: '{value}'. Valid options are: {}",
                    names.join(", ")
                )
            })
    }

    /// The member names formatted as Python prints a `list[str]`.
    pub fn python_list() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|b| b.name()).collect();
        python_str_list(&names)
    }

    /// What this backend supports on ROCm, or `None` when vLLM does not
    /// offer it there.
    pub fn capabilities(self) -> Option<&'static Capabilities> {
        Some(match self {
            RocmAttn => &ROCM_ATTN,
            TritonAttn => &TRITON_ATTN,
            RocmAiterUnifiedAttn => &ROCM_AITER_UNIFIED_ATTN,
            RocmAiterFa => &ROCM_AITER_FA,
            FlexAttention => &FLEX_ATTENTION,
            TritonMla => &TRITON_MLA,
            RocmAiterMla | RocmAiterTritonMla => &ROCM_AITER_MLA,
            RocmAiterMlaSparse => &ROCM_AITER_MLA_SPARSE,
            _ => return None,
        })
    }

    /// True for the backends the registry describes as running on ROCm.
    pub fn on_rocm(self) -> bool {
        self.capabilities().is_some()
    }
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackendName {
    type Err = Error;
    /// Exact name; the error lists every member.
    fn from_str(s: &str) -> Result<Self> {
        Self::from_name(s).ok_or_else(|| {
            Error::invalid(
                "attention backend",
                format!("'{s}'"),
                format!("allowed: {}", Self::python_list()),
            )
        })
    }
}

impl Serialize for BackendName {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A Python `repr` of a str: single quotes unless the text contains a single
/// quote and no double quote, backslash escapes for the quote, `\` and controls.
pub fn python_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `str(list_of_str)` in Python: `['A', 'B']`.
pub fn python_str_list(items: &[&str]) -> String {
    let parts: Vec<String> = items.iter().map(|s| python_repr(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// Whether a backend serves dense MHA/GQA, dense MLA or sparse MLA layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AttnKind {
    Mha,
    Mla,
    SparseMla,
}

/// vLLM's `AttentionType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum AttnType {
    Decoder,
    Encoder,
    EncoderOnly,
    EncoderDecoder,
}

impl AttnType {
    pub const ALL: [AttnType; 4] = [
        AttnType::Decoder,
        AttnType::Encoder,
        AttnType::EncoderOnly,
        AttnType::EncoderDecoder,
    ];

    /// The enum value string ("decoder", "encoder_decoder", ...).
    pub fn value(self) -> &'static str {
        match self {
            AttnType::Decoder => "decoder",
            AttnType::Encoder => "encoder",
            AttnType::EncoderOnly => "encoder_only",
            AttnType::EncoderDecoder => "encoder_decoder",
        }
    }

    /// How Python 3.12 formats the str-mixin enum in an f-string
    /// (`AttentionType.DECODER`), as vLLM's messages show it.
    pub fn python_str(self) -> String {
        format!("AttentionType.{}", self.value().to_uppercase())
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.value() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "attention type",
                    format!("'{s}'"),
                    "allowed: decoder, encoder, encoder_only, encoder_decoder",
                )
            })
    }
}

/// Head sizes a backend accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HeadSizes {
    Any,
    AtLeast(usize),
    OneOf(&'static [usize]),
}

impl HeadSizes {
    pub fn accepts(self, head_size: usize) -> bool {
        match self {
            HeadSizes::Any => true,
            HeadSizes::AtLeast(min) => head_size >= min,
            HeadSizes::OneOf(list) => list.contains(&head_size),
        }
    }
}

/// Which GPUs a backend runs on (`supports_compute_capability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ArchRequirement {
    Any,
    /// `get_cdna_version() > 2`: gfx942, gfx950, gfx1250 (not gfx90a).
    Cdna3Plus,
}

/// What one backend supports (the 0.33-era `validate_configuration` inputs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capabilities {
    pub kind: AttnKind,
    pub dtypes: &'static [DType],
    pub kv_cache_dtypes: &'static [KvCacheDtype],
    pub head_sizes: HeadSizes,
    pub kernel_block_sizes: &'static [KernelBlockSize],
    pub sinks: bool,
    pub sliding_window: bool,
    pub non_causal: bool,
    pub attn_types: &'static [AttnType],
    pub kv_connector: bool,
    /// Decode context parallelism: dense MLA accepts it, MHA and sparse do not.
    pub dcp: bool,
    pub arch: ArchRequirement,
}

impl Capabilities {
    /// A manager block size B is supported when `select_common_block_size`
    /// finds a kernel block size for it (some size divides B: vLLM splits
    /// each block into B / k kernel blocks).
    pub fn supports_block_size(&self, block_size: usize) -> bool {
        common_block_size(block_size, self.kernel_block_sizes).is_some()
    }

    /// `get_supported_kernel_block_sizes()` as the backend advertises it
    /// with `faults` injected ([`Fault::AnyBlockSizeClaim`]: a backend whose
    /// kernel takes an exact list of sizes claims every multiple of 16).
    pub fn kernel_block_sizes_with(&self, faults: FaultSet) -> &'static [KernelBlockSize] {
        let exact = self
            .kernel_block_sizes
            .iter()
            .all(|s| matches!(s, KernelBlockSize::Exact(n) if *n > 1));
        if faults.has(Fault::AnyBlockSizeClaim) && exact {
            MULTIPLE_OF_16
        } else {
            self.kernel_block_sizes
        }
    }

    pub fn is_mla(&self) -> bool {
        matches!(self.kind, AttnKind::Mla | AttnKind::SparseMla)
    }

    pub fn is_sparse(&self) -> bool {
        self.kind == AttnKind::SparseMla
    }
}

const HALF: &[DType] = &[DType::F16, DType::Bf16];
const HALF_AND_F32: &[DType] = &[DType::F16, DType::Bf16, DType::F32];
const ALL_KV: &[KvCacheDtype] = &[
    KvCacheDtype::Auto,
    KvCacheDtype::Float16,
    KvCacheDtype::Bfloat16,
    KvCacheDtype::Fp8,
    KvCacheDtype::Fp8E4m3,
    KvCacheDtype::Fp8E5m2,
];
const ALL_ATTN_TYPES: &[AttnType] = &AttnType::ALL;
const MULTIPLE_OF_16: &[KernelBlockSize] = &[KernelBlockSize::MultipleOf(16)];

/// Triton prefix prefill + HIP paged decode; KV as the outer dimension.
pub const ROCM_ATTN: Capabilities = Capabilities {
    kind: AttnKind::Mha,
    dtypes: HALF_AND_F32,
    kv_cache_dtypes: ALL_KV,
    head_sizes: HeadSizes::OneOf(&[32, 64, 80, 96, 128, 160, 192, 224, 256]),
    kernel_block_sizes: MULTIPLE_OF_16,
    sinks: false,
    sliding_window: true,
    non_causal: true,
    attn_types: &[AttnType::Decoder, AttnType::Encoder, AttnType::EncoderOnly],
    kv_connector: false,
    dcp: false,
    arch: ArchRequirement::Any,
};

/// ROCM_ATTN's kernel block sizes in the seed era (PR #26980: `[16, 32,
/// 544]`); 0.33 and the entry above take any multiple of 16.
pub const ROCM_ATTN_SEED_ERA_KERNEL_BLOCK_SIZES: &[KernelBlockSize] = &[
    KernelBlockSize::Exact(16),
    KernelBlockSize::Exact(32),
    KernelBlockSize::Exact(544),
];

/// vLLM's Triton unified attention: the portable fallback.
pub const TRITON_ATTN: Capabilities = Capabilities {
    kind: AttnKind::Mha,
    dtypes: HALF_AND_F32,
    kv_cache_dtypes: ALL_KV,
    head_sizes: HeadSizes::AtLeast(32),
    kernel_block_sizes: MULTIPLE_OF_16,
    sinks: true,
    sliding_window: true,
    non_causal: true,
    attn_types: ALL_ATTN_TYPES,
    kv_connector: true,
    dcp: false,
    arch: ArchRequirement::Any,
};

/// AITER's copy of unified attention (exp2, scale*log2e folded).
pub const ROCM_AITER_UNIFIED_ATTN: Capabilities = Capabilities {
    kind: AttnKind::Mha,
    dtypes: HALF,
    kv_cache_dtypes: ALL_KV,
    head_sizes: HeadSizes::AtLeast(32),
    kernel_block_sizes: MULTIPLE_OF_16,
    sinks: true,
    sliding_window: true,
    non_causal: false,
    attn_types: ALL_ATTN_TYPES,
    kv_connector: true,
    dcp: false,
    arch: ArchRequirement::Any,
};

/// AITER flash attention: decode/extend/prefill routing, shuffled layout.
pub const ROCM_AITER_FA: Capabilities = Capabilities {
    kind: AttnKind::Mha,
    dtypes: HALF,
    kv_cache_dtypes: ALL_KV,
    head_sizes: HeadSizes::OneOf(&[64, 128, 256]),
    kernel_block_sizes: &[KernelBlockSize::Exact(16), KernelBlockSize::Exact(32)],
    sinks: true,
    sliding_window: true,
    non_causal: true,
    attn_types: &[AttnType::Decoder],
    kv_connector: true,
    dcp: false,
    arch: ArchRequirement::Cdna3Plus,
};

/// PyTorch flex_attention: explicit-only on ROCm, no fp8 cache, no sinks.
pub const FLEX_ATTENTION: Capabilities = Capabilities {
    kind: AttnKind::Mha,
    dtypes: HALF_AND_F32,
    kv_cache_dtypes: &[
        KvCacheDtype::Auto,
        KvCacheDtype::Float16,
        KvCacheDtype::Bfloat16,
    ],
    head_sizes: HeadSizes::Any,
    kernel_block_sizes: MULTIPLE_OF_16,
    sinks: false,
    sliding_window: true,
    non_causal: true,
    attn_types: &[AttnType::Decoder, AttnType::EncoderOnly],
    kv_connector: true,
    dcp: false,
    arch: ArchRequirement::Any,
};

/// Triton split-KV MLA decode; rejects block size 1 (MultipleOf(16)).
pub const TRITON_MLA: Capabilities = Capabilities {
    kind: AttnKind::Mla,
    dtypes: HALF,
    kv_cache_dtypes: &[
        KvCacheDtype::Auto,
        KvCacheDtype::Float16,
        KvCacheDtype::Bfloat16,
        KvCacheDtype::Fp8,
        KvCacheDtype::Fp8E4m3,
    ],
    head_sizes: HeadSizes::Any,
    kernel_block_sizes: MULTIPLE_OF_16,
    sinks: false,
    sliding_window: false,
    non_causal: true,
    attn_types: &[AttnType::Decoder],
    kv_connector: true,
    dcp: true,
    arch: ArchRequirement::Any,
};

/// AITER MLA (and ROCM_AITER_TRITON_MLA, identical at decode): page size 1
/// internally, so any block size (MultipleOf(1)).
pub const ROCM_AITER_MLA: Capabilities = Capabilities {
    kind: AttnKind::Mla,
    dtypes: HALF,
    kv_cache_dtypes: ALL_KV,
    head_sizes: HeadSizes::Any,
    kernel_block_sizes: &[KernelBlockSize::MultipleOf(1)],
    sinks: false,
    sliding_window: false,
    non_causal: false,
    attn_types: &[AttnType::Decoder],
    kv_connector: true,
    dcp: true,
    arch: ArchRequirement::Any,
};

/// DeepSeek-V3.2 sparse MLA: kernel block 1, no fp8 cache, no DCP.
pub const ROCM_AITER_MLA_SPARSE: Capabilities = Capabilities {
    kind: AttnKind::SparseMla,
    dtypes: HALF,
    kv_cache_dtypes: &[
        KvCacheDtype::Auto,
        KvCacheDtype::Float16,
        KvCacheDtype::Bfloat16,
    ],
    head_sizes: HeadSizes::Any,
    kernel_block_sizes: &[KernelBlockSize::Exact(1)],
    sinks: false,
    sliding_window: false,
    non_causal: false,
    attn_types: &[AttnType::Decoder],
    kv_connector: true,
    dcp: false,
    arch: ArchRequirement::Any,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_size_lists_are_widened_by_the_any_block_size_fault() {
        let f = FaultSet::only(Fault::AnyBlockSizeClaim);
        assert_eq!(
            ROCM_AITER_FA.kernel_block_sizes_with(FaultSet::NONE),
            ROCM_AITER_FA.kernel_block_sizes
        );
        assert_eq!(ROCM_AITER_FA.kernel_block_sizes_with(f), MULTIPLE_OF_16);
        for caps in [&TRITON_ATTN, &ROCM_AITER_MLA, &ROCM_AITER_MLA_SPARSE] {
            assert_eq!(caps.kernel_block_sizes_with(f), caps.kernel_block_sizes);
        }
    }

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for b in BackendName::ALL {
            assert_eq!(BackendName::from_name(b.name()), Some(b));
        }
        assert_eq!(BackendName::from_name("rocm_attn"), None);
    }

    #[test]
    fn python_repr_switches_quotes_like_python() {
        assert_eq!(python_repr("ab"), "'ab'");
        assert_eq!(python_repr("a'b"), "\"a'b\"");
        assert_eq!(python_repr("a'\"b"), "'a\\'\"b'");
        assert_eq!(python_str_list(&["A", "B"]), "['A', 'B']");
    }

    #[test]
    fn block_size_support_is_divisibility_by_a_kernel_block_size() {
        assert!(ROCM_AITER_FA.supports_block_size(544)); // 544 = 17 * 32
        assert!(!ROCM_AITER_FA.supports_block_size(8));
        assert!(ROCM_AITER_MLA.supports_block_size(1));
        assert!(!TRITON_MLA.supports_block_size(1));
        assert!(!TRITON_ATTN.supports_block_size(0));
    }
}
