//! The scheduler as a specification: vLLM's continuous batching with chunked
//! prefill, the blog's 80000-token example, and invariants under proptest.

use attnlab_shared::block_table::BlockPool;
use attnlab_shared::metadata::RequestKind;
use attnlab_shared::scheduler::{
    split_decodes_prefills_and_extends, Request, ScheduledStep, Scheduler, SchedulerConfig,
};
use attnlab_sim::backends::context_chunks::{
    context_chunks, extend_context_chunks, step_context_chunks, CP_TOKENS_PER_ITER_ROCM,
};
use proptest::prelude::*;
use std::collections::HashMap;

fn config(budget: usize, max_num_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs,
        ..SchedulerConfig::default()
    }
}

fn run(cfg: SchedulerConfig, requests: &[Request]) -> Vec<ScheduledStep> {
    Scheduler::new(cfg, requests).unwrap().run(100_000).unwrap()
}

fn shape(step: &ScheduledStep) -> Vec<(RequestKind, usize, usize, usize)> {
    step.requests
        .iter()
        .map(|r| (r.kind, r.query_len, r.context_len, r.seq_len))
        .collect()
}

#[test]
fn blog_example_80000_tokens_under_a_32768_budget_takes_three_steps() {
    let steps = run(
        config(32768, 256),
        &[Request {
            prompt_len: 80000,
            output_len: 1,
        }],
    );
    let got: Vec<_> = steps.iter().map(shape).collect();
    assert_eq!(
        got,
        vec![
            vec![(RequestKind::Prefill, 32768, 0, 32768)],
            vec![(RequestKind::Extend, 32768, 32768, 65536)],
            vec![(RequestKind::Extend, 14464, 65536, 80000)],
        ]
    );
    assert_eq!(steps[2].finished, vec![0]);
}

#[test]
fn blog_example_extend_steps_fetch_context_in_32k_chunks() {
    let steps = run(
        config(32768, 256),
        &[Request {
            prompt_len: 80000,
            output_len: 1,
        }],
    );
    let chunks: Vec<Vec<usize>> = steps
        .iter()
        .map(|s| {
            step_context_chunks(s, CP_TOKENS_PER_ITER_ROCM)
                .unwrap()
                .chunks
                .iter()
                .map(|c| c.total_tokens())
                .collect()
        })
        .collect();
    assert_eq!(chunks, vec![vec![], vec![32768], vec![32768, 32768]]);
}

#[test]
fn prompt_finishing_step_samples_the_first_output_token() {
    // prompt 10, output 3: one prefill (samples token 1), then two decodes.
    let steps = run(
        SchedulerConfig::default(),
        &[Request {
            prompt_len: 10,
            output_len: 3,
        }],
    );
    let got: Vec<_> = steps.iter().map(shape).collect();
    assert_eq!(
        got,
        vec![
            vec![(RequestKind::Prefill, 10, 0, 10)],
            vec![(RequestKind::Decode, 1, 10, 11)],
            vec![(RequestKind::Decode, 1, 11, 12)],
        ]
    );
}

#[test]
fn running_requests_go_first_and_batch_is_reordered_decode_extend_prefill() {
    // Budget 9: step 0 prefills r0 (4) and starts r1 (5 of 10);
    // step 1: r0 decodes, r1 continues (extend, 5), r2 takes the rest (prefill, 3).
    let reqs = [
        Request {
            prompt_len: 4,
            output_len: 2,
        },
        Request {
            prompt_len: 10,
            output_len: 1,
        },
        Request {
            prompt_len: 3,
            output_len: 1,
        },
    ];
    let steps = run(config(9, 256), &reqs);
    let ids: Vec<Vec<(usize, RequestKind, usize)>> = steps
        .iter()
        .map(|s| {
            s.requests
                .iter()
                .map(|r| (r.id, r.kind, r.query_len))
                .collect()
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            vec![(0, RequestKind::Prefill, 4), (1, RequestKind::Prefill, 5)],
            vec![
                (0, RequestKind::Decode, 1),
                (1, RequestKind::Extend, 5),
                (2, RequestKind::Prefill, 3)
            ],
        ]
    );
}

#[test]
fn one_token_first_chunk_after_extends_counts_as_extend_like_aiter_split() {
    // Budget 8 leaves r2 a single token in step 1: no context, query 1. vLLM's
    // reorder puts it last; split_decodes_prefills_and_extends then counts it
    // as an extend (only rows with query_len > 1 start the prefill class).
    let reqs = [
        Request {
            prompt_len: 4,
            output_len: 2,
        },
        Request {
            prompt_len: 10,
            output_len: 1,
        },
        Request {
            prompt_len: 3,
            output_len: 1,
        },
    ];
    let steps = run(config(8, 256), &reqs);
    assert_eq!(
        shape(&steps[1]),
        vec![
            (RequestKind::Decode, 1, 4, 5),
            (RequestKind::Extend, 6, 4, 10),
            (RequestKind::Extend, 1, 0, 1)
        ]
    );
    assert_eq!(shape(&steps[2]), vec![(RequestKind::Extend, 2, 1, 3)]);
}

#[test]
fn max_num_seqs_keeps_later_requests_waiting() {
    let reqs = vec![
        Request {
            prompt_len: 4,
            output_len: 3
        };
        3
    ];
    let steps = run(config(1000, 2), &reqs);
    assert_eq!(
        steps[0].requests.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![0, 1]
    );
    let first_of_2 = steps
        .iter()
        .position(|s| s.requests.iter().any(|r| r.id == 2))
        .unwrap();
    assert_eq!(
        first_of_2, 3,
        "request 2 starts once 0 and 1 finished after their third token"
    );
}

#[test]
fn small_pool_preempts_the_last_running_request_and_recomputes_it() {
    // 2 blocks of 4: both requests fit as prompts; request 1 loses its block when 0 grows.
    let cfg = SchedulerConfig {
        block_size: 4,
        num_blocks: Some(2),
        ..SchedulerConfig::default()
    };
    let reqs = [
        Request {
            prompt_len: 4,
            output_len: 3,
        },
        Request {
            prompt_len: 3,
            output_len: 2,
        },
    ];
    let mut s = Scheduler::new(cfg, &reqs).unwrap();
    let steps = s.run(100).unwrap();
    assert_eq!(steps[1].preempted, vec![1]);
    assert_eq!(shape(&steps[1]), vec![(RequestKind::Decode, 1, 4, 5)]);
    let recompute = steps
        .iter()
        .find(|st| {
            st.requests
                .iter()
                .any(|r| r.id == 1 && r.context_len == 0 && st.index > 0)
        })
        .unwrap();
    assert_eq!(
        recompute
            .requests
            .iter()
            .find(|r| r.id == 1)
            .unwrap()
            .query_len,
        4,
        "prompt + the sampled token"
    );
    assert_eq!(s.pool().num_free(), 2);
}

#[test]
fn request_longer_than_the_pool_is_rejected_naming_it() {
    let cfg = SchedulerConfig {
        block_size: 16,
        num_blocks: Some(2),
        ..SchedulerConfig::default()
    };
    let e = Scheduler::new(
        cfg,
        &[Request {
            prompt_len: 40,
            output_len: 1,
        }],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("request 0 length 40") && e.contains("needs 3 blocks of 16 but the pool has 2"),
        "{e}"
    );
}

#[test]
fn zero_lengths_and_sizes_are_rejected() {
    let e = Scheduler::new(
        SchedulerConfig::default(),
        &[Request {
            prompt_len: 0,
            output_len: 1,
        }],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("request 0 lengths") && e.contains(">= 1"), "{e}");
    let e = Scheduler::new(config(0, 1), &[]).err().unwrap().to_string();
    assert!(e.contains("max_num_batched_tokens 0"), "{e}");
}

#[test]
fn metadata_slots_point_into_the_requests_blocks() {
    let steps = run(
        config(20, 256),
        &[
            Request {
                prompt_len: 30,
                output_len: 2,
            },
            Request {
                prompt_len: 5,
                output_len: 1,
            },
        ],
    );
    for step in &steps {
        let meta = step.metadata(16).unwrap();
        let mut t = 0;
        for (i, r) in step.requests.iter().enumerate() {
            assert_eq!(
                (meta.query_len(i), meta.seq_len(i)),
                (r.query_len, r.seq_len)
            );
            for pos in r.context_len..r.seq_len {
                let (block, row) = meta.kv_location(i, pos);
                assert_eq!(meta.slot_mapping()[t], (block * 16 + row) as i64);
                t += 1;
            }
        }
    }
}

#[test]
fn metadata_in_kernel_blocks_of_32_keeps_slots_of_544_blocks() {
    let cfg = SchedulerConfig {
        block_size: 544,
        ..SchedulerConfig::default()
    };
    let steps = run(
        cfg,
        &[
            Request {
                prompt_len: 600,
                output_len: 2,
            },
            Request {
                prompt_len: 1200,
                output_len: 1,
            },
        ],
    );
    let manager = steps[0].metadata(544).unwrap();
    let kernel = steps[0].metadata(32).unwrap();
    assert_eq!(manager.slot_mapping(), kernel.slot_mapping());
    assert_eq!(kernel.num_blocks(), manager.num_blocks() * 17);
    assert_eq!(
        kernel.block_table().row(0)[..2],
        [
            manager.block_table().row(0)[0] * 17,
            manager.block_table().row(0)[0] * 17 + 1
        ]
    );
    let e = steps[0].metadata(48).unwrap_err().to_string();
    assert!(
        e.contains("kernel block size 48") && e.contains("544"),
        "{e}"
    );
}

#[test]
fn metadata_split_matches_the_scheduler_classes() {
    let reqs = [
        Request {
            prompt_len: 4,
            output_len: 2,
        },
        Request {
            prompt_len: 10,
            output_len: 1,
        },
        Request {
            prompt_len: 3,
            output_len: 1,
        },
    ];
    for budget in [8, 9] {
        let steps = run(config(budget, 256), &reqs);
        let meta = steps[1].metadata(16).unwrap();
        assert_eq!(
            split_decodes_prefills_and_extends(&meta, 1),
            steps[1].split(1)
        );
        assert_eq!(
            extend_context_chunks(&meta, 1, 32768).unwrap(),
            step_context_chunks(&steps[1], 32768).unwrap()
        );
    }
    let s = run(config(9, 256), &reqs)[1].split(1);
    assert_eq!(
        (
            s.num_decodes,
            s.num_extends,
            s.num_prefills,
            s.num_extend_tokens,
            s.num_prefill_tokens
        ),
        (1, 1, 1, 5, 3)
    );
}

#[test]
fn context_chunks_split_the_budget_evenly_across_extends() {
    // Two extends share 10 tokens per iteration: 5 each, not block aligned.
    let c = context_chunks(&[12, 3], 10).unwrap();
    assert_eq!(c.max_context_chunk, 5);
    let lens: Vec<Vec<i32>> = c
        .chunks
        .iter()
        .map(|k| k.cu_seqlens.windows(2).map(|w| w[1] - w[0]).collect())
        .collect();
    assert_eq!(lens, vec![vec![5, 3], vec![5, 0], vec![2, 0]]);
    assert_eq!(c.chunks[0].cu_seqlens, vec![0, 5, 8]);
    assert_eq!(c.chunks[0].token_to_batch, vec![0, 0, 0, 0, 0, 1, 1, 1]);
    assert_eq!(c.chunks[2].seq_starts, vec![10, 10]);
    assert_eq!(c.chunks[2].max_seqlen, 2);
}

#[test]
fn pool_frees_blocks_it_does_not_own_with_an_error() {
    let mut pool = BlockPool::new(2).unwrap();
    assert!(pool.free(0).unwrap_err().to_string().contains("block id 0"));
}

fn workload() -> impl Strategy<Value = (Vec<Request>, usize, usize, usize)> {
    (
        prop::collection::vec(
            (1usize..300, 1usize..12).prop_map(|(p, o)| Request {
                prompt_len: p,
                output_len: o,
            }),
            1..8,
        ),
        1usize..200,
        1usize..5,
        prop::sample::select(vec![1usize, 4, 16]),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn scheduler_invariants_hold((reqs, budget, max_seqs, block_size) in workload(), tight_pool in any::<bool>()) {
        // A tight pool (just the longest request) forces preemption paths.
        let longest = reqs.iter().map(|r| (r.prompt_len + r.output_len - 1).div_ceil(block_size)).max().unwrap();
        let cfg = SchedulerConfig {
            block_size,
            num_blocks: tight_pool.then_some(longest),
            max_num_batched_tokens: budget,
            max_num_seqs: max_seqs,
            decode_threshold: 1,
        };
        let mut sched = Scheduler::new(cfg, &reqs).unwrap();
        let steps = sched.run(100_000).unwrap();
        let mut computed: HashMap<usize, usize> = HashMap::new();
        let mut finished = Vec::new();
        for step in &steps {
            prop_assert!(step.num_tokens() <= budget, "budget exceeded in step {}", step.index);
            prop_assert!(step.requests.len() <= max_seqs);
            // decode : extend : prefill
            let ranks: Vec<u8> = step.requests.iter().map(|r| r.kind as u8).collect();
            prop_assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "not reordered: {:?}", ranks);
            for id in &step.preempted {
                computed.insert(*id, 0);
            }
            for r in &step.requests {
                prop_assert!(r.query_len >= 1);
                // Chunks continue exactly where the previous one stopped.
                prop_assert_eq!(r.context_len, *computed.get(&r.id).unwrap_or(&0));
                prop_assert_eq!(r.seq_len, r.context_len + r.query_len);
                prop_assert!(r.blocks.len() * block_size >= r.seq_len);
                computed.insert(r.id, r.seq_len);
            }
            step.metadata(block_size).unwrap();
            finished.extend(step.finished.iter().copied());
        }
        finished.sort();
        prop_assert_eq!(finished, (0..reqs.len()).collect::<Vec<_>>());
        for (id, r) in reqs.iter().enumerate() {
            // every prompt token (and every fed-back output token) computed exactly once, net of preemption
            prop_assert_eq!(computed[&id], r.prompt_len + r.output_len - 1);
        }
        prop_assert_eq!(sched.pool().num_free(), sched.pool().num_blocks(), "blocks leaked");
    }

    #[test]
    fn without_preemption_every_prompt_token_is_scheduled_exactly_once((reqs, budget, max_seqs, block_size) in workload()) {
        let cfg = SchedulerConfig { block_size, num_blocks: None, max_num_batched_tokens: budget, max_num_seqs: max_seqs, decode_threshold: 1 };
        let steps = Scheduler::new(cfg, &reqs).unwrap().run(100_000).unwrap();
        let mut seen: HashMap<usize, Vec<usize>> = HashMap::new();
        for step in &steps {
            prop_assert!(step.preempted.is_empty());
            for r in &step.requests {
                seen.entry(r.id).or_default().extend(r.context_len..r.seq_len);
            }
        }
        for (id, r) in reqs.iter().enumerate() {
            prop_assert_eq!(&seen[&id], &(0..r.prompt_len + r.output_len - 1).collect::<Vec<_>>());
        }
    }
}

mod trace_cli {
    use serde_json::Value;
    use std::process::Command;

    fn trace(args: &[&str]) -> (i32, Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_attnlab"))
            .arg("trace")
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    }

    fn blog(backend: &str) -> Value {
        let (code, v) = trace(&[
            "--backend",
            backend,
            "--prompt-len",
            "80000",
            "--output-len",
            "1",
            "--max-num-batched-tokens",
            "32768",
        ]);
        assert_eq!(code, 0, "{v}");
        v
    }

    fn column(v: &Value, field: &str) -> Vec<Value> {
        v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["requests"][0][field].clone())
            .collect()
    }

    #[test]
    fn triton_attn_trace_reproduces_the_blog_example() {
        let v = blog("TRITON_ATTN");
        assert_eq!(
            column(&v, "query_len"),
            [32768, 32768, 14464].map(Value::from)
        );
        assert_eq!(
            column(&v, "seq_len"),
            [32768, 65536, 80000].map(Value::from)
        );
        for step in v["steps"].as_array().unwrap() {
            assert!(
                !step["kernels"].as_array().unwrap().is_empty(),
                "every step launches kernels: {step}"
            );
        }
    }

    #[test]
    fn aiter_fa_trace_is_prefill_extend_extend_with_merged_context_chunks() {
        let v = blog("ROCM_AITER_FA");
        assert_eq!(
            column(&v, "kind"),
            ["prefill", "extend", "extend"].map(Value::from)
        );
        let merges: Vec<usize> = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                s["kernels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|k| k["name"] == "merge_attn_states")
                    .count()
            })
            .collect();
        assert_eq!(merges[0], 0, "a pure prefill merges nothing");
        assert!(
            merges[2] > merges[1] && merges[1] > 0,
            "65536 context tokens take more 32k chunks than 32768: {merges:?}"
        );
    }

    #[test]
    fn unknown_backend_is_a_json_error_listing_the_emulated_ones() {
        let (code, v) = trace(&["--backend", "NOPE", "--prompt-len", "8"]);
        assert_eq!(code, 1);
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("'NOPE'") && msg.contains("TRITON_ATTN"),
            "{msg}"
        );
    }

    fn kernel_names(step: &Value) -> Vec<&str> {
        step["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap())
            .collect()
    }

    fn kernel<'a>(step: &'a Value, name: &str) -> &'a Value {
        step["kernels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {step}"))
    }

    #[test]
    fn aiter_mla_trace_is_a_prefill_then_absorbed_decodes() {
        let (code, v) = trace(&[
            "--model",
            "deepseek-r1",
            "--backend",
            "ROCM_AITER_MLA",
            "--block-size",
            "1",
            "--prompt-len",
            "64",
            "--output-len",
            "4",
        ]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(
            column(&v, "kind"),
            ["prefill", "decode", "decode", "decode"].map(Value::from)
        );
        assert_eq!(column(&v, "seq_len"), [64, 65, 66, 67].map(Value::from));
        let steps = v["steps"].as_array().unwrap();
        let prefill = kernel_names(&steps[0]);
        assert_eq!(
            prefill,
            [
                "concat_and_cache_mla",
                "kv_b_proj",
                "flash_attn_varlen_func(causal)"
            ],
            "non-absorbed, no context"
        );
        for step in &steps[1..] {
            let names = kernel_names(step);
            assert_eq!(names[0], "concat_and_cache_mla");
            assert!(
                names.contains(&"mla_decode_stage1_asm_fwd"),
                "absorbed decode through AITER's kernel: {names:?}"
            );
            assert!(
                !names.iter().any(|n| n.starts_with("flash_attn")),
                "decodes skip the prefill path: {names:?}"
            );
            let seq_len = step["requests"][0]["seq_len"].as_u64().unwrap();
            assert_eq!(
                kernel(step, "mla_decode_stage1_asm_fwd")["shapes"]["kv_indices"][0],
                seq_len,
                "one page per token at block size 1"
            );
        }
    }

    #[test]
    fn mla_tp_gives_each_rank_an_equal_head_slice_and_chunks_the_context() {
        let (code, v) = trace(&[
            "--model",
            "deepseek-r1",
            "--backend",
            "TRITON_MLA",
            "--tp",
            "8",
            "--scale-down",
            "--prompt-len",
            "40",
            "--output-len",
            "2",
            "--max-num-batched-tokens",
            "32",
        ]);
        assert_eq!(code, 0, "{v}");
        let (heads, tp) = (v["num_heads"].as_u64().unwrap(), v["tp"].as_u64().unwrap());
        assert_eq!((tp, v["max_model_len"].as_u64().unwrap()), (8, 4096));
        let ranks: Vec<(u64, u64)> = v["ranks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["heads"][0].as_u64().unwrap(),
                    r["heads"][1].as_u64().unwrap(),
                )
            })
            .collect();
        let per_rank = heads / tp;
        assert_eq!(
            ranks,
            (0..tp)
                .map(|r| (r * per_rank, (r + 1) * per_rank))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            column(&v, "kind"),
            ["prefill", "extend", "decode"].map(Value::from)
        );
        let steps = v["steps"].as_array().unwrap();
        assert_eq!(
            kernel(&steps[0], "flash_attn_varlen_func(causal)")["shapes"]["q"],
            serde_json::json!([32, per_rank, 192])
        );
        let extend = kernel_names(&steps[1]);
        for k in [
            "gather_and_maybe_dequant_cache",
            "flash_attn_varlen_func",
            "merge_attn_states",
        ] {
            assert!(
                extend.contains(&k),
                "the extend attends to its 32-token context in a chunk: {extend:?}"
            );
        }
        assert_eq!(
            kernel(&steps[2], "bmm(q_nope, W_UK_T)")["shapes"]["q_nope"][0],
            per_rank
        );
        assert!(kernel_names(&steps[2]).contains(&"_fwd_grouped_kernel_stage1"));
    }

    #[test]
    fn mismatched_backends_and_bad_tp_are_json_errors_naming_the_allowed_values() {
        let cases: [(&[&str], &[&str]); 6] = [
            (
                &["--model", "deepseek-r1", "--backend", "TRITON_ATTN"],
                &["MHA backend", "TRITON_MLA", "ROCM_AITER_MLA"],
            ),
            (
                &["--backend", "ROCM_AITER_MLA"],
                &["MLA backend", "TRITON_ATTN"],
            ),
            (
                &[
                    "--model",
                    "deepseek-r1",
                    "--backend",
                    "TRITON_MLA",
                    "--block-size",
                    "1",
                ],
                &["does not support block size 1"],
            ),
            (
                &[
                    "--model",
                    "deepseek-r1",
                    "--backend",
                    "TRITON_MLA",
                    "--tp",
                    "3",
                ],
                &["--tp 3", "1, 2, 4, 8, 16, 32, 64, 128"],
            ),
            (
                &[
                    "--model",
                    "deepseek-r1",
                    "--backend",
                    "ROCM_AITER_MLA",
                    "--tp",
                    "16",
                ],
                &["16 or 128"],
            ),
            (
                &["--backend", "TRITON_ATTN", "--tp", "2"],
                &["--tp 2", "deepseek-r1"],
            ),
        ];
        for (args, wants) in cases {
            let out = Command::new(env!("CARGO_BIN_EXE_attnlab"))
                .args(["trace", "--prompt-len", "8", "--json"])
                .args(args)
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            assert!(
                !String::from_utf8_lossy(&out.stderr).contains("panicked"),
                "{args:?}"
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let msg = v["error"]["message"].as_str().unwrap();
            for w in wants {
                assert!(msg.contains(w), "{args:?}: {msg}");
            }
        }
    }
}
