//! The environment variables the ROCm selector reads, parsed exactly as
//! vLLM's envs.py parses them (selection.md §1):
//! `os.getenv(NAME, default).lower() in ("true", "1")`.
//!
//! So only "1" and "true" (any case) are true; "yes", "on", "2" and the empty
//! string are false, and a flag that defaults to True (`..._MHA`, `..._MLA`)
//! is turned off by *any* other value, including `MHA=` or `MHA=off` (§5.7).

/// The flags, already parsed, plus the raw `VLLM_ATTENTION_BACKEND`
/// (validated later, by the selector, as envs.py does on first access).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFlags {
    /// `VLLM_ROCM_USE_AITER` (default False): the parent switch.
    pub use_aiter: bool,
    /// `VLLM_ROCM_USE_AITER_MHA` (default True): gates only the *auto* AITER FA.
    pub use_aiter_mha: bool,
    /// `VLLM_ROCM_USE_AITER_MLA` (default True): part of `is_mla_enabled()`.
    pub use_aiter_mla: bool,
    /// `VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION` (default False): auto priority 1.
    pub use_aiter_unified_attention: bool,
    /// `VLLM_V1_USE_PREFILL_DECODE_ATTENTION` (default False): auto priority 3.
    pub use_prefill_decode_attention: bool,
    /// `VLLM_ATTENTION_BACKEND`, unvalidated.
    pub attention_backend: Option<String>,
}

impl Default for EnvFlags {
    /// Every variable unset.
    fn default() -> Self {
        EnvFlags::from_lookup(|_| None)
    }
}

pub const VLLM_ATTENTION_BACKEND: &str = "VLLM_ATTENTION_BACKEND";
pub const VLLM_ROCM_USE_AITER: &str = "VLLM_ROCM_USE_AITER";
pub const VLLM_ROCM_USE_AITER_MHA: &str = "VLLM_ROCM_USE_AITER_MHA";
pub const VLLM_ROCM_USE_AITER_MLA: &str = "VLLM_ROCM_USE_AITER_MLA";
pub const VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION: &str = "VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION";
pub const VLLM_V1_USE_PREFILL_DECODE_ATTENTION: &str = "VLLM_V1_USE_PREFILL_DECODE_ATTENTION";

/// Every variable [`EnvFlags`] reads.
pub const ENV_VARS: [&str; 6] = [
    VLLM_ATTENTION_BACKEND,
    VLLM_ROCM_USE_AITER,
    VLLM_ROCM_USE_AITER_MHA,
    VLLM_ROCM_USE_AITER_MLA,
    VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION,
    VLLM_V1_USE_PREFILL_DECODE_ATTENTION,
];

/// `os.getenv(name, default).lower() in ("true", "1")`.
pub fn env_bool(value: Option<&str>, default: bool) -> bool {
    match value {
        None => default,
        Some(v) => matches!(v.to_lowercase().as_str(), "true" | "1"),
    }
}

impl EnvFlags {
    /// Parses from any lookup (a test's map, or the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> EnvFlags {
        let flag = |name: &str, default: bool| env_bool(lookup(name).as_deref(), default);
        EnvFlags {
            use_aiter: flag(VLLM_ROCM_USE_AITER, false),
            use_aiter_mha: flag(VLLM_ROCM_USE_AITER_MHA, true),
            use_aiter_mla: flag(VLLM_ROCM_USE_AITER_MLA, true),
            use_aiter_unified_attention: flag(VLLM_ROCM_USE_AITER_UNIFIED_ATTENTION, false),
            use_prefill_decode_attention: flag(VLLM_V1_USE_PREFILL_DECODE_ATTENTION, false),
            attention_backend: lookup(VLLM_ATTENTION_BACKEND),
        }
    }

    /// Parses from `(name, value)` pairs, as a shell prefix would set them.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> EnvFlags {
        EnvFlags::from_lookup(|name| {
            pairs
                .iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    /// Parses the process environment. A value that is not valid Unicode
    /// reads as vLLM would see a surrogate-escaped string: never "1"/"true".
    pub fn from_process_env() -> EnvFlags {
        EnvFlags::from_lookup(|name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_and_true_in_any_case_are_true() {
        for v in ["1", "true", "TRUE", "True"] {
            assert!(env_bool(Some(v), false), "{v}");
        }
        for v in ["0", "", "yes", "on", "2", "false", " 1"] {
            assert!(!env_bool(Some(v), true), "{v:?}");
        }
        assert!(env_bool(None, true));
        assert!(!env_bool(None, false));
    }

    #[test]
    fn defaults_match_envs_py() {
        let e = EnvFlags::default();
        assert!(!e.use_aiter && e.use_aiter_mha && e.use_aiter_mla);
        assert!(!e.use_aiter_unified_attention && !e.use_prefill_decode_attention);
        assert_eq!(e.attention_backend, None);
    }
}
