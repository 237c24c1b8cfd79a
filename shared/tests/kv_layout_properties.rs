//! The paged KV layouts (`shared/src/layout/mod.rs`) as properties, written
//! from the shape table of vllm-backends.md §2.2 and aiter.md §1.2:
//!
//! | layout | K | V |
//! |---|---|---|
//! | nhd | `[nb, bs, h, d]` | `[nb, bs, h, d]` |
//! | rocm-paged | `[nb, h, d/x, bs, x]` | `[nb, h, d, bs]` |
//! | aiter-shuffled | `[nb, h, d/x, bs, x]` | `[nb, h, bs/x, d, x]` |
//!
//! with x = 16 bytes / element size. Each offset is the row-major position
//! of the coordinate's index in that shape; the inverse map, the NHD
//! scatter/gather and the size checks follow. These close the holes
//! `cargo mutants` found with the shared package's tests alone
//! (docs/src/bugs.md, "Mutation score").

use attnlab_shared::dtype::{DType, ALL_DTYPES};
use attnlab_shared::layout::{KvIndex, KvLayout, KvSide, LayoutKind, LAYOUT_NAMES};
use proptest::prelude::*;

const SIDES: [KvSide; 2] = [KvSide::K, KvSide::V];

/// Elements per 16-byte vector.
fn x_of(dt: DType) -> usize {
    match dt {
        DType::F32 => 4,
        DType::F16 | DType::Bf16 => 8,
        DType::Fp8E4m3Fnuz | DType::Fp8E4m3Fn => 16,
    }
}

/// The shape table above.
fn shape(l: &KvLayout, side: KvSide) -> Vec<usize> {
    let (nb, bs, h, d, x) = (
        l.num_blocks,
        l.block_size,
        l.num_kv_heads,
        l.head_size,
        x_of(l.dtype),
    );
    match (l.kind, side) {
        (LayoutKind::Nhd, _) => vec![nb, bs, h, d],
        (_, KvSide::K) => vec![nb, h, d / x, bs, x],
        (LayoutKind::RocmPaged, KvSide::V) => vec![nb, h, d, bs],
        (LayoutKind::AiterShuffled, KvSide::V) => vec![nb, h, bs / x, d, x],
    }
}

/// Where (block, row, head, dim) sits in that shape.
fn nd_index(l: &KvLayout, side: KvSide, at: KvIndex) -> Vec<usize> {
    let x = x_of(l.dtype);
    let KvIndex {
        block,
        row,
        head,
        dim,
    } = at;
    match (l.kind, side) {
        (LayoutKind::Nhd, _) => vec![block, row, head, dim],
        (_, KvSide::K) => vec![block, head, dim / x, row, dim % x],
        (LayoutKind::RocmPaged, KvSide::V) => vec![block, head, dim, row],
        (LayoutKind::AiterShuffled, KvSide::V) => vec![block, head, row / x, dim, row % x],
    }
}

fn row_major(index: &[usize], shape: &[usize]) -> usize {
    index.iter().zip(shape).fold(0, |acc, (&i, &n)| {
        assert!(i < n, "index {index:?} outside shape {shape:?}");
        acc * n + i
    })
}

/// Whether the formulas can express these sizes: every size >= 1; the
/// x-packed layouts split d into d/x vectors; the shuffled V splits bs.
fn expressible(kind: LayoutKind, bs: usize, d: usize, dt: DType) -> bool {
    let x = x_of(dt);
    match kind {
        LayoutKind::Nhd => true,
        LayoutKind::RocmPaged => d.is_multiple_of(x),
        LayoutKind::AiterShuffled => d.is_multiple_of(x) && bs.is_multiple_of(x),
    }
}

/// Small caches of every layout, with sizes on both sides of each rule.
fn sizes() -> impl Strategy<Value = (LayoutKind, usize, usize, usize, usize, DType)> {
    (
        prop::sample::select(LayoutKind::ALL.to_vec()),
        1usize..4,
        prop::sample::select(vec![1usize, 2, 3, 4, 8, 12, 16, 32, 48]),
        1usize..4,
        prop::sample::select(vec![2usize, 4, 6, 8, 12, 16, 24, 32, 48, 64]),
        prop::sample::select(ALL_DTYPES.to_vec()),
    )
}

fn layout() -> impl Strategy<Value = KvLayout> {
    sizes().prop_filter_map(
        "sizes the layout's formulas cannot express",
        |(k, nb, bs, h, d, dt)| KvLayout::new(k, nb, bs, h, d, dt).ok(),
    )
}

fn every_index(l: &KvLayout) -> impl Iterator<Item = KvIndex> + '_ {
    (0..l.num_blocks).flat_map(move |block| {
        (0..l.block_size).flat_map(move |row| {
            (0..l.num_kv_heads).flat_map(move |head| {
                (0..l.head_size).map(move |dim| KvIndex {
                    block,
                    row,
                    head,
                    dim,
                })
            })
        })
    })
}

/// NHD position of a coordinate: `[nb, bs, h, d]` row-major.
fn nhd_position(l: &KvLayout, at: KvIndex) -> usize {
    ((at.block * l.block_size + at.row) * l.num_kv_heads + at.head) * l.head_size + at.dim
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// `new` accepts exactly the expressible sizes and keeps them; a
    /// rejection names the size that broke the rule.
    #[test]
    fn new_accepts_exactly_the_sizes_the_formulas_can_express(
        (kind, nb, bs, h, d, dt) in sizes(),
    ) {
        match KvLayout::new(kind, nb, bs, h, d, dt) {
            Ok(l) => {
                prop_assert!(expressible(kind, bs, d, dt));
                prop_assert_eq!(
                    (l.kind, l.num_blocks, l.block_size, l.num_kv_heads, l.head_size, l.dtype),
                    (kind, nb, bs, h, d, dt)
                );
            }
            Err(e) => {
                prop_assert!(!expressible(kind, bs, d, dt));
                let e = e.to_string();
                let x = x_of(dt);
                let named = if d % x != 0 {
                    format!("invalid head_size {d}: ")
                } else {
                    format!("invalid block_size {bs}: ")
                };
                prop_assert!(e.starts_with(&named), "{}", e);
                prop_assert!(e.contains(&format!("multiple of {x}")), "{}", e);
            }
        }
    }

    /// Every offset is the row-major position of the coordinate's index in
    /// the table's shape; shapes, x and the element counts agree with it.
    #[test]
    fn offsets_are_row_major_positions_in_the_tables_shape(l in layout()) {
        let x = x_of(l.dtype);
        prop_assert_eq!(l.x(), x);
        let block = l.block_size * l.num_kv_heads * l.head_size;
        prop_assert_eq!(l.block_numel(), block);
        prop_assert_eq!(l.numel(), l.num_blocks * block);
        for side in SIDES {
            let want_shape = shape(&l, side);
            prop_assert_eq!(&l.shape(side), &want_shape);
            let side_shape = match side {
                KvSide::K => l.k_shape(),
                KvSide::V => l.v_shape(),
            };
            prop_assert_eq!(&side_shape, &want_shape);
            prop_assert_eq!(want_shape.iter().product::<usize>(), l.numel());
            for at in every_index(&l) {
                let nd = nd_index(&l, side, at);
                prop_assert_eq!(&l.nd_index(side, at), &nd);
                let off = row_major(&nd, &want_shape);
                prop_assert_eq!(l.offset(side, at), off);
                let direct = match side {
                    KvSide::K => l.k_offset(at.block, at.row, at.head, at.dim),
                    KvSide::V => l.v_offset(at.block, at.row, at.head, at.dim),
                };
                prop_assert_eq!(direct, off);
                prop_assert_eq!(l.checked_offset(side, at).unwrap(), off);
                // The shuffles are intra-block: block b owns [b, b+1) * block.
                prop_assert_eq!(off / block, at.block);
            }
        }
    }

    /// `index_of` inverts the offset map over the whole tensor, and rejects
    /// the first offset past it, naming the range.
    #[test]
    fn index_of_inverts_the_offset_map(l in layout()) {
        for side in SIDES {
            for at in every_index(&l) {
                prop_assert_eq!(l.index_of(side, l.offset(side, at)).unwrap(), at);
            }
            let n = l.numel();
            let e = l.index_of(side, n).unwrap_err().to_string();
            prop_assert_eq!(e, format!("invalid offset {n}: allowed range is [0, {n})"));
        }
    }

    /// Scatter from NHD puts element (b, r, h, d) at its layout offset;
    /// gather brings every element back; wrong lengths name the right one.
    #[test]
    fn nhd_scatter_and_gather_move_each_element_to_its_offset_and_back(l in layout()) {
        let n = l.numel();
        let nhd: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761) ^ 0x5bd1_e995).collect();
        for side in SIDES {
            let cache = l.from_nhd(side, &nhd).unwrap();
            prop_assert_eq!(cache.len(), n);
            for at in every_index(&l) {
                prop_assert_eq!(cache[l.offset(side, at)], nhd[nhd_position(&l, at)]);
            }
            prop_assert_eq!(&l.to_nhd(side, &cache).unwrap(), &nhd);
            let short = l.from_nhd(side, &nhd[1..]).unwrap_err().to_string();
            prop_assert!(short.starts_with(&format!("invalid NHD tensor length {}: ", n - 1)), "{}", short);
            prop_assert!(short.ends_with(&format!("= {n}")), "{}", short);
            let long = l.to_nhd(side, &[nhd.clone(), vec![0]].concat()).unwrap_err().to_string();
            prop_assert!(long.starts_with(&format!("invalid cache tensor length {}: ", n + 1)), "{}", long);
        }
    }

    /// A coordinate at or past its range is rejected naming the coordinate,
    /// its value and the range, whatever the other coordinates.
    #[test]
    fn out_of_range_coordinates_are_rejected_naming_the_coordinate(
        l in layout(), which in 0usize..4, over in 0usize..3, seed in any::<[usize; 4]>(),
    ) {
        let limits = [l.num_blocks, l.block_size, l.num_kv_heads, l.head_size];
        let mut c = [0; 4];
        for i in 0..4 {
            c[i] = seed[i] % limits[i];
        }
        c[which] = limits[which] + over;
        let at = KvIndex { block: c[0], row: c[1], head: c[2], dim: c[3] };
        let name = ["block", "row", "kv head", "dim"][which];
        let want = format!("invalid {name} {}: allowed range is [0, {})", c[which], limits[which]);
        prop_assert_eq!(l.check_index(at).unwrap_err().to_string(), want.clone());
        for side in SIDES {
            prop_assert_eq!(l.checked_offset(side, at).unwrap_err().to_string(), want.clone());
        }
    }
}

#[test]
fn zero_sizes_are_rejected_naming_the_size() {
    for (i, what) in ["num_blocks", "block_size", "num_kv_heads", "head_size"]
        .iter()
        .enumerate()
    {
        let mut s = [2usize, 16, 2, 64];
        s[i] = 0;
        for kind in LayoutKind::ALL {
            let e = KvLayout::new(kind, s[0], s[1], s[2], s[3], DType::F16).unwrap_err();
            assert_eq!(e.to_string(), format!("invalid {what} 0: must be >= 1"));
        }
    }
}

#[test]
fn a_cache_whose_element_count_overflows_usize_is_rejected() {
    let half = 1usize << (usize::BITS / 2);
    for (nb, bs, h, d) in [
        (half, half, 1, 16),
        (half, 16, half, 16),
        (1, half, 16, half),
        (usize::MAX, 1, 1, 16),
    ] {
        let e = KvLayout::new(LayoutKind::Nhd, nb, bs, h, d, DType::F16)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid cache size "), "{e}");
        assert!(e.contains(&format!("{} bits", usize::BITS)), "{e}");
    }
    // 2^63 elements still fit (the check multiplies, it never allocates).
    let l = KvLayout::new(LayoutKind::Nhd, half / 32, half, 1, 16, DType::F16).unwrap();
    assert_eq!(l.numel(), 1usize << (usize::BITS - 1));
}

#[test]
fn layout_names_round_trip_and_unknown_names_list_the_allowed_ones() {
    assert_eq!(LayoutKind::ALL.len(), LAYOUT_NAMES.len());
    for (kind, name) in LayoutKind::ALL.into_iter().zip(LAYOUT_NAMES) {
        assert_eq!(kind.name(), name);
        assert_eq!(kind.to_string(), name);
        assert_eq!(LayoutKind::parse(name).unwrap(), kind);
    }
    let e = LayoutKind::parse("NHD").unwrap_err().to_string();
    assert_eq!(
        e,
        "invalid layout 'NHD': allowed: nhd, rocm-paged, aiter-shuffled"
    );
}
