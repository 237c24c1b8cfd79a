//! The CLI fuzzed: random command lines over every subcommand's flags,
//! values drawn from extremes (0, -1, 2^31-1, 2^64-1 and past it, 1e308,
//! NaN, empty, garbage, other case) as often as from sensible ones, each
//! run of the built binary under `ulimit -v` (tests/common) and
//! `ATTNLAB_MAX_MEMORY=1G`. The property: no panic, no abort, no signal,
//! an exit status in the documented set (docs/src/cli.md), and with
//! `--json` JSON on stdout. A run past its time limit is cut (a bounded but
//! long run, e.g. a legitimate million-token prefill) and counted apart.
//!
//! `cargo test` runs a fixed number of inputs, `ATTNLAB_FUZZ_CASES` (default
//! 1000), drawn from a fixed seed (`ATTNLAB_FUZZ_SEED`), so every run checks
//! the same command lines however loaded the machine is; they run as two
//! halves side by side (two proptest runners on two threads, each drawing
//! from its own seed), since each input is a process of its own. The
//! ignored `cli_fuzz_deep` runs `ATTNLAB_FUZZ_CASES` (default 20,000) from
//! a random seed unless `ATTNLAB_FUZZ_SEED` is set.

mod common;

use common::{attnlab_env, fixture, Outcome};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a flag's value is drawn.
#[derive(Clone, Copy)]
enum Kind {
    /// A non-negative integer flag.
    Size,
    /// A real number (seconds).
    Real,
    /// One of these names (drawn in any case), or garbage.
    Name(&'static [&'static str]),
    /// Present or not.
    Switch,
}

/// `--flavour` values (run, trace, replay, diff).
const FLAVOURS: &[&str] = &["fma", "tc", "auto"];
/// `--target` values of a matrix-core flavour, and one that is not.
const MATRIX_TARGETS: &[&str] = &["sm_90", "gfx942", "gfx90a", "gfx1100"];

const EXTREMES: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "16",
    "64",
    "255",
    "256",
    "4096",
    "4097",
    "65535",
    "65536",
    "1048576",
    "1048577",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e308",
    "-1e308",
    "1e-308",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "",
    " 8",
    "8 ",
    "abc",
    "１２",
    "1.5",
    "--json",
];

fn garbage() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(EXTREMES).prop_map(str::to_string),
        "[a-zA-Z0-9_.:/-]{0,12}",
        any::<String>().prop_map(|s| s.chars().filter(|c| *c != '\0').take(16).collect()),
    ]
    .boxed()
}

fn size() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(EXTREMES).prop_map(str::to_string),
        4 => (1u64..64).prop_map(|v| v.to_string()),
        1 => any::<u64>().prop_map(|v| v.to_string()),
        1 => any::<i64>().prop_map(|v| v.to_string()),
        1 => (0u32..64).prop_map(|s| (1u128 << s).to_string()),
    ]
    .boxed()
}

fn real() -> BoxedStrategy<String> {
    prop_oneof![
        prop::sample::select(EXTREMES).prop_map(str::to_string),
        any::<f64>().prop_map(|v| v.to_string()),
        (0.001f64..5.0).prop_map(|v| v.to_string()),
    ]
    .boxed()
}

fn name(names: &'static [&'static str]) -> BoxedStrategy<String> {
    let cased = (prop::sample::select(names), 0..3u8).prop_map(|(n, c)| match c {
        0 => n.to_string(),
        1 => n.to_ascii_lowercase(),
        _ => n.to_ascii_uppercase(),
    });
    prop_oneof![4 => cased, 1 => garbage()].boxed()
}

const BACKENDS: &[&str] = &[
    "all",
    "TRITON_ATTN",
    "ROCM_ATTN",
    "ROCM_AITER_FA",
    "ROCM_AITER_UNIFIED_ATTN",
    "FLEX_ATTENTION",
    "TRITON_MLA",
    "ROCM_AITER_MLA",
    "ROCM_AITER_TRITON_MLA",
    "FLASH_ATTN",
    "auto",
];
const MODELS: &[&str] = &["llama-3.1-8b", "qwen3-next", "deepseek-r1"];
const DTYPES: &[&str] = &[
    "auto",
    "float16",
    "bfloat16",
    "float32",
    "half",
    "float",
    "fp8",
    "fp8_e4m3",
    "fp8_e5m2",
    "float8_e4m3fnuz",
    "float8_e4m3fn",
];
const ARCHS: &[&str] = &["gfx90a", "gfx942", "gfx950", "gfx1100", "mi300"];
const LAYOUTS: &[&str] = &["nhd", "rocm-paged", "aiter-shuffled", "mla"];
const WORKLOADS: &[&str] = &["decode", "prefill", "mixed", "long-extend"];
const KERNELS: &[&str] = &[
    "all",
    "contract",
    "reshape_and_cache",
    "merge_attn_states",
    "mla_decode",
    "TRITON_ATTN",
];
const FILES: &[&str] = &[
    "merge_bf16_t7_h2_d128",
    "mla_bf16_h16_b1_s8",
    "ua_dec2d_bf16_h128_g16x2_b16_single",
    "/dev/zero",
    "/dev/null",
    "/nonexistent",
    "fixtures",
    "/proc/self/status",
    "/",
];

/// A subcommand: its fixed words, its flags, and which of them clap
/// requires (given 95% of the time, so most inputs get past clap).
struct Sub {
    words: &'static [&'static str],
    flags: &'static [(&'static str, Kind)],
    required: &'static [&'static str],
}

const SUBS: &[Sub] = &[
    Sub {
        words: &["select"],
        flags: &[
            ("--attention-backend", Kind::Name(BACKENDS)),
            ("--model", Kind::Name(MODELS)),
            ("--mla", Kind::Switch),
            ("--sparse", Kind::Switch),
            ("--block-size", Kind::Size),
            ("--arch", Kind::Name(ARCHS)),
            ("--dtype", Kind::Name(DTYPES)),
            ("--kv-cache-dtype", Kind::Name(DTYPES)),
            ("--head-size", Kind::Size),
            ("--sinks", Kind::Switch),
            (
                "--attn-type",
                Kind::Name(&["decoder", "encoder", "encoder_only"]),
            ),
            ("--rules", Kind::Name(&["pr26980", "latest"])),
        ],
        required: &[],
    },
    Sub {
        words: &["trace"],
        flags: &[
            ("--backend", Kind::Name(BACKENDS)),
            ("--prompt-len", Kind::Size),
            ("--output-len", Kind::Size),
            ("--num-requests", Kind::Size),
            ("--max-num-batched-tokens", Kind::Size),
            ("--max-num-seqs", Kind::Size),
            ("--model", Kind::Name(MODELS)),
            ("--tp", Kind::Size),
            ("--scale-down", Kind::Switch),
            ("--block-size", Kind::Size),
            ("--num-blocks", Kind::Size),
            ("--max-steps", Kind::Size),
            ("--flavour", Kind::Name(FLAVOURS)),
            ("--target", Kind::Name(MATRIX_TARGETS)),
        ],
        required: &["--backend", "--prompt-len"],
    },
    Sub {
        words: &["layout"],
        flags: &[
            ("--layout", Kind::Name(LAYOUTS)),
            ("--block-size", Kind::Size),
            ("--head-size", Kind::Size),
            ("--kv-heads", Kind::Size),
            ("--dtype", Kind::Name(DTYPES)),
            ("--arch", Kind::Name(ARCHS)),
            ("--token", Kind::Size),
            ("--num-blocks", Kind::Size),
            ("--rope-dim", Kind::Size),
        ],
        required: &["--layout", "--block-size", "--head-size"],
    },
    Sub {
        words: &["replay"],
        flags: &[
            ("--backend", Kind::Name(BACKENDS)),
            ("FILE", Kind::Name(FILES)),
            ("--flavour", Kind::Name(FLAVOURS)),
        ],
        required: &["FILE"],
    },
    Sub {
        words: &["run"],
        flags: &[
            ("--backend", Kind::Name(BACKENDS)),
            ("--model", Kind::Name(MODELS)),
            ("--workload", Kind::Name(WORKLOADS)),
            ("--requests", Kind::Size),
            ("--seed", Kind::Size),
            ("--block-size", Kind::Size),
            ("--tp", Kind::Size),
            ("--scale-down", Kind::Switch),
            ("--full-size", Kind::Switch),
        ],
        required: &[],
    },
    // Never a real device: HIP is not built in, and --list needs none.
    Sub {
        words: &["diff", "--device", "hip"],
        flags: &[
            ("--backend", Kind::Name(KERNELS)),
            ("--cases", Kind::Size),
            ("--seed", Kind::Size),
            ("--wave", Kind::Name(&["32", "64"])),
            ("--max-seconds", Kind::Real),
            ("--list", Kind::Switch),
            ("--allow-no-device", Kind::Switch),
            ("--flavour", Kind::Name(FLAVOURS)),
        ],
        required: &[],
    },
    Sub {
        // torch's SDPA (a python3 process, seconds) is not what is fuzzed here.
        words: &["bench", "--cpu", "--torch", "off"],
        flags: &[
            ("--backend", Kind::Name(BACKENDS)),
            ("--model", Kind::Name(MODELS)),
            ("--prefill-tokens", Kind::Size),
            ("--decode-batch", Kind::Size),
            ("--decode-ctx", Kind::Size),
            ("--repeats", Kind::Size),
        ],
        required: &[],
    },
    // A family that does not exist: every target's checks run, no compiler does.
    Sub {
        words: &["gpu", "compile", "--family", "no-such-family"],
        flags: &[
            (
                "--target",
                Kind::Name(&["gfx90a", "gfx942", "sm_90", "sm_69", "host32", "host64"]),
            ),
            ("--resources", Kind::Switch),
            ("--allow-no-device", Kind::Switch),
        ],
        required: &["--target"],
    },
];

fn value(kind: Kind) -> BoxedStrategy<Option<String>> {
    match kind {
        Kind::Size => size().prop_map(Some).boxed(),
        Kind::Real => real().prop_map(Some).boxed(),
        Kind::Name(n) => name(n).prop_map(Some).boxed(),
        Kind::Switch => Just(None).boxed(),
    }
}

/// A command line: a subcommand, a random subset of its flags with values,
/// sometimes `--json`, sometimes an unknown flag.
fn invocation() -> impl Strategy<Value = Vec<String>> {
    (0..SUBS.len())
        .prop_flat_map(|i| {
            let sub = &SUBS[i];
            let flags: Vec<_> = sub
                .flags
                .iter()
                .map(|&(flag, kind)| {
                    let p = if sub.required.contains(&flag) {
                        0.95
                    } else {
                        0.5
                    };
                    proptest::option::weighted(p, value(kind)).prop_map(move |v| (flag, v))
                })
                .collect();
            (flags, any::<bool>(), prop::bool::weighted(0.05), Just(i))
        })
        .prop_map(|(flags, json, unknown, i)| {
            let mut args: Vec<String> = SUBS[i].words.iter().map(|w| w.to_string()).collect();
            for (flag, v) in flags {
                let Some(v) = v else { continue };
                match (flag, v) {
                    ("FILE", Some(f)) if f.contains('_') && !f.contains('/') => {
                        args.push(fixture(&f))
                    }
                    ("FILE", Some(f)) => args.push(f),
                    (_, Some(v)) => args.extend([flag.to_string(), v]),
                    (_, None) => args.push(flag.to_string()),
                }
            }
            if json {
                args.push("--json".into());
            }
            if unknown {
                args.push("--no-such-flag".into());
            }
            args
        })
}

/// Exit statuses a subcommand may return (3: the ones that need a device or compiler).
fn allowed(args: &[String]) -> &'static [i32] {
    match args[0].as_str() {
        "diff" | "gpu" => &[0, 1, 2, 3],
        _ => &[0, 1, 2],
    }
}

#[derive(Default)]
struct Stats {
    inputs: usize,
    by_code: BTreeMap<String, usize>,
    cut: usize,
    /// A few of the cut command lines, to judge whether they are long by right.
    cut_examples: Vec<String>,
    crashes: usize,
}

/// Runs the property for `cases` inputs in total, split over `runners`
/// proptest runners on as many threads: runner `i` draws `cases / runners`
/// inputs (the first `cases % runners` one more) from seed `seed + i`, or
/// from a random seed with `seed` `None`.
fn fuzz(cases: u32, runners: u32, seed: Option<u64>, limit: Duration) {
    let start = Instant::now();
    let stats = Mutex::new(Stats::default());
    let results: Vec<(RngSeed, Result<(), String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..runners)
            .map(|i| {
                let rng_seed = seed.map_or(RngSeed::Random, |s| {
                    RngSeed::Fixed(s.wrapping_add(i.into()))
                });
                let share = cases / runners + u32::from(i < cases % runners);
                let stats = &stats;
                scope.spawn(move || (rng_seed, fuzz_runner(share, rng_seed, limit, stats)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a fuzz runner thread panicked"))
            .collect()
    });
    let s = stats.into_inner().unwrap();
    eprintln!(
        "cli fuzz: {} inputs in {:.0} s ({} runners, seeds {}); exit statuses {:?}; cut by the {} s limit: {}; crashes: {}",
        s.inputs,
        start.elapsed().as_secs_f64(),
        runners,
        results.iter().map(|(r, _)| r.to_string()).collect::<Vec<_>>().join(", "),
        s.by_code,
        limit.as_secs(),
        s.cut,
        s.crashes
    );
    for c in &s.cut_examples {
        eprintln!("  cut: attnlab {c}");
    }
    for (rng_seed, r) in results {
        if let Err(e) = r {
            panic!("seed {rng_seed}: {e}");
        }
    }
    assert_eq!(
        s.inputs, cases as usize,
        "ran {} of {cases} inputs",
        s.inputs
    );
}

/// One runner of [`fuzz`]: `cases` inputs from `rng_seed`, counted in `stats`.
fn fuzz_runner(
    cases: u32,
    rng_seed: RngSeed,
    limit: Duration,
    stats: &Mutex<Stats>,
) -> Result<(), String> {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        rng_seed,
        ..Config::default()
    });
    let result = runner.run(&invocation(), |args| {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let o: Outcome = attnlab_env(&argv, &[("ATTNLAB_MAX_MEMORY", "1G")], limit);
        let mut s = stats.lock().unwrap();
        s.inputs += 1;
        if o.timed_out {
            s.cut += 1;
            if s.cut_examples.len() < 8 {
                s.cut_examples.push(argv.join(" "));
            }
            return Ok(());
        }
        *s.by_code
            .entry(o.code.map_or("signal".into(), |c| c.to_string()))
            .or_default() += 1;
        let fail = |why: &str| TestCaseError::fail(format!("{why}: attnlab {argv:?}\n{o:?}"));
        if o.crashed() {
            s.crashes += 1;
            return Err(fail("crashed"));
        }
        let code = o.code.unwrap_or(-1);
        if !allowed(&args).contains(&code) {
            return Err(fail("exit status outside the documented set"));
        }
        let json = args.iter().any(|a| a == "--json");
        if json && serde_json::from_str::<serde_json::Value>(o.stdout.trim()).is_err() {
            return Err(fail("--json printed something that is not JSON"));
        }
        if code == 2 && json && o.json_error().map(|e| e.0) != Some("usage".into()) {
            return Err(fail(
                "a usage error with --json is not {\"error\": {\"type\": \"usage\"}}",
            ));
        }
        if !json && (code == 2 || code == 3) && o.stderr.trim().is_empty() {
            return Err(fail("an error exit with nothing on stderr"));
        }
        Ok(())
    });
    result.map_err(|e| e.to_string())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(unix)]
#[test]
fn cli_fuzz_never_panics_exits_as_documented_and_stays_in_memory() {
    fuzz(
        env_or("ATTNLAB_FUZZ_CASES", 1000),
        2,
        Some(env_or("ATTNLAB_FUZZ_SEED", 16)),
        Duration::from_secs(5),
    );
}

#[cfg(unix)]
#[test]
#[ignore = "deep run: ATTNLAB_FUZZ_CASES inputs (default 20000), tens of minutes"]
fn cli_fuzz_deep() {
    fuzz(
        env_or("ATTNLAB_FUZZ_CASES", 20_000),
        2,
        std::env::var("ATTNLAB_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok()),
        Duration::from_secs(10),
    );
}
