//! Every bound on a size that reaches an allocation or a loop, as data, in
//! one place. The CLI checks its flags against these before it allocates
//! anything, the fixture loader checks a file's metadata against them, and
//! every refusal names the value, the limit and how to raise it.
//!
//! Two kinds of limit:
//! - a [`Limit`]: a number derived from what vLLM or the emulated hardware
//!   accepts (its `basis`), overridable with the environment variable
//!   `ATTNLAB_<NAME>` (e.g. `ATTNLAB_MAX_REQUESTS=4096`);
//! - the memory budget [`memory_budget`]: `ATTNLAB_MAX_MEMORY` (bytes, or
//!   with a K/M/G/T suffix), by default half of the smallest of the
//!   machine's memory, the cgroup's limit and the address-space rlimit
//!   (`ulimit -v`); a command whose implied memory exceeds it is refused
//!   ([`check_memory`]) before it allocates.
//!
//! [`validate_env`] is called once at the edge (the CLI's `main`): a
//! malformed override is an error there, so the lookups below can fall back
//! to the default silently.

use crate::error::{Error, Result};

/// A named bound on one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Lower-case, e.g. `max_requests`; the override is `ATTNLAB_MAX_REQUESTS`.
    pub name: &'static str,
    pub default: u64,
    /// What is counted, e.g. "tokens".
    pub unit: &'static str,
    /// Where the number comes from (vLLM, the hardware, a work budget).
    pub basis: &'static str,
}

/// Tokens per KV-cache block (`--block-size`).
pub const MAX_BLOCK_SIZE: Limit = Limit {
    name: "max_block_size",
    default: 4096,
    unit: "tokens",
    basis: "vLLM's --block-size choices stop at 256 and hybrid models derive larger ones (qwen3-next: 544)",
};

/// Blocks in a KV pool (`--num-blocks`, a fixture's cache).
pub const MAX_NUM_BLOCKS: Limit = Limit {
    name: "max_num_blocks",
    default: 1 << 24,
    unit: "blocks",
    basis: "a 192 GB MI300X holds ~1.5M blocks of llama-3.1-8b's 16-token, 128 KiB blocks",
};

/// Tokens of one sequence (prompt + output, a bench's context).
pub const MAX_SEQ_LEN: Limit = Limit {
    name: "max_seq_len",
    default: 1 << 20,
    unit: "tokens",
    basis: "the longest max_model_len of the models vLLM serves on ROCm is ~1M tokens",
};

/// Requests of a workload, sequences of a batch (`run --requests`,
/// `trace --num-requests`, `bench --decode-batch`).
pub const MAX_REQUESTS: Limit = Limit {
    name: "max_requests",
    default: 1024,
    unit: "requests",
    basis: "vLLM runs at most max_num_seqs (256 by default, 1024 at most in its presets) at once; more only queue",
};

/// Tokens a `trace` schedules in all (it prints every step).
pub const MAX_TRACE_TOKENS: Limit = Limit {
    name: "max_trace_tokens",
    default: 1 << 24,
    unit: "tokens",
    basis: "a trace is read by a person; 2^24 tokens is hours of steps at vLLM's default budget",
};

/// Timed runs per measurement (`bench --repeats`).
pub const MAX_REPEATS: Limit = Limit {
    name: "max_repeats",
    default: 1000,
    unit: "runs",
    basis: "the median of 1000 runs is as stable as it gets",
};

/// Random cases per kernel (`diff --cases`).
pub const MAX_CASES: Limit = Limit {
    name: "max_cases",
    default: 1_000_000,
    unit: "cases",
    basis: "the on-device validation runs 1000 per kernel",
};

/// A time limit (`diff --max-seconds`).
pub const MAX_SECONDS: Limit = Limit {
    name: "max_seconds",
    default: 7 * 24 * 3600,
    unit: "seconds",
    basis: "a week; a longer time limit is no limit",
};

/// Channels per head (`layout --head-size`).
pub const MAX_HEAD_SIZE: Limit = Limit {
    name: "max_head_size",
    default: 4096,
    unit: "channels",
    basis: "vLLM's largest head sizes are 576 (MLA) and 256 (MHA)",
};

/// KV heads (`layout --kv-heads`).
pub const MAX_KV_HEADS: Limit = Limit {
    name: "max_kv_heads",
    default: 256,
    unit: "heads",
    basis: "the widest attention layers vLLM serves have 128 heads",
};

/// A fixture's `num_kv_splits` (split-KV decode partials).
pub const MAX_KV_SPLITS: Limit = Limit {
    name: "max_kv_splits",
    default: 1024,
    unit: "splits",
    basis: "vLLM's MLA decode kernels use 4 to 32 splits, at most one per CU (304 on MI300X)",
};

/// How many times a fixture's block table may reference its cache on
/// average: `sum(seq_lens) <= max_kv_reuse * num_blocks * block_size`.
pub const MAX_KV_REUSE: Limit = Limit {
    name: "max_kv_reuse",
    default: 1024,
    unit: "times the cache's tokens",
    basis:
        "a captured case attends to the tokens its cache holds, shared prefixes a few times over",
};

/// Bytes of one fixture file.
pub const MAX_FIXTURE_BYTES: Limit = Limit {
    name: "max_fixture_bytes",
    default: 1 << 30,
    unit: "bytes",
    basis: "one kernel call's tensors; the shipped fixtures are under 1 MiB each",
};

/// Every [`Limit`], for documentation and [`validate_env`].
pub const LIMITS: [Limit; 13] = [
    MAX_BLOCK_SIZE,
    MAX_NUM_BLOCKS,
    MAX_SEQ_LEN,
    MAX_REQUESTS,
    MAX_TRACE_TOKENS,
    MAX_REPEATS,
    MAX_CASES,
    MAX_SECONDS,
    MAX_HEAD_SIZE,
    MAX_KV_HEADS,
    MAX_KV_SPLITS,
    MAX_KV_REUSE,
    MAX_FIXTURE_BYTES,
];

/// The memory budget's environment variable.
pub const MEMORY_ENV: &str = "ATTNLAB_MAX_MEMORY";

/// Fraction of the machine's (or the process's) memory the default budget takes.
pub const MEMORY_FRACTION: f64 = 0.5;

impl Limit {
    /// `ATTNLAB_MAX_REQUESTS` for `max_requests`.
    pub fn env_var(&self) -> String {
        format!("ATTNLAB_{}", self.name.to_ascii_uppercase())
    }

    /// The override if set and valid (see [`validate_env`]), else the default.
    pub fn value(&self) -> u64 {
        std::env::var(self.env_var())
            .ok()
            .and_then(|s| parse_count(&s))
            .unwrap_or(self.default)
    }

    /// `Ok(value)` when `value <= self.value()`, else an error naming `what`
    /// (e.g. `--requests`), the value, the limit and its override.
    pub fn check(&self, what: &str, value: u64) -> Result<u64> {
        let max = self.value();
        if value <= max {
            return Ok(value);
        }
        Err(Error::Limit {
            what: what.to_string(),
            value: value.to_string(),
            limit: format!("{} = {max} {}", self.name, self.unit),
            basis: self.basis.to_string(),
            raise: format!("{}=<n>", self.env_var()),
        })
    }

    /// [`Self::check`] for a real number (e.g. seconds), compared as is.
    pub fn check_f64(&self, what: &str, value: f64) -> Result<f64> {
        if value <= self.value() as f64 {
            return Ok(value);
        }
        self.check(what, u64::MAX).map_err(|e| match e {
            Error::Limit {
                what,
                limit,
                basis,
                raise,
                ..
            } => Error::Limit {
                what,
                value: if value.abs() >= 1e15 {
                    format!("{value:e}")
                } else {
                    value.to_string()
                },
                limit,
                basis,
                raise,
            },
            e => e,
        })?;
        Ok(value)
    }

    /// [`Self::check`] for a `usize`.
    pub fn check_usize(&self, what: &str, value: usize) -> Result<usize> {
        self.check(what, value as u64).map(|v| v as usize)
    }
}

fn parse_count(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok().filter(|&v| v > 0)
}

/// Parses `ATTNLAB_MAX_MEMORY`: bytes, or a number with a K/M/G/T suffix
/// (binary: 1K = 1024), e.g. `512M`, `1.5G`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                'B' => 0,
                _ => return None,
            };
            (&t[..i], (1u64 << shift) as f64)
        }
        _ => (t, 1.0),
    };
    let v = num.trim().parse::<f64>().ok()?;
    let bytes = v * mult;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// The memory budget in bytes and where it comes from.
pub fn memory_budget() -> (u64, String) {
    if let Some(b) = std::env::var(MEMORY_ENV).ok().and_then(|s| parse_bytes(&s)) {
        return (b, MEMORY_ENV.to_string());
    }
    let (avail, from) = available_memory();
    (
        (avail as f64 * MEMORY_FRACTION) as u64,
        format!("half of {from}"),
    )
}

/// The smallest of MemTotal, the cgroup's memory.max and the address-space
/// rlimit, with the name of the one that won (8 GiB when none is readable).
fn available_memory() -> (u64, String) {
    let mut best: (u64, String) = (8 << 30, "an assumed 8 GiB".into());
    let mut consider = |bytes: Option<u64>, what: &str| {
        if let Some(b) = bytes.filter(|&b| b > 0) {
            if best.1.starts_with("an assumed") || b < best.0 {
                best = (b, what.to_string());
            }
        }
    };
    let read = |p: &str| std::fs::read_to_string(p).ok();
    consider(
        read("/proc/meminfo").and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kb.checked_mul(1024)
        }),
        "the machine's memory",
    );
    consider(
        read("/sys/fs/cgroup/memory.max").and_then(|s| s.trim().parse().ok()),
        "the cgroup's memory.max",
    );
    consider(
        read("/proc/self/limits").and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Max address space"))?;
            line.split_whitespace().nth(3)?.parse().ok()
        }),
        "the address-space limit (ulimit -v)",
    );
    best
}

/// Refuses `what` when it implies more than the memory budget; `bytes` is
/// the estimate (saturating arithmetic is fine: an overflow is over budget).
pub fn check_memory(what: &str, bytes: u128) -> Result<()> {
    let (budget, from) = memory_budget();
    if bytes <= budget as u128 {
        return Ok(());
    }
    Err(Error::Limit {
        what: what.to_string(),
        value: format!("needs {}", human_bytes(bytes)),
        limit: format!("max_memory = {} ({from})", human_bytes(budget as u128)),
        basis: "the memory budget".into(),
        raise: format!("{MEMORY_ENV}=<bytes, e.g. 32G>"),
    })
}

/// `1.5 GiB`.
pub fn human_bytes(b: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Checks every `ATTNLAB_MAX_*` variable that is set: a positive integer
/// (the memory budget: bytes with an optional K/M/G/T suffix).
pub fn validate_env() -> Result<()> {
    if let Ok(s) = std::env::var(MEMORY_ENV) {
        if parse_bytes(&s).is_none() {
            return Err(Error::invalid(
                MEMORY_ENV,
                format!("'{s}'"),
                "allowed: a positive number of bytes, optionally with a K, M, G or T suffix (e.g. 8G)",
            ));
        }
    }
    for l in LIMITS {
        if let Ok(s) = std::env::var(l.env_var()) {
            if parse_count(&s).is_none() {
                return Err(Error::invalid(
                    l.env_var(),
                    format!("'{s}'"),
                    format!("allowed: a positive integer (default {})", l.default),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_take_binary_suffixes() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5g"), Some(3 << 29));
        assert_eq!(parse_bytes("2T"), Some(2 << 40));
        for bad in ["", "G", "-1G", "0", "1e400", "abc", "12X", "nan"] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_refusal_names_the_value_the_limit_and_the_override() {
        let e = MAX_REQUESTS
            .check("--requests", u64::MAX)
            .unwrap_err()
            .to_string();
        for part in [
            "--requests",
            "18446744073709551615",
            "max_requests = 1024",
            "ATTNLAB_MAX_REQUESTS=",
        ] {
            assert!(e.contains(part), "{part} not in {e}");
        }
        assert_eq!(MAX_REQUESTS.check("--requests", 1024), Ok(1024));
    }

    #[test]
    fn an_overflowing_estimate_is_over_the_memory_budget() {
        let e = check_memory("a cache", u128::MAX).unwrap_err().to_string();
        assert!(e.contains("max_memory") && e.contains(MEMORY_ENV), "{e}");
        assert!(check_memory("a byte", 1).is_ok());
    }

    #[test]
    fn limit_names_are_unique_and_lower_case() {
        let mut names: Vec<&str> = LIMITS.iter().map(|l| l.name).collect();
        assert!(names
            .iter()
            .all(|n| n.starts_with("max_") && *n == n.to_ascii_lowercase()));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), LIMITS.len());
    }
}
