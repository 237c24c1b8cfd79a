//! Block pools, block tables, slot mapping and kernel block sizes as
//! properties over their inputs (docs/src/block-tables.md): written from
//! the specification to close the holes `cargo mutants` found in
//! `shared/src/block_table.rs` (docs/src/bugs.md, "Mutation score").

use attnlab_shared::block_table::{
    block_table_tensor, common_block_size, pad_slot_mapping, select_kernel_block_size, BlockPool,
    BlockTable, KernelBlockSize, KernelBlockSplit,
};
use attnlab_shared::metadata::PAD_SLOT_ID;
use proptest::prelude::*;
use std::collections::BTreeSet;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Allocation is all or none, hands out distinct free ids, and a block
    /// comes back to the pool exactly when its last user frees it.
    #[test]
    fn the_pool_hands_out_distinct_blocks_and_takes_them_back_at_the_last_free(
        num in 1usize..64,
        asks in prop::collection::vec(0usize..24, 1..6),
        shares in 0u32..3,
    ) {
        let mut pool = BlockPool::new(num).unwrap();
        prop_assert_eq!(pool.num_blocks(), num);
        let mut held: Vec<usize> = vec![];
        for n in asks {
            let free = pool.num_free();
            match pool.allocate_n(n) {
                Ok(ids) => {
                    prop_assert!(n <= free);
                    prop_assert_eq!(ids.len(), n);
                    prop_assert_eq!(pool.num_free(), free - n);
                    for &id in &ids {
                        prop_assert!(id < num && !held.contains(&id));
                        prop_assert_eq!(pool.ref_count(id).unwrap(), 1);
                        held.push(id);
                    }
                }
                Err(_) => {
                    prop_assert!(n > free);
                    prop_assert_eq!(pool.num_free(), free, "all or none");
                }
            }
        }
        prop_assert_eq!(pool.num_free() + held.len(), num);
        if let Some(&id) = held.first() {
            for _ in 0..shares {
                pool.share(id).unwrap();
            }
            prop_assert_eq!(pool.ref_count(id).unwrap(), 1 + shares);
            for k in 0..=shares {
                let before = pool.num_free();
                pool.free(id).unwrap();
                let back = k == shares;
                prop_assert_eq!(pool.num_free(), before + usize::from(back));
            }
            prop_assert_eq!(pool.ref_count(id).unwrap(), 0);
            prop_assert!(pool.free(id).is_err(), "double free");
            prop_assert!(pool.share(id).is_err(), "sharing a free block");
            // The freed block is handed out again once the queue reaches it.
            let again = pool.allocate_n(pool.num_free()).unwrap();
            prop_assert!(again.contains(&id));
            prop_assert!(pool.allocate().is_err(), "exhausted");
        }
        prop_assert!(pool.ref_count(num).is_err() && pool.free(num).is_err());
    }

    /// A table holds exactly the blocks its tokens need; every reserved
    /// position has its own slot `block * B + pos % B`, nothing past them.
    #[test]
    fn a_table_maps_every_reserved_token_to_its_own_slot(
        bs in 1usize..40,
        appends in prop::collection::vec(0usize..50, 1..5),
    ) {
        let mut pool = BlockPool::new(512).unwrap();
        let mut table = BlockTable::new(bs).unwrap();
        prop_assert_eq!(table.block_size(), bs);
        let mut total = 0;
        for n in appends {
            let need = (total + n).div_ceil(bs) - table.blocks().len();
            prop_assert_eq!(table.blocks_needed(n), need);
            let free = pool.num_free();
            table.append_tokens(n, &mut pool).unwrap();
            total += n;
            prop_assert_eq!(pool.num_free(), free - need);
            prop_assert_eq!(table.num_tokens(), total);
            prop_assert_eq!(table.blocks().len(), total.div_ceil(bs));
        }
        let slots = table.slot_mapping(0..total).unwrap();
        prop_assert_eq!(slots.len(), total);
        for (pos, &s) in slots.iter().enumerate() {
            let want = (table.blocks()[pos / bs] * bs + pos % bs) as i64;
            prop_assert_eq!(s, want);
            prop_assert_eq!(table.slot(pos).unwrap(), want);
        }
        let distinct: BTreeSet<i64> = slots.iter().copied().collect();
        prop_assert_eq!(distinct.len(), total);
        prop_assert!(table.slot(total).is_err());
        prop_assert!(table.slot_mapping(0..total + 1).is_err());
        table.free_all(&mut pool).unwrap();
        prop_assert_eq!(pool.num_free(), 512);
        prop_assert_eq!((table.num_tokens(), table.blocks().len()), (0, 0));
    }

    /// Padding appends PAD_SLOT_ID up to the length and keeps the real slots.
    #[test]
    fn padding_keeps_the_real_slots_and_pads_with_the_pad_id(
        slots in prop::collection::vec(0i64..1000, 0..20),
        extra in 0usize..10,
        short in 1usize..5,
    ) {
        let mut padded = slots.clone();
        pad_slot_mapping(&mut padded, slots.len() + extra).unwrap();
        prop_assert_eq!(&padded[..slots.len()], &slots[..]);
        prop_assert!(padded[slots.len()..].iter().all(|&s| s == PAD_SLOT_ID));
        prop_assert_eq!(padded.len(), slots.len() + extra);
        if slots.len() >= short {
            let mut cut = slots.clone();
            prop_assert!(pad_slot_mapping(&mut cut, slots.len() - short).is_err());
            prop_assert_eq!(cut, slots);
        }
    }

    /// vLLM's select_common_block_size: the manager size when some entry
    /// takes it, else the largest exact size dividing it, else none.
    #[test]
    fn the_common_block_size_is_the_manager_size_or_its_largest_exact_divisor(
        m in 1usize..2200,
        exact in prop::collection::vec(0usize..80, 0..3),
        multiple in prop::option::of(0usize..40),
    ) {
        let mut sizes: Vec<KernelBlockSize> = exact.iter().map(|&n| KernelBlockSize::Exact(n)).collect();
        if let Some(k) = multiple {
            sizes.push(KernelBlockSize::MultipleOf(k));
        }
        // A zero entry (a malformed list) takes and divides nothing.
        let takes = exact.contains(&m) || multiple.is_some_and(|k| k > 0 && m % k == 0);
        let divisor = exact.iter().copied().filter(|&n| n > 0 && m % n == 0).max();
        let want = if takes { Some(m) } else { divisor };
        prop_assert_eq!(common_block_size(m, &sizes), want);
        match select_kernel_block_size(m, "B", &sizes) {
            Ok(k) => prop_assert_eq!(Some(k), want),
            Err(e) => {
                prop_assert_eq!(want, None);
                prop_assert!(e.to_string().contains(&format!("No common block size for {m}")), "{}", e);
            }
        }
        prop_assert_eq!(common_block_size(0, &sizes), None);
        prop_assert!(select_kernel_block_size(0, "B", &sizes).is_err());
    }

    /// Manager block `b` becomes kernel blocks `b * r .. b * r + r`.
    #[test]
    fn a_manager_block_splits_into_consecutive_kernel_blocks(
        kernel in 1usize..40,
        ratio in 1usize..6,
        rows in prop::collection::vec(prop::collection::vec(0usize..1000, 0..5), 1..4),
    ) {
        let split = KernelBlockSplit::new(kernel * ratio, kernel).unwrap();
        prop_assert_eq!(split.ratio(), ratio);
        prop_assert_eq!(split.num_kernel_blocks(7), 7 * ratio);
        let refs: Vec<&[usize]> = rows.iter().map(|r| r.as_slice()).collect();
        let t = block_table_tensor(&refs, split).unwrap();
        let width = rows.iter().map(|r| r.len() * ratio).max().unwrap_or(0);
        prop_assert_eq!((t.num_rows, t.max_blocks), (rows.len(), width));
        for (i, row) in rows.iter().enumerate() {
            let ids = split.kernel_blocks(row);
            prop_assert_eq!(ids.len(), row.len() * ratio);
            for (j, &id) in ids.iter().enumerate() {
                prop_assert_eq!(id, row[j / ratio] * ratio + j % ratio);
                prop_assert_eq!(t.row(i)[j] as usize, id);
            }
            prop_assert!(t.row(i)[ids.len()..].iter().all(|&x| x == 0), "zero padding");
        }
        if kernel > 1 {
            prop_assert!(KernelBlockSplit::new(kernel * ratio + 1, kernel).is_err());
        }
        prop_assert!(KernelBlockSplit::new(0, kernel).is_err() && KernelBlockSplit::new(kernel, 0).is_err());
    }
}

#[test]
fn kernel_block_ids_past_int32_are_refused_naming_the_row() {
    let split = KernelBlockSplit::new(2, 1).unwrap();
    let big = [(i32::MAX as usize) / 2 + 1];
    let e = block_table_tensor(&[&[0], &big], split)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("block_table[1]") && e.contains(&i32::MAX.to_string()),
        "{e}"
    );
    assert!(BlockPool::new(0).is_err() && BlockPool::new(i32::MAX as usize + 1).is_err());
    assert!(BlockTable::new(0).is_err());
}
