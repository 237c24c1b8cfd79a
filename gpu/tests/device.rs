//! Runs every kernel diff on the first GPU, when there is one. Without a
//! device (or driver) each test prints one line saying why and passes.

use attnlab_gpu::diff::{DiffOptions, KERNEL_DIFFS};
use attnlab_gpu::kernels::Gpu;
use attnlab_gpu::runtime::GpuError;

fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::open() {
        Ok(g) => Some(g),
        Err(GpuError::NoDevice(why)) => {
            eprintln!("{test}: skipped, no device: {why}");
            None
        }
        Err(e) => panic!("{test}: opening the device failed: {e}"),
    }
}

#[test]
fn every_kernel_is_bit_exact_with_the_emulator_on_the_device() {
    let Some(gpu) = gpu_or_skip("every_kernel_is_bit_exact_with_the_emulator_on_the_device") else {
        return;
    };
    for d in KERNEL_DIFFS {
        let r =
            (d.run)(&gpu, DiffOptions::new(8, 7)).unwrap_or_else(|e| panic!("{}: {e}", d.kernel));
        assert!(r.elements > 0, "{}: compared nothing", d.kernel);
        assert!(r.passed(), "{}: {:?}", d.kernel, r.first_mismatch);
    }
}
