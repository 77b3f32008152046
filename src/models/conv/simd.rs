//! Runtime CPU-feature dispatch for the element-wise kernels.
//!
//! The crate is built for baseline x86-64 (SSE2), where the auto-vectoriser only has 4-wide
//! vectors and no FMA. Our transforms and epilogues are plain Rust loops; compiling a second copy
//! with AVX2+FMA enabled and picking it at run time doubles their throughput on every machine we
//! target without asking users to build with `-C target-cpu=native`.

/// Whether the AVX2+FMA copies of the kernels may run on this CPU (cached by std).
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub fn $name(args) -> ret` that runs `$body` compiled with AVX2+FMA when the CPU has
/// them, and the baseline build otherwise.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                if $crate::models::conv::simd::has_avx2() {
                    // SAFETY: `avx2` only differs from `imp` by being compiled with AVX2+FMA, and
                    // we checked just above that this CPU supports both.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use dispatch;
