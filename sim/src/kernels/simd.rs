//! The emulator's hot loops, written once and compiled for several CPU
//! feature sets, picked at run time (AVX-512, AVX2 + FMA, or a portable
//! fallback).
//!
//! Bit-exactness does not depend on the path: every output lane runs the
//! same IEEE operations in the same order on every path (one fma chain in
//! ascending index per dot product, the contract's `exp2c` per element);
//! only how many independent lanes (keys, head dimensions, query rows) are
//! in flight at once differs, and independent lanes do not see each other.
//! `every_simd_path_gives_the_same_bits` (below) and
//! `sim/tests/unified.rs`'s path test run each path on the same cases.
//!
//! The generic bodies are `#[inline(always)]` fixed-size array loops; each
//! path instantiates them inside a `#[target_feature]` function, so LLVM
//! vectorises the same source for the wider registers. `ATTNLAB_SIMD=
//! portable|avx2|avx512` pins a path (one the CPU lacks falls back to the
//! best one it has).

use crate::numerics::{exp2c, DType, EXP2C_COEFFS, EXP2C_MIN_X};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// 0: no forced path; 1, 2, 3: portable, AVX2, AVX-512.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// A compiled variant of the hot loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SimdPath {
    /// Plain Rust, one key block at a time: runs anywhere.
    Portable,
    /// AVX2 + FMA: 16 256-bit registers.
    Avx2,
    /// AVX-512F (+VL): 32 512-bit registers.
    Avx512,
}

impl SimdPath {
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Portable => "portable",
            SimdPath::Avx2 => "avx2",
            SimdPath::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            SimdPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            SimdPath::Avx512 => {
                SimdPath::Avx2.supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every path this CPU runs, portable first.
    pub fn available() -> Vec<SimdPath> {
        [SimdPath::Portable, SimdPath::Avx2, SimdPath::Avx512]
            .into_iter()
            .filter(|p| p.supported())
            .collect()
    }

    /// Makes every kernel in the process run `path` (if supported) until
    /// `force(None)`. For tests and benchmarks that compare paths: since
    /// every path gives the same bits, kernels running concurrently in
    /// other threads are not affected in their results.
    pub fn force(path: Option<SimdPath>) {
        let code = match path {
            None => 0,
            Some(SimdPath::Portable) => 1,
            Some(SimdPath::Avx2) => 2,
            Some(SimdPath::Avx512) => 3,
        };
        FORCED.store(code, Ordering::Relaxed);
    }

    /// The path the kernels use: the one [`SimdPath::force`]d, else
    /// `ATTNLAB_SIMD` if set to a supported path's name, else the widest
    /// supported one (detected once).
    #[inline]
    pub fn active() -> SimdPath {
        let forced = match FORCED.load(Ordering::Relaxed) {
            1 => Some(SimdPath::Portable),
            2 => Some(SimdPath::Avx2),
            3 => Some(SimdPath::Avx512),
            _ => None,
        };
        if let Some(p) = forced.filter(|p| p.supported()) {
            return p;
        }
        static ACTIVE: OnceLock<SimdPath> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let best = *SimdPath::available().last().unwrap_or(&SimdPath::Portable);
            match std::env::var("ATTNLAB_SIMD").ok().as_deref() {
                Some("portable") => SimdPath::Portable,
                Some("avx2") if SimdPath::Avx2.supported() => SimdPath::Avx2,
                Some("avx512") if SimdPath::Avx512.supported() => SimdPath::Avx512,
                _ => best,
            }
        })
    }
}

// ---------------------------------------------------------------- dots

/// `out[r * out_stride + j] = sum_i xs[r][i] * w[i * stride + col + j]` for
/// `j < n`, each one fma chain from 0 over i ascending (the chain of
/// `softmax::dot(xs[r], column j)`). The chains run over
/// `i < min(xs[r].len(), w.len() / stride)` (as `lane_dots` zips x with
/// w's rows); every `xs[r]` has the same length.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dots_rows(
    path: SimdPath,
    xs: &[&[f32]],
    w: &[f32],
    stride: usize,
    col: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let depth = xs.iter().map(|x| x.len()).min().unwrap_or(0);
    let depth = depth.min(w.len().checked_div(stride).unwrap_or(0));
    let xs_cut: Vec<&[f32]>;
    let xs = if xs.iter().all(|x| x.len() == depth) {
        xs
    } else {
        xs_cut = xs.iter().map(|x| &x[..depth]).collect();
        &xs_cut
    };
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the features the function enables.
        SimdPath::Avx512 if path.supported() => unsafe {
            dots_avx512(xs, w, stride, col, n, out, out_stride)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdPath::Avx2 if path.supported() => unsafe {
            dots_avx2(xs, w, stride, col, n, out, out_stride)
        },
        _ => dots_body::<1, 32>(xs, w, stride, col, n, out, out_stride),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(
    xs: &[&[f32]],
    w: &[f32],
    stride: usize,
    col: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    // 2 rows x 32 keys: 8 accumulators, 4 K loads and 2 broadcasts per step.
    dots_body::<2, 32>(xs, w, stride, col, n, out, out_stride)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn dots_avx512(
    xs: &[&[f32]],
    w: &[f32],
    stride: usize,
    col: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let d = xs.first().map_or(0, |x| x.len());
    let rows = xs.len();
    // Every read and write in range, once (the blocks below use pointers).
    if n == 0 || rows == 0 {
        return;
    }
    let in_range = (d == 0 || (d - 1) * stride + col + n <= w.len())
        && (rows - 1) * out_stride + n <= out.len();
    if !in_range {
        // Not reached through dots_rows' callers; the checked body panics
        // where an index is out of range.
        return dots_body::<8, 32>(xs, w, stride, col, n, out, out_stride);
    }
    let wp = w.as_ptr().add(col);
    let op = out.as_mut_ptr();
    let q = |r: usize| xs[r].as_ptr();
    // Key blocks outside, row groups inside: a block's K^T columns (d x
    // 32 keys) stay in L1 while every row group reads them.
    let mut j = 0;
    if n >= 32 {
        while j + 32 <= n {
            let mut r = 0;
            // 8 rows x 32 keys: 16 zmm accumulators, 2 K loads and 8
            // broadcasts per step.
            while r + 8 <= rows {
                let qs: [*const f32; 8] = std::array::from_fn(|i| q(r + i));
                dots_zmm::<8, 2>(
                    qs,
                    wp.add(j),
                    stride,
                    d,
                    op.add(r * out_stride + j),
                    out_stride,
                    0xffff,
                );
                r += 8;
            }
            while r + 4 <= rows {
                let qs: [*const f32; 4] = std::array::from_fn(|i| q(r + i));
                dots_zmm::<4, 2>(
                    qs,
                    wp.add(j),
                    stride,
                    d,
                    op.add(r * out_stride + j),
                    out_stride,
                    0xffff,
                );
                r += 4;
            }
            while r < rows {
                dots_zmm::<1, 2>(
                    [q(r)],
                    wp.add(j),
                    stride,
                    d,
                    op.add(r * out_stride + j),
                    out_stride,
                    0xffff,
                );
                r += 1;
            }
            j += 32;
        }
    }
    // 16 keys at a time, the last block masked to the keys left: 16 rows
    // x 16 keys (FLEX's BLOCK_N, the 3D kernels' TILE), again 16 zmm
    // accumulators (8 rows would leave the two fma pipes waiting on 8
    // chains' latency).
    while j < n {
        let mask: u16 = if n - j >= 16 {
            0xffff
        } else {
            (1u16 << (n - j)) - 1
        };
        let mut r = 0;
        while r + 16 <= rows {
            let qs: [*const f32; 16] = std::array::from_fn(|i| q(r + i));
            dots_zmm::<16, 1>(
                qs,
                wp.add(j),
                stride,
                d,
                op.add(r * out_stride + j),
                out_stride,
                mask,
            );
            r += 16;
        }
        while r + 4 <= rows {
            let qs: [*const f32; 4] = std::array::from_fn(|i| q(r + i));
            dots_zmm::<4, 1>(
                qs,
                wp.add(j),
                stride,
                d,
                op.add(r * out_stride + j),
                out_stride,
                mask,
            );
            r += 4;
        }
        while r < rows {
            dots_zmm::<1, 1>(
                [q(r)],
                wp.add(j),
                stride,
                d,
                op.add(r * out_stride + j),
                out_stride,
                mask,
            );
            r += 1;
        }
        j += 16;
    }
}

/// `R` rows x `16 * NV` keys of [`dots_rows`] in zmm registers: row r's
/// key lane l is `sum_i q[r][i] * w[i * stride + l]`, one fma chain from 0
/// over i ascending; the last vector's lanes outside `mask` are neither
/// read nor written. The caller checked every index.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // registers indexed by row, vector and lane
unsafe fn dots_zmm<const R: usize, const NV: usize>(
    q: [*const f32; R],
    w: *const f32,
    stride: usize,
    d: usize,
    out: *mut f32,
    out_stride: usize,
    mask: u16,
) {
    use std::arch::x86_64::*;
    let lane_mask = |v: usize| if v + 1 == NV { mask } else { 0xffff };
    let mut a = [[_mm512_setzero_ps(); NV]; R];
    let mut wp = w;
    for i in 0..d {
        let k: [__m512; NV] =
            std::array::from_fn(|v| _mm512_maskz_loadu_ps(lane_mask(v), wp.add(16 * v)));
        for r in 0..R {
            let b = _mm512_set1_ps(*q[r].add(i));
            for v in 0..NV {
                a[r][v] = _mm512_fmadd_ps(b, k[v], a[r][v]);
            }
        }
        wp = wp.add(stride);
    }
    for r in 0..R {
        for v in 0..NV {
            _mm512_mask_storeu_ps(out.add(r * out_stride + 16 * v), lane_mask(v), a[r][v]);
        }
    }
}

/// Rows in groups of `R` (then 4 where `R > 4`, then 1), keys in blocks of
/// `L` (then 8, then one by one); each (row, key) lane is one chain in
/// ascending i.
#[inline(always)]
fn dots_body<const R: usize, const L: usize>(
    xs: &[&[f32]],
    w: &[f32],
    stride: usize,
    col: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let mut r = 0;
    while r + R <= xs.len() {
        let rows: &[&[f32]; R] = xs[r..r + R].try_into().expect("R rows");
        dots_row_block::<R, L>(
            rows,
            w,
            stride,
            col,
            n,
            &mut out[r * out_stride..],
            out_stride,
        );
        r += R;
    }
    // A GQA group of four heads (or what is left of a wider block): four
    // rows share each K load, enough chains in flight to cover the fma
    // latency where one row alone runs two.
    while R > 4 && r + 4 <= xs.len() {
        let rows: &[&[f32]; 4] = xs[r..r + 4].try_into().expect("4 rows");
        dots_row_block::<4, L>(
            rows,
            w,
            stride,
            col,
            n,
            &mut out[r * out_stride..],
            out_stride,
        );
        r += 4;
    }
    while r < xs.len() {
        let rows: &[&[f32]; 1] = xs[r..r + 1].try_into().expect("1 row");
        dots_row_block::<1, L>(
            rows,
            w,
            stride,
            col,
            n,
            &mut out[r * out_stride..],
            out_stride,
        );
        r += 1;
    }
}

#[inline(always)]
fn dots_row_block<const R: usize, const L: usize>(
    xs: &[&[f32]; R],
    w: &[f32],
    stride: usize,
    col: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let mut j = 0;
    while j + L <= n {
        dots_block::<R, L>(xs, w, stride, col + j, out, out_stride, j);
        j += L;
    }
    // A 16-key tile (the decode kernels' TILE): one zmm (two ymm) per row.
    while L > 16 && j + 16 <= n {
        dots_block::<R, 16>(xs, w, stride, col + j, out, out_stride, j);
        j += 16;
    }
    while j + 8 <= n {
        dots_block::<R, 8>(xs, w, stride, col + j, out, out_stride, j);
        j += 8;
    }
    while j < n {
        dots_block::<R, 1>(xs, w, stride, col + j, out, out_stride, j);
        j += 1;
    }
}

#[inline(always)]
fn dots_block<const R: usize, const L: usize>(
    xs: &[&[f32]; R],
    w: &[f32],
    stride: usize,
    col: usize,
    out: &mut [f32],
    out_stride: usize,
    j: usize,
) {
    let d = xs[0].len();
    // The rows in locals, cut to d (no reload or length check per step).
    let xs: [&[f32]; R] = std::array::from_fn(|r| &xs[r][..d]);
    let mut a = [[0.0f32; L]; R];
    for i in 0..d {
        let wv: &[f32; L] = w[i * stride + col..i * stride + col + L]
            .try_into()
            .expect("L lanes");
        for r in 0..R {
            let x = xs[r][i];
            for (al, &wl) in a[r].iter_mut().zip(wv) {
                *al = x.mul_add(wl, *al);
            }
        }
    }
    for (r, ar) in a.iter().enumerate() {
        out[r * out_stride + j..r * out_stride + j + L].copy_from_slice(ar);
    }
}

// ---------------------------------------------------------------- PV

/// `acc[d] = acc[d] * alpha` (when given), then `acc[d] = fma(p[k],
/// row(k)[d], acc[d])` for k ascending: each d one chain, the run of
/// lanes in registers across the keys.
#[inline]
pub fn pv_accumulate<'a>(
    path: SimdPath,
    acc: &mut [f32],
    alpha: Option<f32>,
    p: &[f32],
    row: impl Fn(usize) -> &'a [f32],
) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the features the function enables.
        SimdPath::Avx512 if path.supported() => unsafe { pv_avx512(acc, alpha, p, row) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdPath::Avx2 if path.supported() => unsafe { pv_avx2(acc, alpha, p, row) },
        _ => pv_body::<32>(acc, alpha, p, row),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pv_avx2<'a>(
    acc: &mut [f32],
    alpha: Option<f32>,
    p: &[f32],
    row: impl Fn(usize) -> &'a [f32],
) {
    // 64 lanes = 8 ymm chains: enough in flight to hide the fma latency.
    pv_body::<64>(acc, alpha, p, row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn pv_avx512<'a>(
    acc: &mut [f32],
    alpha: Option<f32>,
    p: &[f32],
    row: impl Fn(usize) -> &'a [f32],
) {
    pv_body::<128>(acc, alpha, p, row)
}

#[inline(always)]
fn pv_body<'a, const L: usize>(
    acc: &mut [f32],
    alpha: Option<f32>,
    p: &[f32],
    row: impl Fn(usize) -> &'a [f32],
) {
    let mut d0 = 0;
    while d0 + L <= acc.len() {
        pv_run::<L>(&mut acc[d0..d0 + L], d0, alpha, p, &row);
        d0 += L;
    }
    while d0 + 8 <= acc.len() {
        pv_run::<8>(&mut acc[d0..d0 + 8], d0, alpha, p, &row);
        d0 += 8;
    }
    while d0 < acc.len() {
        pv_run::<1>(&mut acc[d0..d0 + 1], d0, alpha, p, &row);
        d0 += 1;
    }
}

#[inline(always)]
fn pv_run<'a, const L: usize>(
    run: &mut [f32],
    d0: usize,
    alpha: Option<f32>,
    p: &[f32],
    row: &impl Fn(usize) -> &'a [f32],
) {
    let run: &mut [f32; L] = run.try_into().expect("L lanes");
    let mut a = *run;
    if let Some(alpha) = alpha {
        a.iter_mut().for_each(|x| *x *= alpha);
    }
    for (k, &pr) in p.iter().enumerate() {
        let v: &[f32; L] = row(k)[d0..d0 + L]
            .try_into()
            .expect("V row shorter than acc");
        for (x, &vd) in a.iter_mut().zip(v) {
            *x = pr.mul_add(vd, *x);
        }
    }
    *run = a;
}

/// `acc[d] = acc[d] * alpha` for every d (independent lanes).
#[inline]
pub fn scale(acc: &mut [f32], alpha: f32) {
    acc.iter_mut().for_each(|x| *x *= alpha);
}

/// `sums[r] = ((sums[r] + p[r][0]) + p[r][1]) + ... + p[r][len - 1]` for
/// every row r: R independent chains, each in ascending j, interleaved so
/// their adds overlap (one chain alone waits on every add's latency).
#[inline(always)]
pub fn row_sums<const R: usize, const K: usize>(
    mut sums: [f32; R],
    p: &[[f32; K]; R],
    len: usize,
) -> [f32; R] {
    for j in 0..len {
        for (sum, row) in sums.iter_mut().zip(p) {
            *sum += row[j];
        }
    }
    sums
}

/// For each of R rows: `acc[r][d] = fma(p[r][k], row(k)[d], acc[r][d])`
/// for k ascending over `k < len`, skipping every k with `keep[r][k] ==
/// 0` (the row's own skip: its unrounded P). Each (row, d) is one chain;
/// a run of d lanes of all R rows stays in registers across the keys, so
/// each load of V row k serves R rows.
#[inline]
pub fn pv_rows<'a, const R: usize, const K: usize>(
    path: SimdPath,
    acc: &mut [&mut [f32]; R],
    p: &[[f32; K]; R],
    keep: &[[f32; K]; R],
    len: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    pv_rows_scaled(path, acc, None, p, keep, len, row)
}

/// [`pv_rows`] after `acc[r][d] = acc[r][d] * alpha[r]` for every d when
/// `alpha` is given ([`scale`] of each row, then the chains): the
/// multiply happens as the lanes are loaded into registers, saving a pass
/// over the accumulators.
#[inline]
pub fn pv_rows_scaled<'a, const R: usize, const K: usize>(
    path: SimdPath,
    acc: &mut [&mut [f32]; R],
    alpha: Option<[f32; R]>,
    p: &[[f32; K]; R],
    keep: &[[f32; K]; R],
    len: usize,
    row: impl Fn(usize) -> &'a [f32],
) {
    // Most tiles skip no key (no mask, no underflow): then no lane needs
    // the per-key test.
    let skips = keep.iter().any(|k| k[..len].contains(&0.0));
    pv_rows_skipping(path, acc, alpha, p, keep, len, row, skips)
}

/// [`pv_rows_scaled`] where the caller knows whether some `keep[r][k]`
/// (`k < len`) is 0 (`skips`; true is always correct, false only when
/// no key is skipped).
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn pv_rows_skipping<'a, const R: usize, const K: usize>(
    path: SimdPath,
    acc: &mut [&mut [f32]; R],
    alpha: Option<[f32; R]>,
    p: &[[f32; K]; R],
    keep: &[[f32; K]; R],
    len: usize,
    row: impl Fn(usize) -> &'a [f32],
    skips: bool,
) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the features the function enables.
        SimdPath::Avx512 if path.supported() => unsafe {
            pv_rows_avx512(acc, alpha, p, keep, len, row, skips)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdPath::Avx2 if path.supported() => unsafe {
            pv_rows_avx2(acc, alpha, p, keep, len, row, skips)
        },
        _ => pv_rows_body::<R, K, 8>(acc, alpha, p, keep, len, &row, skips),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pv_rows_avx2<'a, const R: usize, const K: usize>(
    acc: &mut [&mut [f32]; R],
    alpha: Option<[f32; R]>,
    p: &[[f32; K]; R],
    keep: &[[f32; K]; R],
    len: usize,
    row: impl Fn(usize) -> &'a [f32],
    skips: bool,
) {
    // 8 ymm accumulators: 4 rows x 16 lanes, or 1 row x 64.
    if R >= 4 {
        pv_rows_body::<R, K, 16>(acc, alpha, p, keep, len, &row, skips)
    } else {
        pv_rows_body::<R, K, 64>(acc, alpha, p, keep, len, &row, skips)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn pv_rows_avx512<'a, const R: usize, const K: usize>(
    acc: &mut [&mut [f32]; R],
    alpha: Option<[f32; R]>,
    p: &[[f32; K]; R],
    keep: &[[f32; K]; R],
    len: usize,
    row: impl Fn(usize) -> &'a [f32],
    skips: bool,
) {
    // 16 zmm accumulators: 8 rows x 32 lanes, 4 rows x 64 lanes; one
    // row: 8 x 16 lanes (explicit registers: LLVM keeps arrays of zmm in
    // registers, where it turned 8 rows of f32 arrays into gathers).
    let d = acc.iter().map(|a| a.len()).min().unwrap_or(0);
    let mut d0 = 0;
    if R >= 8 {
        while d0 + 32 <= d {
            pv_rows_zmm::<R, K, 2>(acc, d0, alpha, p, keep, len, &row, skips);
            d0 += 32;
        }
    } else if R >= 4 {
        while d0 + 64 <= d {
            pv_rows_zmm::<R, K, 4>(acc, d0, alpha, p, keep, len, &row, skips);
            d0 += 64;
        }
    } else {
        while d0 + 128 <= d {
            pv_rows_zmm::<R, K, 8>(acc, d0, alpha, p, keep, len, &row, skips);
            d0 += 128;
        }
    }
    while d0 + 16 <= d {
        pv_rows_zmm::<R, K, 1>(acc, d0, alpha, p, keep, len, &row, skips);
        d0 += 16;
    }
    while d0 < d {
        pv_rows_run::<R, K, 1>(acc, d0, alpha, p, keep, len, &row, skips);
        d0 += 1;
    }
}

/// [`pv_rows_run`] over `16 * NV` lanes in AVX-512 registers: the same
/// fma per (row, lane, key), a skipped key's lanes kept by the fma's mask.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_rows_zmm<'a, const R: usize, const K: usize, const NV: usize>(
    acc: &mut [&mut [f32]; R],
    d0: usize,
    alpha: Option<[f32; R]>,
    p: &[[f32; K]; R],
    keep: &[[f32; K]; R],
    len: usize,
    row: &impl Fn(usize) -> &'a [f32],
    skips: bool,
) {
    use std::arch::x86_64::*;
    let mut a: [[__m512; NV]; R] = [[_mm512_setzero_ps(); NV]; R];
    for r in 0..R {
        let src = &acc[r][d0..d0 + 16 * NV];
        for (v, x) in a[r].iter_mut().enumerate() {
            *x = _mm512_loadu_ps(src[16 * v..].as_ptr());
        }
        if let Some(alpha) = alpha {
            let al = _mm512_set1_ps(alpha[r]);
            for x in a[r].iter_mut() {
                *x = _mm512_mul_ps(*x, al);
            }
        }
    }
    for k in 0..len {
        let vrow = &row(k)[d0..d0 + 16 * NV];
        let v: [__m512; NV] = std::array::from_fn(|i| _mm512_loadu_ps(vrow[16 * i..].as_ptr()));
        for r in 0..R {
            let pr = _mm512_set1_ps(p[r][k]);
            if skips {
                let m: __mmask16 = if keep[r][k] != 0.0 { 0xffff } else { 0 };
                for i in 0..NV {
                    a[r][i] = _mm512_mask3_fmadd_ps(pr, v[i], a[r][i], m);
                }
            } else {
                for i in 0..NV {
                    a[r][i] = _mm512_fmadd_ps(pr, v[i], a[r][i]);
                }
            }
        }
    }
    for r in 0..R {
        let dst = &mut acc[r][d0..d0 + 16 * NV];
        for (v, x) in a[r].iter().enumerate() {
            _mm512_storeu_ps(dst[16 * v..].as_mut_ptr(), *x);
        }
    }
}

/// Lane runs of `L` (then 8, then 1) over the accumulators' d.
#[inline(always)]
fn pv_rows_body<'a, const R: usize, const K: usize, const L: usize>(
    acc: &mut [&mut [f32]; R],
    alpha: Option<[f32; R]>,
    p: &[[f32; K]; R],
    keep: &[[f32; K]; R],
    len: usize,
    row: &impl Fn(usize) -> &'a [f32],
    skips: bool,
) {
    let d = acc.iter().map(|a| a.len()).min().unwrap_or(0);
    let mut d0 = 0;
    while d0 + L <= d {
        pv_rows_run::<R, K, L>(acc, d0, alpha, p, keep, len, row, skips);
        d0 += L;
    }
    while d0 + 8 <= d {
        pv_rows_run::<R, K, 8>(acc, d0, alpha, p, keep, len, row, skips);
        d0 += 8;
    }
    while d0 < d {
        pv_rows_run::<R, K, 1>(acc, d0, alpha, p, keep, len, row, skips);
        d0 += 1;
    }
}

/// One run of `L` lanes of every row: the accumulators in registers, one
/// load of each V row's lanes for all R rows. A skipped key leaves the
/// lane as it is (`select`, not a branch, so the V lanes stay shared).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pv_rows_run<'a, const R: usize, const K: usize, const L: usize>(
    acc: &mut [&mut [f32]; R],
    d0: usize,
    alpha: Option<[f32; R]>,
    p: &[[f32; K]; R],
    keep: &[[f32; K]; R],
    len: usize,
    row: &impl Fn(usize) -> &'a [f32],
    skips: bool,
) {
    let mut a: [[f32; L]; R] =
        std::array::from_fn(|r| acc[r][d0..d0 + L].try_into().expect("L lanes"));
    if let Some(alpha) = alpha {
        for (ar, al) in a.iter_mut().zip(alpha) {
            ar.iter_mut().for_each(|x| *x *= al);
        }
    }
    for k in 0..len {
        let v: [f32; L] = row(k)[d0..d0 + L]
            .try_into()
            .expect("V row shorter than acc");
        for ((ar, p_row), keep_row) in a.iter_mut().zip(p).zip(keep) {
            let pr = p_row[k];
            if skips {
                let kept = keep_row[k] != 0.0;
                for (x, &vd) in ar.iter_mut().zip(&v) {
                    let f = pr.mul_add(vd, *x);
                    *x = if kept { f } else { *x };
                }
            } else {
                for (x, &vd) in ar.iter_mut().zip(&v) {
                    *x = pr.mul_add(vd, *x);
                }
            }
        }
    }
    for (acc_r, ar) in acc.iter_mut().zip(&a) {
        acc_r[d0..d0 + L].copy_from_slice(ar);
    }
}

// ---------------------------------------------------------------- exp2c

/// `out[j] = exp2c(s[j] - m)` for every j (`out.len() >= s.len()`).
#[inline]
pub fn exp2c_shifted(path: SimdPath, s: &[f32], m: f32, out: &mut [f32]) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the features the function enables.
        SimdPath::Avx512 if path.supported() => unsafe { exp2c_avx512(s, m, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        SimdPath::Avx2 if path.supported() => unsafe { exp2c_avx2(s, m, out) },
        _ => {
            for (o, &x) in out.iter_mut().zip(s) {
                *o = exp2c(x - m);
            }
        }
    }
}

/// `out[r][j] = exp2c(s[r][j] - m[r])` for every row r and `j <
/// s[r].len()` (at most K): [`exp2c_shifted`] of R rows in one call.
#[inline]
pub fn exp2c_rows<const R: usize, const K: usize>(
    path: SimdPath,
    s: [&[f32]; R],
    m: [f32; R],
    out: &mut [[f32; K]; R],
) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the features the function enables.
        SimdPath::Avx512 if path.supported() => unsafe {
            for ((s_r, m_r), out_r) in s.iter().zip(m).zip(out.iter_mut()) {
                exp2c_avx512(s_r, m_r, out_r);
            }
        },
        _ => {
            for ((s_r, m_r), out_r) in s.iter().zip(m).zip(out.iter_mut()) {
                exp2c_shifted(path, s_r, m_r, out_r);
            }
        }
    }
}

/// `p[r][j] = exp2c(s[r][j] - m[r])` and `rounded[r][j] = dtype.round(p[r][j])`
/// for every row r and `j < len` (`len <= K`, `s[r].len() >= len`), in one
/// pass over the scores; returns whether some `p[r][j]` is 0 (a key the PV
/// product skips). Bit for bit [`exp2c_rows`] then [`round_into`].
#[inline]
pub fn exp2c_round_rows<const R: usize, const K: usize>(
    path: SimdPath,
    s: [&[f32]; R],
    m: [f32; R],
    len: usize,
    dtype: DType,
    p: &mut [[f32; K]; R],
    rounded: &mut [[f32; K]; R],
) -> bool {
    let len = len.min(K);
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the features the function enables.
        SimdPath::Avx512 if path.supported() && matches!(dtype, DType::Bf16 | DType::F32) => unsafe {
            exp2c_round_avx512(s, m, len, dtype, p, rounded)
        },
        _ => {
            let mut zero = false;
            for r in 0..R {
                exp2c_shifted(path, &s[r][..len], m[r], &mut p[r][..len]);
                round_into(dtype, &p[r][..len], &mut rounded[r][..len]);
                zero |= p[r][..len].contains(&0.0);
            }
            zero
        }
    }
}

/// The zmm lanes of `exp2c(x)` that take its main branch (`fast`:
/// `rint(x)` in [-126, 127]), computed as [`exp2c_body`] does; the other
/// lanes are 0 in the result. Also returns `slow`: the lanes that are
/// neither fast nor below the zero threshold (NaN included), for the
/// caller to compute with `exp2c` itself.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
unsafe fn exp2c_zmm(x: std::arch::x86_64::__m512) -> (std::arch::x86_64::__m512, u16) {
    use std::arch::x86_64::*;
    let (lo, hi, min_x) = (
        _mm512_set1_ps(-126.5),
        _mm512_set1_ps(127.5),
        _mm512_set1_ps(EXP2C_MIN_X),
    );
    // -126.5 <= x < 127.5 (false for NaN).
    let fast = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, lo) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, hi);
    let slow = !fast & !_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, min_x);
    let xc = _mm512_maskz_mov_ps(fast, x);
    let ni = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(xc);
    let f = _mm512_sub_ps(xc, ni);
    let mut p = _mm512_set1_ps(EXP2C_COEFFS[0]);
    for &c in &EXP2C_COEFFS[1..] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    // ni is an integer in [-126, 127] (fast lanes) or 0: exact.
    let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvttps_epi32(ni),
        _mm512_set1_epi32(127),
    ));
    (_mm512_maskz_mul_ps(fast, p, _mm512_castsi512_ps(e)), slow)
}

/// [`exp2c_round_rows`] for bf16 or f32 in zmm registers: the R rows'
/// vectors of 16 keys side by side (independent chains overlap), the
/// tail through masked loads and stores; returns whether a P is 0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn exp2c_round_avx512<const R: usize, const K: usize>(
    s: [&[f32]; R],
    m: [f32; R],
    n: usize,
    dtype: DType,
    p: &mut [[f32; K]; R],
    rounded: &mut [[f32; K]; R],
) -> bool {
    use std::arch::x86_64::*;
    let n = s.iter().map(|x| x.len()).fold(n.min(K), usize::min);
    let mv: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(m[r]));
    let bf16 = dtype == DType::Bf16;
    let (lsb, bias, keep_hi) = (
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0x7fff),
        _mm512_set1_epi32(0xffff_0000u32 as i32),
    );
    let mut zero = false;
    let mut j = 0;
    while j < n {
        let k: __mmask16 = if n - j >= 16 {
            0xffff
        } else {
            (1u16 << (n - j)) - 1
        };
        let mut e = [_mm512_setzero_ps(); R];
        let mut slow = [0u16; R];
        for r in 0..R {
            let x = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, s[r].as_ptr().add(j)), mv[r]);
            let (er, sr) = exp2c_zmm(x);
            e[r] = er;
            slow[r] = sr & k;
        }
        if slow.iter().any(|&x| x != 0) {
            for r in 0..R {
                if slow[r] == 0 {
                    continue;
                }
                let mut lanes = [0.0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), e[r]);
                for (i, l) in lanes.iter_mut().enumerate() {
                    if slow[r] & (1 << i) != 0 {
                        *l = exp2c(s[r][j + i] - m[r]);
                    }
                }
                e[r] = _mm512_loadu_ps(lanes.as_ptr());
            }
        }
        for r in 0..R {
            _mm512_mask_storeu_ps(p[r].as_mut_ptr().add(j), k, e[r]);
            zero |= _mm512_mask_cmp_ps_mask::<_CMP_EQ_OQ>(k, e[r], _mm512_setzero_ps()) != 0;
            let out = rounded[r].as_mut_ptr().add(j);
            if !bf16 {
                _mm512_mask_storeu_ps(out, k, e[r]);
                continue;
            }
            // `bf16_bits`; a NaN lane goes through `DType::round` itself.
            let b = _mm512_castps_si512(e[r]);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), lsb);
            let up = _mm512_and_si512(_mm512_add_epi32(b, _mm512_add_epi32(bias, odd)), keep_hi);
            _mm512_mask_storeu_ps(out, k, _mm512_castsi512_ps(up));
            let nan = _mm512_mask_cmp_ps_mask::<_CMP_UNORD_Q>(k, e[r], e[r]);
            if nan != 0 {
                for i in 0..16 {
                    if nan & (1 << i) != 0 {
                        rounded[r][j + i] = dtype.round(p[r][j + i]);
                    }
                }
            }
        }
        j += 16;
    }
    zero
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp2c_avx2(s: &[f32], m: f32, out: &mut [f32]) {
    exp2c_body::<8>(s, m, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn exp2c_avx512(s: &[f32], m: f32, out: &mut [f32]) {
    // `exp2c_body::<16>` spelled in zmm registers (LLVM left that body's
    // lanes scalar): the same operations lane by lane.
    use std::arch::x86_64::*;
    let n = s.len().min(out.len());
    let mv = _mm512_set1_ps(m);
    let (lo, hi, min_x) = (
        _mm512_set1_ps(-126.5),
        _mm512_set1_ps(127.5),
        _mm512_set1_ps(EXP2C_MIN_X),
    );
    let bias = _mm512_set1_epi32(127);
    let mut j = 0;
    while j + 16 <= n {
        let x = _mm512_sub_ps(_mm512_loadu_ps(s[j..].as_ptr()), mv);
        // -126.5 <= x < 127.5 (false for NaN).
        let fast =
            _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, lo) & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, hi);
        // Neither fast nor below the zero threshold (NaN included).
        let slow = !fast & !_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, min_x);
        let xc = _mm512_maskz_mov_ps(fast, x);
        let ni = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(xc);
        let f = _mm512_sub_ps(xc, ni);
        let mut p = _mm512_set1_ps(EXP2C_COEFFS[0]);
        for &c in &EXP2C_COEFFS[1..] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        // ni is an integer in [-126, 127] (fast lanes) or 0: exact.
        let e = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvttps_epi32(ni), bias));
        let r = _mm512_maskz_mul_ps(fast, p, _mm512_castsi512_ps(e));
        _mm512_storeu_ps(out[j..].as_mut_ptr(), r);
        if slow != 0 {
            for i in 0..16 {
                if slow & (1 << i) != 0 {
                    out[j + i] = exp2c(s[j + i] - m);
                }
            }
        }
        j += 16;
    }
    for (o, &x) in out[j..n].iter_mut().zip(&s[j..n]) {
        *o = exp2c(x - m);
    }
}

/// Lanes whose `n = rint(x)` is in [-126, 127] take `exp2c`'s main branch
/// without branching (`p * 2^n`, the same operations); x < -150 (and -inf)
/// is 0 as in `exp2c`; every other lane (NaN, x >= 127.5, the subnormal
/// range) calls `exp2c` itself.
#[inline(always)]
fn exp2c_body<const L: usize>(s: &[f32], m: f32, out: &mut [f32]) {
    let n = s.len();
    let mut j = 0;
    while j + L <= n {
        let x: [f32; L] = std::array::from_fn(|i| s[j + i] - m);
        let mut r = [0.0f32; L];
        let mut slow = false;
        for i in 0..L {
            let xi = x[i];
            let fast = (-126.5..127.5).contains(&xi);
            // Neither fast nor below the zero threshold (NaN included).
            slow |= !fast & (xi.partial_cmp(&EXP2C_MIN_X) != Some(std::cmp::Ordering::Less));
            let xc = if fast { xi } else { 0.0 };
            let ni = xc.round_ties_even();
            let f = xc - ni;
            let mut p = EXP2C_COEFFS[0];
            for &c in &EXP2C_COEFFS[1..] {
                p = p.mul_add(f, c);
            }
            // SAFETY: ni is an integer in [-126, 127] (fast lanes) or 0, so
            // the unchecked cast is exact and vectorises (`as` saturates
            // lane by lane in scalar code).
            let ni = unsafe { ni.to_int_unchecked::<i32>() };
            let e = f32::from_bits(((ni + 127) as u32) << 23);
            r[i] = if fast { p * e } else { 0.0 };
        }
        if slow {
            for i in 0..L {
                if !(-126.5..127.5).contains(&x[i]) {
                    r[i] = exp2c(x[i]);
                }
            }
        }
        out[j..j + L].copy_from_slice(&r);
        j += L;
    }
    for (o, &x) in out[j..n].iter_mut().zip(&s[j..]) {
        *o = exp2c(x - m);
    }
}

// ---------------------------------------------------------------- step in lanes

/// Keys of a tile [`softmax_step16`] takes at most (the size of its stack
/// buffers); a longer tile goes the row-by-row way.
pub const LANE_STEP_MAX_KEYS: usize = 256;

/// The online-softmax step of softmax.rs's module doc, lines `m_new` to
/// `m_i = m_new`, for 16 rows at once with the rows on the 16 lanes of an
/// AVX-512 register (keys one after another): row r's scores are
/// `s[r * stride..][..n]`, its state `(m[r], l[r], acc[r])`; `value(j)`
/// is V row j (at least `d = acc[r].len()` long). Per row the same
/// operations in the same order as `online_softmax_step`: the tile max is
/// the largest non-NaN score (a zero max is recomputed by the fold, whose
/// order decides its sign), `m_new = max(m, tile max)` and `alpha` in
/// scalar code, `P = exp2c(S - m_ref)` lane by lane (the slow lanes by
/// `exp2c` itself), the row sum `((0 + P_0) + P_1) + ...` as one vector
/// add per key in ascending order, P rounded to bf16 (or kept, f32), then
/// `acc = acc * alpha` and `acc = fma(round(P_k), V_k, acc)` over k
/// ascending, a key with `P_k == 0` skipped by the fma's mask. Returns
/// false (and changes nothing) where it does not apply: another dtype,
/// more than [`LANE_STEP_MAX_KEYS`] keys, or a head size that is not a
/// multiple of 16.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn softmax_step16<'a>(
    path: SimdPath,
    s: &[f32],
    stride: usize,
    n: usize,
    m: &mut [f32; 16],
    l: &mut [f32; 16],
    acc: &mut [&mut [f32]; 16],
    value: &impl Fn(usize) -> &'a [f32],
    dtype: DType,
) -> bool {
    let d = acc[0].len();
    let fits = n <= LANE_STEP_MAX_KEYS
        && matches!(dtype, DType::Bf16 | DType::F32)
        && d.is_multiple_of(16)
        && acc.iter().all(|a| a.len() == d)
        && (n == 0 || (15 * stride + n <= s.len() && (0..n).all(|j| value(j).len() >= d)));
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked the features the function enables;
        // `fits` checked every length the function reads or writes.
        SimdPath::Avx512 if fits && path.supported() => unsafe {
            step16_avx512(s, stride, n, m, l, acc, value, dtype == DType::Bf16);
            true
        },
        _ => false,
    }
}

/// `out[4k + c]` = column `4k + c` of the 16 rows `r` (an in-register
/// 16x16 transpose: unpack, shuffle, two 128-bit lane shuffles; data
/// movement only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
unsafe fn transpose16(r: &[std::arch::x86_64::__m512; 16]) -> [std::arch::x86_64::__m512; 16] {
    use std::arch::x86_64::*;
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4g + c], 128-bit lane k: rows 4g..4g+4 of column 4k + c.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, v1);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v0, v1);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(w0, w1);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(w0, w1);
    }
    out
}

/// [`softmax_step16`] in AVX-512 registers (its checks done).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)] // registers indexed by row, vector and lane
unsafe fn step16_avx512<'a>(
    s: &[f32],
    stride: usize,
    n: usize,
    m: &mut [f32; 16],
    l: &mut [f32; 16],
    acc: &mut [&mut [f32]; 16],
    value: &impl Fn(usize) -> &'a [f32],
    bf16: bool,
) {
    use std::arch::x86_64::*;
    // Scores, then round(P), key-major: pt[16 * j + r] (only keys j < n
    // are written, each before it is read).
    let mut pt = std::mem::MaybeUninit::<[f32; 16 * LANE_STEP_MAX_KEYS]>::uninit();
    // Bit r of keep[j]: row r's P_j is not 0 (its fma runs).
    let mut keep = [0u16; LANE_STEP_MAX_KEYS];
    let sp = s.as_ptr();
    let ptp = pt.as_mut_ptr() as *mut f32;
    let mut tmax = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut j0 = 0;
    while j0 < n {
        let k: __mmask16 = if n - j0 >= 16 {
            0xffff
        } else {
            (1u16 << (n - j0)) - 1
        };
        let rows: [__m512; 16] =
            std::array::from_fn(|r| _mm512_maskz_loadu_ps(k, sp.add(r * stride + j0)));
        let cols = transpose16(&rows);
        for (c, &col) in cols.iter().enumerate().take((n - j0).min(16)) {
            // (x > max) ? x : max: a NaN score leaves the max.
            tmax = _mm512_max_ps(col, tmax);
            _mm512_storeu_ps(ptp.add(16 * (j0 + c)), col);
        }
        j0 += 16;
    }
    let mut tm = [0.0f32; 16];
    _mm512_storeu_ps(tm.as_mut_ptr(), tmax);
    let mut m_ref = [0.0f32; 16];
    let mut alpha = [0.0f32; 16];
    let m_i = *m;
    for r in 0..16 {
        // fold_max: a zero max takes the sign the ascending fold gives it.
        let t = if tm[r] == 0.0 {
            s[r * stride..r * stride + n]
                .iter()
                .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
        } else {
            tm[r]
        };
        let m_new = m_i[r].max(t);
        m_ref[r] = if m_new > f32::NEG_INFINITY {
            m_new
        } else {
            0.0
        };
        alpha[r] = exp2c(m_i[r] - m_ref[r]);
        m[r] = m_new;
    }
    let mref = _mm512_loadu_ps(m_ref.as_ptr());
    let (lsb, bias, keep_hi) = (
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0x7fff),
        _mm512_set1_epi32(0xffff_0000u32 as i32),
    );
    let mut sum = _mm512_setzero_ps();
    let mut skips = false;
    for j in 0..n {
        let x = _mm512_sub_ps(_mm512_loadu_ps(ptp.add(16 * j)), mref);
        let (mut p, slow) = exp2c_zmm(x);
        if slow != 0 {
            let mut xs = [0.0f32; 16];
            let mut ps = [0.0f32; 16];
            _mm512_storeu_ps(xs.as_mut_ptr(), x);
            _mm512_storeu_ps(ps.as_mut_ptr(), p);
            for i in 0..16 {
                if slow & (1 << i) != 0 {
                    ps[i] = exp2c(xs[i]);
                }
            }
            p = _mm512_loadu_ps(ps.as_ptr());
        }
        sum = _mm512_add_ps(sum, p);
        let kept = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(p, _mm512_setzero_ps());
        keep[j] = kept;
        skips |= kept != 0xffff;
        let out = ptp.add(16 * j);
        if !bf16 {
            _mm512_storeu_ps(out, p);
            continue;
        }
        // `bf16_bits`; a NaN lane goes through `DType::round` itself.
        let b = _mm512_castps_si512(p);
        let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), lsb);
        let up = _mm512_and_si512(_mm512_add_epi32(b, _mm512_add_epi32(bias, odd)), keep_hi);
        _mm512_storeu_ps(out, _mm512_castsi512_ps(up));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(p, p);
        if nan != 0 {
            let mut ps = [0.0f32; 16];
            _mm512_storeu_ps(ps.as_mut_ptr(), p);
            for i in 0..16 {
                if nan & (1 << i) != 0 {
                    *out.add(i) = DType::Bf16.round(ps[i]);
                }
            }
        }
    }
    let mut rowsum = [0.0f32; 16];
    _mm512_storeu_ps(rowsum.as_mut_ptr(), sum);
    for r in 0..16 {
        // l_i = fma(l_i, alpha, rowsum(P_ij))
        l[r] = l[r].mul_add(alpha[r], rowsum[r]);
    }
    let d = acc[0].len();
    if n == 0 {
        for (a, al) in acc.iter_mut().zip(alpha) {
            scale(a, al);
        }
        return;
    }
    let mut vp = [std::ptr::null::<f32>(); LANE_STEP_MAX_KEYS];
    for (j, v) in vp.iter_mut().enumerate().take(n) {
        *v = value(j).as_ptr();
    }
    for g in 0..2 {
        let rows: [*mut f32; 8] = std::array::from_fn(|r| acc[8 * g + r].as_mut_ptr());
        let al: [f32; 8] = std::array::from_fn(|r| alpha[8 * g + r]);
        let pg = ptp.add(8 * g) as *const f32;
        let mut d0 = 0;
        while d0 + 32 <= d {
            pv_lanes::<2>(rows, d0, al, pg, &keep, 8 * g, n, &vp, skips);
            d0 += 32;
        }
        if d0 < d {
            pv_lanes::<1>(rows, d0, al, pg, &keep, 8 * g, n, &vp, skips);
        }
    }
}

/// 8 rows x `16 * NV` lanes of [`step16_avx512`]'s PV: `acc = acc *
/// alpha`, then for each key k ascending `acc = fma(P[k][r], V_k, acc)`
/// (P broadcast from the key-major `p[16 * k + r]`), masked off where bit
/// `r0 + r` of `keep[k]` is clear.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::needless_range_loop)] // registers indexed by row, vector and lane
unsafe fn pv_lanes<const NV: usize>(
    rows: [*mut f32; 8],
    d0: usize,
    alpha: [f32; 8],
    p: *const f32,
    keep: &[u16; LANE_STEP_MAX_KEYS],
    r0: usize,
    n: usize,
    vp: &[*const f32; LANE_STEP_MAX_KEYS],
    skips: bool,
) {
    use std::arch::x86_64::*;
    let mut a: [[__m512; NV]; 8] = [[_mm512_setzero_ps(); NV]; 8];
    for r in 0..8 {
        let al = _mm512_set1_ps(alpha[r]);
        for v in 0..NV {
            a[r][v] = _mm512_mul_ps(_mm512_loadu_ps(rows[r].add(d0 + 16 * v)), al);
        }
    }
    if skips {
        for k in 0..n {
            let vk = vp[k].add(d0);
            let v: [__m512; NV] = std::array::from_fn(|i| _mm512_loadu_ps(vk.add(16 * i)));
            let kk = keep[k] >> r0;
            for r in 0..8 {
                let pr = _mm512_set1_ps(*p.add(16 * k + r));
                let mk: __mmask16 = ((kk >> r) & 1).wrapping_neg();
                for i in 0..NV {
                    a[r][i] = _mm512_mask3_fmadd_ps(pr, v[i], a[r][i], mk);
                }
            }
        }
    } else {
        for k in 0..n {
            let vk = vp[k].add(d0);
            let v: [__m512; NV] = std::array::from_fn(|i| _mm512_loadu_ps(vk.add(16 * i)));
            for r in 0..8 {
                let pr = _mm512_set1_ps(*p.add(16 * k + r));
                for i in 0..NV {
                    a[r][i] = _mm512_fmadd_ps(pr, v[i], a[r][i]);
                }
            }
        }
    }
    for r in 0..8 {
        for v in 0..NV {
            _mm512_storeu_ps(rows[r].add(d0 + 16 * v), a[r][v]);
        }
    }
}

// ---------------------------------------------------------------- K^T gather

/// Eight keys of K into a transposed tile, unchanged (a pure copy: every
/// path gives the same bits): for each dim block `b` of 8 dims whose
/// offsets `koff[8b..8b+8]` are consecutive, `dst[(8b + c) * tile + j0 + i]
/// = src[bases[i] + koff[8b] + c]`. Returns how many leading dims it
/// copied (whole blocks, stopping at the first non-consecutive one); the
/// caller copies the rest.
#[inline]
pub fn gather_kt8(
    path: SimdPath,
    src: &[f32],
    bases: &[usize; 8],
    koff: &[usize],
    dst: &mut [f32],
    tile: usize,
    j0: usize,
) -> usize {
    let blocks = koff
        .chunks_exact(8)
        .take_while(|c| c.iter().enumerate().all(|(i, &o)| o == c[0] + i))
        .count();
    // Bounds, once: every source run and every destination run in range.
    let ok = bases.iter().all(|&b| {
        koff.chunks_exact(8)
            .take(blocks)
            .all(|c| b + c[0] + 8 <= src.len())
    }) && (blocks == 0 || (8 * blocks - 1) * tile + j0 + 8 <= dst.len());
    if !ok {
        return 0;
    }
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX is part of both paths' features, checked by
        // `supported()`; every index was bounds-checked above.
        SimdPath::Avx2 | SimdPath::Avx512 if path.supported() => unsafe {
            kt8_avx(src, bases, koff, blocks, dst, tile, j0)
        },
        _ => {
            for (b, c) in koff.chunks_exact(8).take(blocks).enumerate() {
                for cc in 0..8 {
                    for (i, &base) in bases.iter().enumerate() {
                        dst[(8 * b + cc) * tile + j0 + i] = src[base + c[0] + cc];
                    }
                }
            }
        }
    }
    8 * blocks
}

/// The 8x8 transposes of [`gather_kt8`] in AVX registers (unpack, shuffle,
/// 128-bit permute: data movement only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kt8_avx(
    src: &[f32],
    bases: &[usize; 8],
    koff: &[usize],
    blocks: usize,
    dst: &mut [f32],
    tile: usize,
    j0: usize,
) {
    use std::arch::x86_64::*;
    let sp = src.as_ptr();
    let dp = dst.as_mut_ptr();
    for b in 0..blocks {
        let o = koff[8 * b];
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(sp.add(bases[i] + o)));
        for (cc, v) in transpose8x8(r).into_iter().enumerate() {
            _mm256_storeu_ps(dp.add((8 * b + cc) * tile + j0), v);
        }
    }
}

/// `out[c][i] = r[i][c]`: an 8x8 transpose in AVX registers (unpack,
/// shuffle, 128-bit permute: data movement only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn transpose8x8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

// ---------------------------------------------------------------- V gather

/// Eight keys of V into row-major tile rows, unchanged (a pure copy: every
/// path gives the same bits), for a layout that stores a dim's values of
/// the eight keys contiguously (x-packed and shuffled V): key i, dim dd
/// is `src[base + i + voff[dd]]`, copied to `dst[(j0 + i) * d + dd]`.
/// Copies whole blocks of 8 dims through 8x8 transposes and returns how
/// many leading dims it copied (`d - d % 8`, or 0 when the portable path
/// runs or a bound fails); the caller copies the rest.
#[inline]
pub fn gather_v8(
    path: SimdPath,
    src: &[f32],
    base: usize,
    voff: &[usize],
    dst: &mut [f32],
    d: usize,
    j0: usize,
) -> usize {
    let blocks = voff.len().min(d) / 8;
    let ok = voff[..8 * blocks]
        .iter()
        .all(|&o| base + o + 8 <= src.len())
        && (j0 + 8) * d <= dst.len();
    if !ok || blocks == 0 {
        return 0;
    }
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX is part of both paths' features, checked by
        // `supported()`; every index was bounds-checked above.
        SimdPath::Avx2 | SimdPath::Avx512 if path.supported() => unsafe {
            v8_avx(src, base, voff, blocks, dst, d, j0);
            8 * blocks
        },
        _ => 0,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn v8_avx(
    src: &[f32],
    base: usize,
    voff: &[usize],
    blocks: usize,
    dst: &mut [f32],
    d: usize,
    j0: usize,
) {
    use std::arch::x86_64::*;
    let sp = src.as_ptr();
    let dp = dst.as_mut_ptr();
    for b in 0..blocks {
        // r[c]: the eight keys of dim 8b + c.
        let r: [__m256; 8] =
            std::array::from_fn(|c| _mm256_loadu_ps(sp.add(base + voff[8 * b + c])));
        for (i, v) in transpose8x8(r).into_iter().enumerate() {
            _mm256_storeu_ps(dp.add((j0 + i) * d + 8 * b), v);
        }
    }
}

// ---------------------------------------------------------------- prefetch

/// Asks the CPU to bring the cache lines of `xs[start..start + len]`
/// (clamped to `xs`) into its caches: a hint that changes no value.
#[inline]
pub fn prefetch(xs: &[f32], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = start.saturating_add(len).min(xs.len());
        let mut i = start;
        while i < end {
            // SAFETY: a prefetch reads nothing architecturally; the
            // address is inside `xs` (SSE is part of x86_64's baseline).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(xs.as_ptr().add(i) as *const i8) };
            i += 16; // one 64-byte line of f32
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xs, start, len);
}

// ---------------------------------------------------------------- wave reduce

/// Lane 0 of the xor butterfly over `lanes` (offsets W/2, ..., 1; lane l
/// takes `op(lane l, lane l ^ offset)`), which `numerics::wave_butterfly`
/// returns: only the lanes lane 0 depends on are computed (at offset o,
/// lanes l < o take `op(lane l, lane l + o)`, the same operands in the same
/// order), in place and without allocating. `lanes.len()` is a power of
/// two; the other lanes are left as scratch.
#[inline]
pub fn butterfly_lane0(lanes: &mut [f32], op: impl Fn(f32, f32) -> f32) -> f32 {
    debug_assert!(lanes.len().is_power_of_two());
    let mut o = lanes.len() / 2;
    while o >= 1 {
        let (lo, hi) = lanes.split_at_mut(o);
        for (a, &b) in lo.iter_mut().zip(&hi[..o]) {
            *a = op(*a, b);
        }
        o /= 2;
    }
    lanes[0]
}

// ---------------------------------------------------------------- max

/// `xs.iter().fold(-inf, |a, &b| a.max(b))`, bit for bit, without the
/// serial chain: `f32::max` skips NaN, so the fold is the largest non-NaN
/// value (-inf if none), which has one bit pattern unless it is zero; 16
/// independent lane maxima find it, and a zero result (whose sign the fold's
/// order decides) is recomputed by the fold itself.
#[inline]
pub fn fold_max(xs: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [f32::NEG_INFINITY; L];
    let mut chunks = xs.chunks_exact(L);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    for (a, &x) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if x > *a { x } else { *a };
    }
    // Halving tree over the lanes (the order only matters for a zero).
    let mut w = L / 2;
    while w > 0 {
        for i in 0..w {
            acc[i] = if acc[i + w] > acc[i] {
                acc[i + w]
            } else {
                acc[i]
            };
        }
        w /= 2;
    }
    let m = acc[0];
    if m == 0.0 {
        return xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    }
    m
}

// ---------------------------------------------------------------- rounding

/// `dst[i] = dtype.round(src[i])` for every i ([`round_slice`] into
/// another buffer; `dst.len() == src.len()`).
#[inline]
pub fn round_into(dtype: DType, src: &[f32], dst: &mut [f32]) {
    if dtype == DType::Bf16 {
        // One pass, branch-free (vectorises): see `bf16_bits`.
        let mut nan = false;
        for (d, &x) in dst.iter_mut().zip(src) {
            let (r, is_nan) = bf16_bits(x);
            *d = r;
            nan |= is_nan;
        }
        if nan {
            for (d, &x) in dst.iter_mut().zip(src) {
                if x.is_nan() {
                    *d = dtype.round(x);
                }
            }
        }
        return;
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x;
    }
    round_slice(dtype, dst);
}

/// bf16 round to nearest even of a non-NaN `x` in integer arithmetic
/// (`(x + 0x7fff + lsb) & 0xffff0000`, a carry into the exponent giving
/// inf exactly where it should), and whether `x` is NaN (then `x` itself
/// comes back, for the caller to round with `DType::round`). Integer
/// compares only, so loops over it vectorise.
#[inline(always)]
fn bf16_bits(x: f32) -> (f32, bool) {
    let b = x.to_bits();
    let is_nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    (f32::from_bits(if is_nan { b } else { r }), is_nan)
}

/// `xs[i] = dtype.round(xs[i])` for every i. bf16 rounds to nearest even in
/// plain integer arithmetic (the same bits as `half::bf16::from_f32` for
/// every non-NaN value: `(x + 0x7fff + lsb) & 0xffff0000`, a carry into the
/// exponent giving inf exactly where it should); NaN lanes and the other
/// dtypes go through `DType::round` itself.
#[inline]
pub fn round_slice(dtype: DType, xs: &mut [f32]) {
    match dtype {
        DType::F32 => {}
        DType::Bf16 => {
            let mut nan = false;
            for x in xs.iter_mut() {
                let (r, is_nan) = bf16_bits(*x);
                nan |= is_nan;
                *x = r;
            }
            if nan {
                xs.iter_mut()
                    .filter(|x| x.is_nan())
                    .for_each(|x| *x = dtype.round(*x));
            }
        }
        _ => xs.iter_mut().for_each(|x| *x = dtype.round(*x)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// Values that reach every branch of `exp2c`: NaN, +-inf, the overflow
    /// and subnormal ranges, the boundaries of the vector lanes' range,
    /// signed zeros, and a sweep.
    fn exp_inputs() -> Vec<f32> {
        let mut v = vec![
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            127.49,
            127.5,
            127.99,
            128.0,
            -126.5,
            -126.51,
            -127.0,
            -149.9,
            -150.0,
            -150.1,
            -14427.0,
            f32::MIN,
            f32::MAX,
        ];
        let mut x = -160.0f32;
        while x < 130.0 {
            v.push(x);
            x += 0.173;
        }
        v
    }

    #[test]
    fn k_transpose_gather_is_a_copy_on_every_path() {
        // 8 keys of 40 dims each at scattered bases; dims 0..16 in two
        // consecutive runs, then a strided run the caller must finish.
        let src: Vec<f32> = (0..4000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let bases = [0, 900, 130, 2200, 47, 3100, 1500, 611];
        let koff: Vec<usize> = (0..16).chain((0..24).map(|i| 16 + 3 * i)).collect();
        let (tile, j0) = (24, 8);
        for path in SimdPath::available() {
            let mut dst = vec![f32::NAN; 40 * tile];
            let done = gather_kt8(path, &src, &bases, &koff, &mut dst, tile, j0);
            assert_eq!(done, 16, "{}", path.name());
            for dd in 0..done {
                for (i, &b) in bases.iter().enumerate() {
                    assert_eq!(
                        dst[dd * tile + j0 + i],
                        src[b + koff[dd]],
                        "{}",
                        path.name()
                    );
                }
            }
            assert!(dst[16 * tile..].iter().all(|x| x.is_nan()), "past the runs");
        }
    }

    #[test]
    fn v_transpose_gather_is_a_copy_on_every_path() {
        // Eight consecutive keys per dim at scattered dim offsets; d = 43
        // leaves 3 dims for the caller.
        let src: Vec<f32> = (0..6000).map(|i| i as f32 * 0.25 - 3.0).collect();
        let d = 43;
        let voff: Vec<usize> = (0..d).map(|dd| (dd * 131) % 5000).collect();
        let (base, j0) = (17, 2);
        for path in SimdPath::available() {
            let mut dst = vec![f32::NAN; 12 * d];
            let done = gather_v8(path, &src, base, &voff, &mut dst, d, j0);
            let want = if path == SimdPath::Portable { 0 } else { 40 };
            assert_eq!(done, want, "{}", path.name());
            for i in 0..8 {
                for dd in 0..done {
                    assert_eq!(
                        dst[(j0 + i) * d + dd],
                        src[base + i + voff[dd]],
                        "{}",
                        path.name()
                    );
                }
                assert!(dst[(j0 + i) * d + done..(j0 + i + 1) * d]
                    .iter()
                    .all(|x| x.is_nan()));
            }
            assert!(dst[..j0 * d]
                .iter()
                .chain(&dst[(j0 + 8) * d..])
                .all(|x| x.is_nan()));
        }
        // Out of bounds: nothing copied.
        let mut dst = vec![0.0; 12 * d];
        assert_eq!(
            gather_v8(
                SimdPath::active(),
                &src[..100],
                base,
                &voff,
                &mut dst,
                d,
                j0
            ),
            0
        );
    }

    #[test]
    fn butterfly_lane0_is_the_wave_butterflys_result_bit_for_bit() {
        let xs = exp_inputs();
        for w in [1usize, 2, 32, 64] {
            for start in (0..xs.len() - w).step_by(7) {
                let mut a = xs[start..start + w].to_vec();
                let mut b = a.clone();
                let add = |x: f32, y: f32| x + y;
                assert_eq!(
                    butterfly_lane0(&mut a, add).to_bits(),
                    crate::numerics::wave_butterfly(&mut b, add).to_bits(),
                    "sum of {w} from {start}"
                );
                let mut a = xs[start..start + w].to_vec();
                let mut b = a.clone();
                assert_eq!(
                    butterfly_lane0(&mut a, f32::max).to_bits(),
                    crate::numerics::wave_butterfly(&mut b, f32::max).to_bits(),
                    "max of {w} from {start}"
                );
            }
        }
    }

    #[test]
    fn fold_max_is_the_sequential_fold_bit_for_bit() {
        let fold = |xs: &[f32]| xs.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut cases: Vec<Vec<f32>> = vec![
            vec![],
            vec![f32::NAN; 20],
            vec![0.0, -0.0, f32::NAN, -1.0],
            vec![-0.0, 0.0],
            vec![-0.0; 33],
            vec![f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY],
            vec![f32::INFINITY, f32::NAN],
        ];
        let xs = exp_inputs();
        for n in [1, 15, 16, 17, 40, xs.len()] {
            cases.push(xs[..n].to_vec());
            cases.push(xs[xs.len() - n..].iter().map(|x| -x).collect());
        }
        for c in &cases {
            assert_eq!(fold_max(c).to_bits(), fold(c).to_bits(), "{c:?}");
        }
    }

    #[test]
    fn bf16_slice_rounding_is_dtype_round_bit_for_bit() {
        let mut xs = exp_inputs();
        // Ties, near-ties, the largest finite values, subnormals, NaN payloads.
        for b in [
            0x3f80_8000u32,
            0x3f81_8000,
            0x3f80_8001,
            0x3f80_7fff,
            0x7f7f_ffff,
            0x7f7f_7fff,
            0x7f7f_8000,
            0xff7f_8000,
            0x0000_8000,
            0x0001_8000,
            0x8000_8001,
            0x7fc0_0001,
            0x7f80_0001,
            0xffc1_2345,
        ] {
            xs.push(f32::from_bits(b));
        }
        xs.extend((0..20000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        let want: Vec<u32> = xs.iter().map(|&x| DType::Bf16.round(x).to_bits()).collect();
        round_slice(DType::Bf16, &mut xs);
        assert_eq!(bits(&xs), want);
    }

    #[test]
    fn pv_rows_is_every_rows_own_chain_with_its_own_skips_on_every_path() {
        const K: usize = 64;
        let (d, keys) = (67, 45); // d not a multiple of any lane run
                                  // V rows with an inf and a NaN, so a key wrongly not skipped shows.
        let mut v: Vec<f32> = (0..keys * d).map(|i| (i as f32 * 0.051).cos()).collect();
        v[3 * d + 5] = f32::INFINITY;
        v[7 * d + 60] = f32::NAN;
        for skipping in [false, true] {
            let mut keep = [[0.0f32; K]; 4];
            let mut p = [[0.0f32; K]; 4];
            for r in 0..4 {
                for k in 0..keys {
                    let raw = ((k * 3 + r) as f32 * 0.7).sin().abs() + 0.01;
                    // Row r skips keys 3 and 7 (and r's own ones) when skipping.
                    let skip = skipping && (k == 3 || k == 7 || (k + r) % 5 == 0);
                    keep[r][k] = if skip { 0.0 } else { raw };
                    p[r][k] = DType::Bf16.round(keep[r][k]);
                }
            }
            let init: Vec<Vec<f32>> = (0..4)
                .map(|r| (0..d).map(|i| (i + r) as f32 * -0.01).collect())
                .collect();
            let mut want = init.clone();
            for (r, w) in want.iter_mut().enumerate() {
                for k in (0..keys).filter(|&k| keep[r][k] != 0.0) {
                    for (i, x) in w.iter_mut().enumerate() {
                        *x = p[r][k].mul_add(v[k * d + i], *x);
                    }
                }
            }
            for path in SimdPath::available() {
                let mut got = init.clone();
                let mut it = got.iter_mut();
                let mut acc: [&mut [f32]; 4] =
                    std::array::from_fn(|_| it.next().unwrap().as_mut_slice());
                pv_rows(path, &mut acc, &p, &keep, keys, |k| &v[k * d..(k + 1) * d]);
                for r in 0..4 {
                    assert_eq!(bits(&got[r]), bits(&want[r]), "{} row {r}", path.name());
                }
            }
        }
    }

    #[test]
    fn pv_rows_of_one_four_and_eight_rows_are_each_rows_chain_on_every_path() {
        // `scaled`: pv_rows_scaled, whose rows first take `acc * alpha[r]`.
        fn check<const R: usize>(skipping: bool, scaled: bool) {
            const K: usize = 64;
            let (d, keys) = (131, 37); // d: 4 x 32 lanes + a 3-lane tail
            let v: Vec<f32> = (0..keys * d).map(|i| (i as f32 * 0.033).sin()).collect();
            let mut keep = [[0.0f32; K]; R];
            let mut p = [[0.0f32; K]; R];
            for r in 0..R {
                for k in 0..keys {
                    let raw = ((k * 5 + r) as f32 * 0.3).cos().abs() + 0.01;
                    let skip = skipping && (k + 2 * r) % 7 == 0;
                    keep[r][k] = if skip { 0.0 } else { raw };
                    p[r][k] = DType::Bf16.round(keep[r][k]);
                }
            }
            let init: Vec<Vec<f32>> = (0..R)
                .map(|r| (0..d).map(|i| (i * 3 + r) as f32 * -0.02).collect())
                .collect();
            let alpha: Option<[f32; R]> =
                scaled.then(|| std::array::from_fn(|r| 0.7 - r as f32 * 0.137));
            let mut want = init.clone();
            for (r, w) in want.iter_mut().enumerate() {
                if let Some(alpha) = alpha {
                    scale(w, alpha[r]);
                }
                for k in (0..keys).filter(|&k| keep[r][k] != 0.0) {
                    for (i, x) in w.iter_mut().enumerate() {
                        *x = p[r][k].mul_add(v[k * d + i], *x);
                    }
                }
            }
            for path in SimdPath::available() {
                let mut got = init.clone();
                let mut it = got.iter_mut();
                let mut acc: [&mut [f32]; R] =
                    std::array::from_fn(|_| it.next().unwrap().as_mut_slice());
                pv_rows_scaled(path, &mut acc, alpha, &p, &keep, keys, |k| {
                    &v[k * d..(k + 1) * d]
                });
                for r in 0..R {
                    assert_eq!(
                        bits(&got[r]),
                        bits(&want[r]),
                        "{} R={R} row {r} scaled {scaled}",
                        path.name()
                    );
                }
            }
        }
        for skipping in [false, true] {
            for scaled in [false, true] {
                check::<1>(skipping, scaled);
                check::<4>(skipping, scaled);
                check::<8>(skipping, scaled);
            }
        }
    }

    #[test]
    fn update_rows_gives_the_same_bits_on_every_path() {
        use crate::kernels::softmax::RowState;
        // 13 rows (an 8-row block, a 4-row block, a single row), 150 keys
        // (two passes of the P buffers), d = 72; masked keys and a NaN-free
        // spread of scores, in f16 and bf16 P.
        let (rows, n, d) = (13, 150, 72);
        let v: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.071).cos()).collect();
        let scores: Vec<f32> = (0..rows * n)
            .map(|i| match i % 11 {
                3 => f32::NEG_INFINITY,
                _ => ((i * 7) as f32 * 0.013).sin() * 9.0,
            })
            .collect();
        for dtype in [DType::Bf16, DType::F16, DType::F32] {
            let run = |path: Option<SimdPath>| {
                SimdPath::force(path);
                let mut st: Vec<RowState> = (0..rows)
                    .map(|r| RowState::new(d, (r % 3 == 0).then_some(0.5)))
                    .collect();
                // Two tiles: the second rescales the first's accumulators.
                for _ in 0..2 {
                    RowState::update_rows(
                        &mut st,
                        &scores,
                        n,
                        n,
                        |j| &v[j * d..(j + 1) * d],
                        dtype,
                    );
                }
                SimdPath::force(None);
                st.iter()
                    .flat_map(|s| {
                        [s.m.to_bits(), s.l.to_bits()]
                            .into_iter()
                            .chain(bits(&s.acc))
                    })
                    .collect::<Vec<u32>>()
            };
            let portable = run(Some(SimdPath::Portable));
            // Each row alone, one-row steps: the definition.
            let mut one: Vec<RowState> = (0..rows)
                .map(|r| RowState::new(d, (r % 3 == 0).then_some(0.5)))
                .collect();
            for _ in 0..2 {
                for (r, st) in one.iter_mut().enumerate() {
                    st.update(
                        &scores[r * n..(r + 1) * n],
                        |j| &v[j * d..(j + 1) * d],
                        dtype,
                    );
                }
            }
            let want: Vec<u32> = one
                .iter()
                .flat_map(|s| {
                    [s.m.to_bits(), s.l.to_bits()]
                        .into_iter()
                        .chain(bits(&s.acc))
                })
                .collect();
            assert_eq!(portable, want, "portable {dtype:?}");
            for path in SimdPath::available() {
                assert_eq!(run(Some(path)), want, "{} {dtype:?}", path.name());
            }
        }
    }

    #[test]
    fn sixteen_row_lane_steps_are_each_rows_own_step_on_every_path() {
        use crate::kernels::softmax::RowState;
        // 37 rows (two 16-row lane blocks, then 5 rows the other way),
        // tiles of every length class (empty, one partial vector, whole
        // vectors with a tail, the lane step's limit and past it), head
        // sizes with 32-lane runs, a 16-lane run, and one the lane step
        // leaves to the row blocks; scores through every branch: NaN,
        // +-inf, rows entirely masked, signed zero maxima, and spreads wide
        // enough for subnormal and zero P; V with inf and NaN, so a
        // skipped key differs from an fma by 0.
        let rows = 37;
        let xs = exp_inputs();
        let score = |r: usize, j: usize, tile: usize| -> f32 {
            let i = r * 131 + j * 7 + tile * 5;
            match (r % 16, j % 13) {
                (3, _) => f32::NEG_INFINITY,
                (5, _) => [0.0, -0.0][j % 2],
                (6, _) if j.is_multiple_of(3) => -0.0,
                (6, _) => f32::NEG_INFINITY,
                (_, 4) if r.is_multiple_of(4) => f32::NEG_INFINITY,
                (7, 9) => xs[i % xs.len()],
                _ if r % 5 == 1 => ((i as f32) * 0.37).sin() * 200.0,
                _ => ((i as f32) * 0.013).sin() * 9.0,
            }
        };
        for (n, d) in [
            (0, 32),
            (5, 48),
            (37, 128),
            (16, 80),
            (256, 32),
            (300, 32),
            (40, 72),
        ] {
            let mut v: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.071).cos()).collect();
            if n > 30 {
                v[17 * d + 3] = f32::INFINITY;
                v[29 * d + 1] = f32::NAN;
            }
            let tiles: Vec<Vec<f32>> = (0..2)
                .map(|t| {
                    (0..rows * n)
                        .map(|i| score(i / n.max(1), i % n.max(1), t))
                        .collect()
                })
                .collect();
            for dtype in [DType::Bf16, DType::F32, DType::F16] {
                let fresh = || -> Vec<RowState> {
                    (0..rows)
                        .map(|r| RowState::new(d, (r % 3 == 0).then_some(0.5)))
                        .collect()
                };
                let state_bits = |st: &[RowState]| -> Vec<u32> {
                    st.iter()
                        .flat_map(|s| {
                            [s.m.to_bits(), s.l.to_bits()]
                                .into_iter()
                                .chain(bits(&s.acc))
                        })
                        .collect()
                };
                // Each row alone, one-row steps: the definition.
                let mut one = fresh();
                for t in &tiles {
                    for (r, st) in one.iter_mut().enumerate() {
                        st.update(&t[r * n..(r + 1) * n], |j| &v[j * d..(j + 1) * d], dtype);
                    }
                }
                let want = state_bits(&one);
                for path in SimdPath::available() {
                    SimdPath::force(Some(path));
                    let mut st = fresh();
                    for t in &tiles {
                        RowState::update_rows(&mut st, t, n, n, |j| &v[j * d..(j + 1) * d], dtype);
                    }
                    SimdPath::force(None);
                    assert!(
                        state_bits(&st) == want,
                        "{} {dtype:?} n {n} d {d}",
                        path.name()
                    );
                }
            }
        }
    }

    #[test]
    fn transposing_sixteen_rows_gives_the_columns() {
        if !SimdPath::Avx512.supported() {
            return;
        }
        let m: Vec<f32> = (0..256).map(|i| i as f32).collect();
        // SAFETY: the CPU has the features (checked above).
        let cols = unsafe {
            use std::arch::x86_64::*;
            let rows: [__m512; 16] = std::array::from_fn(|r| _mm512_loadu_ps(m[16 * r..].as_ptr()));
            let t = transpose16(&rows);
            let mut out = vec![0.0f32; 256];
            for (c, v) in t.iter().enumerate() {
                _mm512_storeu_ps(out[16 * c..].as_mut_ptr(), *v);
            }
            out
        };
        for c in 0..16 {
            for r in 0..16 {
                assert_eq!(cols[16 * c + r], m[16 * r + c], "column {c} row {r}");
            }
        }
    }

    #[test]
    fn row_sums_are_each_rows_ascending_chain() {
        let mut p = [[0.0f32; 16]; 3];
        for (r, row) in p.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x = 1.0 / (1 + j * 7 + r) as f32;
            }
        }
        let sums = row_sums([0.0, 0.5, 1e-8], &p, 13);
        for (r, &start) in [0.0f32, 0.5, 1e-8].iter().enumerate() {
            let chain = p[r][..13].iter().fold(start, |a, &x| a + x);
            assert_eq!(sums[r].to_bits(), chain.to_bits(), "row {r}");
        }
    }

    #[test]
    fn exp_and_rounding_of_a_row_block_are_exp2c_then_round_on_every_path() {
        // Three rows of 37 scores (two 16-key vectors and a tail of 5)
        // through every branch of exp2c, each shifted by its own max; one
        // row's scores end in -inf (a masked key: P = 0, skipped).
        let xs = exp_inputs();
        let mut rows: [Vec<f32>; 3] = std::array::from_fn(|r| xs[r * 37..(r + 1) * 37].to_vec());
        rows[2][36] = f32::NEG_INFINITY;
        let m = [0.25f32, 0.0, -3.5];
        for dtype in [DType::Bf16, DType::F32, DType::F16] {
            for len in [37, 32, 5, 0] {
                let run = |path: SimdPath| {
                    let (mut p, mut rounded) = ([[0.0f32; 40]; 3], [[0.0f32; 40]; 3]);
                    let s = std::array::from_fn(|r| &rows[r][..len]);
                    let zero = exp2c_round_rows(path, s, m, len, dtype, &mut p, &mut rounded);
                    let b: Vec<Vec<u32>> = (0..3)
                        .flat_map(|r| [bits(&p[r][..len]), bits(&rounded[r][..len])])
                        .collect();
                    (b, zero)
                };
                let want_p: Vec<Vec<f32>> = (0..3)
                    .map(|r| rows[r][..len].iter().map(|&x| exp2c(x - m[r])).collect())
                    .collect();
                let want: Vec<Vec<u32>> = want_p
                    .iter()
                    .flat_map(|p| {
                        [
                            bits(p),
                            bits(&p.iter().map(|&x| dtype.round(x)).collect::<Vec<_>>()),
                        ]
                    })
                    .collect();
                let zero = want_p.iter().flatten().any(|&x| x == 0.0);
                for path in SimdPath::available() {
                    assert_eq!(
                        run(path),
                        (want.clone(), zero),
                        "{} {dtype:?} len {len}",
                        path.name()
                    );
                }
            }
        }
    }

    #[test]
    fn every_simd_path_gives_the_same_bits() {
        let xs = exp_inputs();
        let want: Vec<f32> = xs.iter().map(|&x| exp2c(x - 0.25)).collect();
        let d = 67; // not a multiple of any lane block
        let keys = 45;
        let w: Vec<f32> = (0..d * keys)
            .map(|i| ((i as f32) * 0.377).sin() * 3.0)
            .collect();
        let q: Vec<Vec<f32>> = (0..18)
            .map(|r| (0..d).map(|i| ((i * 7 + r) as f32 * 0.91).cos()).collect())
            .collect();
        let qs: Vec<&[f32]> = q.iter().map(|r| r.as_slice()).collect();
        let (q, qs) = (&q[..7], &qs);
        let p: Vec<f32> = (0..keys).map(|k| (k as f32 * 0.3).sin().abs()).collect();
        let run = |path: SimdPath| {
            let mut e = vec![0.0; xs.len()];
            exp2c_shifted(path, &xs, 0.25, &mut e);
            let mut dots = vec![0.0; 7 * keys];
            dots_rows(path, &qs[..7], &w, keys, 0, keys, &mut dots, keys);
            // 29 keys from column 3 (a 16-key block, 8, then singles) for
            // a GQA group of 4 rows, for 5 rows, and for 18 rows (AVX-512's
            // 16-row block of short tiles, then single rows).
            for rows in [4, 5, 18] {
                let mut more = vec![0.0; rows * 29];
                dots_rows(path, &qs[..rows], &w, keys, 3, 29, &mut more, 29);
                for r in 0..rows {
                    for j in 0..29 {
                        let mut a = 0.0f32;
                        for i in 0..d {
                            a = qs[r][i].mul_add(w[i * keys + 3 + j], a);
                        }
                        assert_eq!(
                            more[r * 29 + j].to_bits(),
                            a.to_bits(),
                            "{} row {r} key {j}",
                            path.name()
                        );
                    }
                }
            }
            // PV over a 131-dim accumulator: rows of V are the columns above.
            let v: Vec<f32> = (0..keys * 131).map(|i| (i as f32 * 0.051).cos()).collect();
            let mut acc: Vec<f32> = (0..131).map(|i| i as f32 * 0.01).collect();
            pv_accumulate(path, &mut acc, Some(0.75), &p, |k| {
                &v[k * 131..(k + 1) * 131]
            });
            // V rows gathered from a dim-major store, then the rest by hand.
            let vt: Vec<f32> = (0..131 * 16).map(|i| (i as f32 * 0.73).sin()).collect();
            let voff: Vec<usize> = (0..131).map(|dd| dd * 16).collect();
            let mut vrows = vec![0.0; 8 * 131];
            let done = gather_v8(path, &vt, 4, &voff, &mut vrows, 131, 0);
            for i in 0..8 {
                for dd in done..131 {
                    vrows[i * 131 + dd] = vt[4 + i + voff[dd]];
                }
            }
            let mut lanes: Vec<f32> = xs[..64].to_vec();
            let wsum = butterfly_lane0(&mut lanes, |a, b| a + b);
            // P and round(P) of two rows of 45 scores (exp2c's branches).
            let (mut pe, mut pr) = ([[0.0f32; 48]; 2], [[0.0f32; 48]; 2]);
            let skips = exp2c_round_rows(
                path,
                [&xs[..45], &xs[45..90]],
                [0.25, -1.0],
                45,
                DType::Bf16,
                &mut pe,
                &mut pr,
            );
            (
                (bits(&pe.concat()), bits(&pr.concat()), skips),
                bits(&e),
                bits(&dots),
                bits(&acc),
                bits(&vrows),
                wsum.to_bits(),
            )
        };
        let portable = run(SimdPath::Portable);
        assert_eq!(portable.1, bits(&want), "portable exp2c_shifted is exp2c");
        // The chain of one dot, spelled out.
        for (r, qr) in q.iter().enumerate() {
            for j in 0..keys {
                let mut a = 0.0f32;
                for i in 0..d {
                    a = qr[i].mul_add(w[i * keys + j], a);
                }
                assert_eq!(portable.2[r * keys + j], a.to_bits(), "row {r} key {j}");
            }
        }
        for path in SimdPath::available() {
            assert_eq!(run(path), portable, "{}", path.name());
        }
    }
}
