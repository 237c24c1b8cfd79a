//! KV layouts as a specification: every offset map is a bijection onto its
//! tensor, NHD -> layout -> NHD round-trips bit for bit, and sizes a layout's
//! formulas cannot express are rejected with the rule that failed.

use attnlab_shared::dtype::{DType, ALL_DTYPES};
use attnlab_shared::layout::mla::MlaLayout;
use attnlab_shared::layout::{KvIndex, KvLayout, KvSide, LayoutKind};
use proptest::prelude::*;

const BLOCK_SIZES: [usize; 5] = [1, 16, 32, 544, 1056];

fn layout_strategy() -> impl Strategy<Value = KvLayout> {
    (
        prop::sample::select(LayoutKind::ALL.to_vec()),
        1usize..4,
        prop::sample::select(vec![1usize, 2, 4, 8, 16, 32, 48]),
        1usize..4,
        prop::sample::select(vec![16usize, 32, 48, 64]),
        prop::sample::select(ALL_DTYPES.to_vec()),
    )
        .prop_filter_map("sizes the layout rejects", |(kind, nb, bs, h, d, dt)| {
            KvLayout::new(kind, nb, bs, h, d, dt).ok()
        })
}

/// Distinct bit patterns, so a mis-placed element cannot go unnoticed.
fn pattern(n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn offset_map_is_a_bijection_onto_the_tensor(l in layout_strategy()) {
        for side in [KvSide::K, KvSide::V] {
            let mut hit = vec![false; l.numel()];
            for block in 0..l.num_blocks {
                for row in 0..l.block_size {
                    for head in 0..l.num_kv_heads {
                        for dim in 0..l.head_size {
                            let at = KvIndex { block, row, head, dim };
                            let o = l.offset(side, at);
                            prop_assert!(o < l.numel(), "{:?} {:?} -> {} outside {}", side, at, o, l.numel());
                            prop_assert!(!hit[o], "{:?} offset {} hit twice", side, o);
                            hit[o] = true;
                            prop_assert_eq!(l.index_of(side, o).unwrap(), at);
                        }
                    }
                }
            }
            prop_assert!(hit.iter().all(|&h| h));
            prop_assert_eq!(l.shape(side).iter().product::<usize>(), l.numel());
        }
    }

    #[test]
    fn nd_index_agrees_with_the_flat_offset_and_shape(l in layout_strategy(), seed in any::<u64>()) {
        let at = KvIndex {
            block: seed as usize % l.num_blocks,
            row: (seed >> 8) as usize % l.block_size,
            head: (seed >> 16) as usize % l.num_kv_heads,
            dim: (seed >> 24) as usize % l.head_size,
        };
        for side in [KvSide::K, KvSide::V] {
            let (shape, idx) = (l.shape(side), l.nd_index(side, at));
            prop_assert_eq!(idx.len(), shape.len());
            prop_assert!(idx.iter().zip(&shape).all(|(i, n)| i < n));
            let flat = idx.iter().zip(&shape).fold(0usize, |acc, (i, n)| acc * n + i);
            prop_assert_eq!(flat, l.offset(side, at));
        }
    }
}

#[test]
fn nhd_round_trips_bit_for_bit_for_every_accepted_block_size() {
    for kind in LayoutKind::ALL {
        for dtype in ALL_DTYPES {
            for bs in BLOCK_SIZES {
                let Ok(l) = KvLayout::new(kind, 2, bs, 2, 32, dtype) else {
                    continue;
                };
                let nhd = pattern(l.numel());
                for side in [KvSide::K, KvSide::V] {
                    let cache = l.from_nhd(side, &nhd).unwrap();
                    assert_eq!(
                        l.to_nhd(side, &cache).unwrap(),
                        nhd,
                        "{kind} {dtype} bs {bs} {side:?}"
                    );
                    if kind != LayoutKind::Nhd && bs > 1 {
                        assert_ne!(cache, nhd, "{kind} bs {bs} {side:?} should permute");
                    }
                }
            }
        }
    }
}

#[test]
fn which_block_sizes_each_layout_accepts() {
    let accepted = |kind, dtype| -> Vec<usize> {
        BLOCK_SIZES
            .into_iter()
            .filter(|&bs| KvLayout::new(kind, 1, bs, 1, 128, dtype).is_ok())
            .collect()
    };
    assert_eq!(accepted(LayoutKind::Nhd, DType::Bf16), BLOCK_SIZES);
    assert_eq!(accepted(LayoutKind::RocmPaged, DType::Bf16), BLOCK_SIZES);
    // The shuffled V splits the block as [bs/x, .., x]: bf16 x = 8, fp8 x = 16.
    assert_eq!(
        accepted(LayoutKind::AiterShuffled, DType::Bf16),
        vec![16, 32, 544, 1056]
    );
    assert_eq!(
        accepted(LayoutKind::AiterShuffled, DType::Fp8E4m3Fnuz),
        vec![16, 32, 544, 1056]
    );
    assert_eq!(
        accepted(LayoutKind::AiterShuffled, DType::F32),
        vec![16, 32, 544, 1056]
    );
}

#[test]
fn aiter_shuffled_rejects_block_size_1_naming_the_rule() {
    let e = KvLayout::new(LayoutKind::AiterShuffled, 4, 1, 8, 128, DType::Bf16)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("block_size 1") && e.contains("multiple of 8") && e.contains("[.., bs/x, d, x]"),
        "{e}"
    );
}

#[test]
fn x_packed_layouts_reject_head_size_not_multiple_of_x() {
    for kind in [LayoutKind::RocmPaged, LayoutKind::AiterShuffled] {
        let e = KvLayout::new(kind, 4, 16, 8, 72, DType::Fp8E4m3Fn)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("head_size 72") && e.contains("multiple of 16"),
            "{e}"
        );
    }
    assert!(KvLayout::new(LayoutKind::Nhd, 4, 16, 8, 72, DType::Fp8E4m3Fn).is_ok());
}

#[test]
fn zero_sizes_are_rejected_naming_the_size() {
    let e = KvLayout::new(LayoutKind::Nhd, 4, 16, 0, 128, DType::Bf16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_kv_heads 0") && e.contains(">= 1"), "{e}");
}

#[test]
fn huge_caches_are_rejected_instead_of_overflowing() {
    let e = KvLayout::new(LayoutKind::Nhd, usize::MAX / 2, 16, 8, 128, DType::Bf16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cache size"), "{e}");
}

#[test]
fn layout_names_parse_and_unknown_names_list_the_allowed_ones() {
    for kind in LayoutKind::ALL {
        assert_eq!(LayoutKind::parse(kind.name()).unwrap(), kind);
    }
    let e = LayoutKind::parse("hnd").unwrap_err().to_string();
    assert!(
        e.contains("'hnd'") && e.contains("nhd, rocm-paged, aiter-shuffled"),
        "{e}"
    );
}

#[test]
fn shuffled_formulas_match_aiter_spec_examples() {
    // aiter.md §1.2, bf16 (x = 8), B = 16, D = 128, Hkv = 2: element (blk 1, h 1, t 3, d 10).
    let l = KvLayout::new(LayoutKind::AiterShuffled, 2, 16, 2, 128, DType::Bf16).unwrap();
    let at = KvIndex {
        block: 1,
        row: 3,
        head: 1,
        dim: 10,
    };
    let base = 2 * 128 * 16 + 128 * 16;
    assert_eq!(l.offset(KvSide::K, at), base + 16 * 8 + 3 * 8 + 2);
    assert_eq!(l.offset(KvSide::V, at), base + 10 * 8 + 3);
    assert_eq!(l.nd_index(KvSide::K, at), vec![1, 1, 1, 3, 2]);
    assert_eq!(l.nd_index(KvSide::V, at), vec![1, 1, 0, 10, 3]);
    // ROCM_ATTN's V keeps each channel's tokens contiguous: [nb, h, d, bs].
    let p = KvLayout::new(LayoutKind::RocmPaged, 2, 16, 2, 128, DType::Bf16).unwrap();
    assert_eq!(p.offset(KvSide::V, at), base + 10 * 16 + 3);
}

#[test]
fn user_coordinates_out_of_range_are_rejected() {
    let l = KvLayout::new(LayoutKind::RocmPaged, 2, 16, 2, 64, DType::F16).unwrap();
    let e = l
        .checked_offset(
            KvSide::K,
            KvIndex {
                block: 0,
                row: 16,
                head: 0,
                dim: 0,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 16") && e.contains("[0, 16)"), "{e}");
    let e = l.index_of(KvSide::V, l.numel()).unwrap_err().to_string();
    assert!(e.contains(&format!("offset {}", l.numel())), "{e}");
    let e = l.from_nhd(KvSide::K, &[0u16; 3]).unwrap_err().to_string();
    assert!(e.contains("NHD tensor length 3"), "{e}");
}

#[test]
fn mla_offset_map_is_a_bijection_for_every_block_size() {
    for bs in BLOCK_SIZES {
        let l = MlaLayout::new(2, bs, 16, 8, DType::Bf16).unwrap();
        let mut hit = vec![false; l.numel()];
        for block in 0..2 {
            for row in 0..bs {
                for c in 0..l.width() {
                    let o = l.offset(block, row, c);
                    assert!(!hit[o], "bs {bs}: offset {o} hit twice");
                    hit[o] = true;
                    assert_eq!(l.index_of(o).unwrap(), (block, row, c));
                }
            }
        }
        assert!(hit.iter().all(|&h| h), "bs {bs}");
    }
}

mod layout_cli {
    use serde_json::Value;
    use std::process::{Command, Output};

    fn layout(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_attnlab"))
            .arg("layout")
            .args(args)
            .output()
            .unwrap()
    }

    #[test]
    fn json_places_every_k_and_v_element_of_the_token() {
        let out = layout(&[
            "--layout",
            "aiter-shuffled",
            "--block-size",
            "16",
            "--head-size",
            "64",
            "--kv-heads",
            "2",
            "--token",
            "19",
            "--json",
        ]);
        assert!(out.status.success());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((v["block"].as_u64(), v["row"].as_u64()), (Some(1), Some(3)));
        assert_eq!(v["k"]["shape"], serde_json::json!([2, 2, 8, 16, 8]));
        assert_eq!(v["v"]["shape"], serde_json::json!([2, 2, 2, 64, 8]));
        assert_eq!(v["k"]["elements"].as_array().unwrap().len(), 2 * 64);
        // V element (head 0, dim 5): [blk, h, t / x, d, t % x]
        assert_eq!(
            v["v"]["elements"][5]["index"],
            serde_json::json!([1, 0, 0, 5, 3])
        );
    }

    #[test]
    fn rejected_block_size_is_one_line_naming_the_rule_with_exit_1() {
        let out = layout(&[
            "--layout",
            "aiter-shuffled",
            "--block-size",
            "1",
            "--head-size",
            "128",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("block_size 1") && err.contains("multiple of 8"),
            "{err}"
        );
    }

    #[test]
    fn bad_values_give_json_errors_naming_the_allowed_ones() {
        for (args, needle) in [
            (
                vec![
                    "--layout",
                    "hnd",
                    "--block-size",
                    "16",
                    "--head-size",
                    "128",
                ],
                "nhd, rocm-paged, aiter-shuffled, mla",
            ),
            (
                vec![
                    "--layout",
                    "nhd",
                    "--block-size",
                    "-3",
                    "--head-size",
                    "128",
                ],
                "integer >= 1",
            ),
            (
                vec![
                    "--layout",
                    "nhd",
                    "--block-size",
                    "16",
                    "--head-size",
                    "128",
                    "--dtype",
                    "int4",
                ],
                "bfloat16",
            ),
            (
                vec![
                    "--layout",
                    "nhd",
                    "--block-size",
                    "16",
                    "--head-size",
                    "128",
                    "--token",
                    "64",
                    "--num-blocks",
                    "4",
                ],
                "[0, 64)",
            ),
        ] {
            let out = layout(&[args.as_slice(), &["--json"]].concat());
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert!(
                v["error"]["message"].as_str().unwrap().contains(needle),
                "{args:?}: {v}"
            );
        }
    }

    #[test]
    fn mla_layout_shows_c_kv_then_k_pe() {
        let out = layout(&[
            "--layout",
            "mla",
            "--block-size",
            "1",
            "--head-size",
            "576",
            "--token",
            "2",
            "--json",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["shape"], serde_json::json!([3, 1, 576]));
        assert_eq!(
            v["k_pe"]["offsets"],
            serde_json::json!([2 * 576 + 512, 3 * 576])
        );
    }
}
