//! Quality metrics: PSNR over the whole image or the hole only, hole L1, and SSIM.
//!
//! All metrics take images with samples in `[0, 1]` (peak signal 1.0).

use super::buffer::{ImageF32, Mask};

/// Mean squared error over all samples.
pub fn mse(a: &ImageF32, b: &ImageF32) -> f64 {
    let n = a.data().len().max(1) as f64;
    a.data()
        .iter()
        .zip(b.data())
        .map(|(&x, &y)| ((x - y) as f64).powi(2))
        .sum::<f64>()
        / n
}

/// PSNR in dB from a mean squared error (peak 1.0); infinite for identical images.
pub fn psnr_from_mse(mse: f64) -> f64 {
    if mse <= 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    }
}

/// Whole-image PSNR in dB.
pub fn psnr(a: &ImageF32, b: &ImageF32) -> f64 {
    psnr_from_mse(mse(a, b))
}

/// Mean squared error over the samples of hole pixels only; `None` when the mask is empty.
pub fn hole_mse(a: &ImageF32, b: &ImageF32, mask: &Mask) -> Option<f64> {
    hole_stat(a, b, mask, |d| d * d)
}

/// PSNR in dB over the hole pixels only; `None` when the mask is empty.
pub fn hole_psnr(a: &ImageF32, b: &ImageF32, mask: &Mask) -> Option<f64> {
    hole_mse(a, b, mask).map(psnr_from_mse)
}

/// Mean absolute error over the hole pixels only; `None` when the mask is empty.
pub fn hole_l1(a: &ImageF32, b: &ImageF32, mask: &Mask) -> Option<f64> {
    hole_stat(a, b, mask, f64::abs)
}

fn hole_stat(a: &ImageF32, b: &ImageF32, mask: &Mask, f: impl Fn(f64) -> f64) -> Option<f64> {
    let c = a.channels();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (i, _) in mask.data().iter().enumerate().filter(|(_, &h)| h) {
        for k in 0..c {
            sum += f((a.data()[i * c + k] - b.data()[i * c + k]) as f64);
        }
        n += c;
    }
    (n > 0).then(|| sum / n as f64)
}

/// Structural similarity (Wang et al. 2004) with an 11-tap Gaussian window (sigma 1.5),
/// K1 = 0.01, K2 = 0.03, peak 1.0, averaged over pixels and channels.
///
/// This is the definition scikit-image uses with `gaussian_weights=True, sigma=1.5,
/// use_sample_covariance=False, data_range=1`: borders are handled by symmetric reflection
/// and, as there, the mean leaves out a 5-pixel band along the edges (when the image is large
/// enough to have an interior).
pub fn ssim(a: &ImageF32, b: &ImageF32) -> f64 {
    let (w, h, c) = (a.width(), a.height(), a.channels());
    if w == 0 || h == 0 {
        return 1.0;
    }
    let kernel = gaussian_kernel(1.5, 5);
    let (c1, c2) = ((0.01f64).powi(2), (0.03f64).powi(2));
    // Average over the interior, as scikit-image does, when there is one.
    let pad = if w > 10 && h > 10 { 5 } else { 0 };
    let mut total = 0.0f64;
    for ch in 0..c {
        let x: Vec<f64> = (0..w * h).map(|i| a.data()[i * c + ch] as f64).collect();
        let y: Vec<f64> = (0..w * h).map(|i| b.data()[i * c + ch] as f64).collect();
        let xx: Vec<f64> = x.iter().map(|v| v * v).collect();
        let yy: Vec<f64> = y.iter().map(|v| v * v).collect();
        let xy: Vec<f64> = x.iter().zip(&y).map(|(p, q)| p * q).collect();
        let [mx, my, sxx, syy, sxy] = [&x, &y, &xx, &yy, &xy].map(|v| blur(v, w, h, &kernel));
        for i in (0..w * h).filter(|i| {
            let (x, y) = (i % w, i / w);
            x >= pad && x < w - pad && y >= pad && y < h - pad
        }) {
            let vx = sxx[i] - mx[i] * mx[i];
            let vy = syy[i] - my[i] * my[i];
            let cov = sxy[i] - mx[i] * my[i];
            total += ((2.0 * mx[i] * my[i] + c1) * (2.0 * cov + c2))
                / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2));
        }
    }
    total / ((w - 2 * pad) * (h - 2 * pad) * c) as f64
}

fn gaussian_kernel(sigma: f64, radius: usize) -> Vec<f64> {
    let k: Vec<f64> = (0..=2 * radius)
        .map(|i| {
            let d = i as f64 - radius as f64;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let s: f64 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// Half-sample symmetric reflection (scipy.ndimage's `reflect` mode): -1 -> 0, n -> n-1.
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let period = 2 * n;
    let j = i.rem_euclid(period);
    (if j >= n { period - 1 - j } else { j }) as usize
}

fn blur(v: &[f64], w: usize, h: usize, k: &[f64]) -> Vec<f64> {
    let r = (k.len() / 2) as isize;
    let mut tmp = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (t, kv) in k.iter().enumerate() {
                s += kv * v[y * w + reflect(x as isize + t as isize - r, w)];
            }
            tmp[y * w + x] = s;
        }
    }
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0;
            for (t, kv) in k.iter().enumerate() {
                s += kv * tmp[reflect(y as isize + t as isize - r, h) * w + x];
            }
            out[y * w + x] = s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_images() {
        let a = ImageF32::from_fn(20, 15, 3, |x, y, c| {
            ((x * 7 + y * 3 + c) % 11) as f32 / 10.0
        });
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        assert!((ssim(&a, &a) - 1.0).abs() < 1e-9);
        let m = Mask::from_fn(20, 15, |x, _| x < 5);
        assert_eq!(hole_l1(&a, &a, &m), Some(0.0));
        assert_eq!(hole_psnr(&a, &a, &Mask::new(20, 15)), None);
    }

    #[test]
    fn known_values() {
        let a = ImageF32::new(4, 4, 1);
        let b = ImageF32::from_fn(4, 4, 1, |x, _, _| if x == 0 { 0.1 } else { 0.0 });
        // MSE over all = 4 * 0.01 / 16.
        assert!((psnr(&a, &b) - 26.0206).abs() < 1e-3);
        let m = Mask::from_fn(4, 4, |x, _| x == 0);
        assert!((hole_psnr(&a, &b, &m).unwrap_or(0.0) - 20.0).abs() < 1e-4);
        assert!((hole_l1(&a, &b, &m).unwrap_or(0.0) - 0.1).abs() < 1e-6);
        assert!(ssim(&a, &b) < 1.0);
        assert_eq!(reflect(-1, 5), 0);
        assert_eq!(reflect(-2, 5), 1);
        assert_eq!(reflect(5, 5), 4);
    }
}
