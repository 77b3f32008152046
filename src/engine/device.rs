//! Which compute device learned models run on.
//!
//! CPU by default. Built with the `cuda` cargo feature, candle's CUDA device 0 is used when a
//! GPU is present, and the CPU otherwise. Classical restorers always run on the CPU threads of
//! the engine's pool.

use candle_core::Device;

/// The device learned models should use.
pub fn compute_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        if let Ok(d) = Device::cuda_if_available(0) {
            return d;
        }
    }
    Device::Cpu
}

/// A short label for status bars and `kintsugi models`, e.g. `CPU (2 threads)` or `CUDA:0`.
pub fn device_label(threads: usize) -> String {
    match compute_device() {
        Device::Cpu => {
            let s = if threads == 1 { "" } else { "s" };
            format!("CPU ({threads} thread{s})")
        }
        Device::Cuda(_) => "CUDA:0".to_owned(),
        Device::Metal(_) => "Metal".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_build_uses_the_cpu() {
        #[cfg(not(feature = "cuda"))]
        assert!(matches!(compute_device(), Device::Cpu));
        assert!(device_label(1).contains("1 thread") || device_label(1).starts_with("CUDA"));
        assert!(device_label(2).contains("2 threads") || device_label(2).starts_with("CUDA"));
    }
}
