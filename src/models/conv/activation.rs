//! Activations fused into the convolution's output pass, and the gated ELU x sigmoid op.
//!
//! Applying bias and activation while an output block is still in cache saves a full read and
//! write of the activation tensor per layer (at 64x256x256 that is 16 MiB each way).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::simd::dispatch;

/// The non-linearity applied after bias in a fused convolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// No activation: the output is the convolution plus bias.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `x` when positive, `slope * x` otherwise (`slope` must be positive for the backward pass).
    LeakyRelu(f32),
    /// `x` when positive, `alpha * (exp(x) - 1)` otherwise.
    Elu(f32),
    /// Gated convolution output: the conv produces `2C` channels `[a, g]` and the result is
    /// `elu(a) * sigmoid(g)` with `C` channels.
    GatedEluSigmoid,
}

/// A fast `exp` accurate to a few ulps over the range activations use; it vectorises, unlike
/// `f32::exp`, which is a scalar libm call and dominated the gated layers' time.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x / ln 2 to the nearest integer n with the float "magic number" trick: adding
    // 1.5 * 2^23 leaves n in the low mantissa bits. This needs no SSE4.1 rounding and no
    // float-to-int conversion (Rust's saturating `as i32` does not vectorise).
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    // Cody-Waite reduction: r = x - n ln 2 in two parts keeps r exact to f32 precision.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    // Minimax polynomial for exp(r) on [-ln2/2, ln2/2].
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_66;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n built from its exponent bits: t's bits are MAGIC's plus n, so subtracting MAGIC's
    // bits and adding the exponent bias gives n + 127 (|n| <= 127 after the clamp above).
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    p * scale
}

/// `elu(a) * sigmoid(g)` for one element, with ELU's alpha = 1.
#[inline(always)]
fn gated(a: f32, g: f32) -> f32 {
    let e = if a > 0.0 { a } else { fast_exp(a) - 1.0 };
    e / (1.0 + fast_exp(-g))
}

#[inline(always)]
fn act_one(act: Activation, v: f32) -> f32 {
    match act {
        Activation::Identity | Activation::GatedEluSigmoid => v,
        Activation::Relu => v.max(0.0),
        Activation::LeakyRelu(s) => {
            if v > 0.0 {
                v
            } else {
                v * s
            }
        }
        Activation::Elu(alpha) => {
            if v > 0.0 {
                v
            } else {
                alpha * (fast_exp(v) - 1.0)
            }
        }
    }
}

/// `act(x)` with candle's own ops, the reference the fused kernels are checked against.
pub fn reference_activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    match act {
        Activation::Identity => Ok(x.clone()),
        Activation::Relu => x.relu(),
        Activation::LeakyRelu(s) => candle_nn::ops::leaky_relu(x, f64::from(s)),
        Activation::Elu(a) => x.elu(f64::from(a)),
        Activation::GatedEluSigmoid => {
            let c = x.dim(1)? / 2;
            let feat = x.narrow(1, 0, c)?.elu(1.0)?;
            let gate = candle_nn::ops::sigmoid(&x.narrow(1, c, c)?)?;
            feat.mul(&gate)
        }
    }
}

dispatch! {
    /// `dst[i] = act(src[i] + bias)` for a single-output activation (not the gated one).
    pub fn bias_act(dst: &mut [f32], src: &[f32], bias: f32, act: Activation) {
        // One loop per variant so that each inner loop is branch-free and vectorises.
        match act {
            Activation::Relu => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = (s + bias).max(0.0);
                }
            }
            Activation::LeakyRelu(_) | Activation::Elu(_) => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = act_one(act, s + bias);
                }
            }
            Activation::Identity | Activation::GatedEluSigmoid => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = s + bias;
                }
            }
        }
    }
}

dispatch! {
    /// `dst[i] = elu(a[i] + ba) * sigmoid(g[i] + bg)`.
    pub fn bias_gated(dst: &mut [f32], a: &[f32], g: &[f32], ba: f32, bg: f32) {
        for ((d, a), g) in dst.iter_mut().zip(a).zip(g) {
            *d = gated(a + ba, g + bg);
        }
    }
}

dispatch! {
    /// Turns `grad` (gradient w.r.t. the activation output `out`) into the gradient w.r.t. the
    /// pre-activation, in place. Every supported single-output activation has a derivative that
    /// is a function of its output, so the pre-activation never has to be kept.
    pub fn act_backward(grad: &mut [f32], out: &[f32], act: Activation) {
        match act {
            Activation::Identity | Activation::GatedEluSigmoid => {}
            Activation::Relu => {
                for (g, o) in grad.iter_mut().zip(out) {
                    *g = if *o > 0.0 { *g } else { 0.0 };
                }
            }
            Activation::LeakyRelu(s) => {
                for (g, o) in grad.iter_mut().zip(out) {
                    *g = if *o > 0.0 { *g } else { *g * s };
                }
            }
            Activation::Elu(alpha) => {
                // For x <= 0: out = alpha (e^x - 1), so d out / dx = alpha e^x = out + alpha.
                for (g, o) in grad.iter_mut().zip(out) {
                    *g = if *o > 0.0 { *g } else { *g * (*o + alpha) };
                }
            }
        }
    }
}

dispatch! {
    /// Backward of `elu(a) * sigmoid(g)`: writes d/da and d/dg given the upstream gradient.
    fn gated_backward(da: &mut [f32], dg: &mut [f32], a: &[f32], g: &[f32], up: &[f32]) {
        for i in 0..up.len().min(a.len()).min(g.len()).min(da.len()).min(dg.len()) {
            let (av, gv, u) = (a[i], g[i], up[i]);
            let ea = fast_exp(av);
            let (e, de) = if av > 0.0 { (av, 1.0) } else { (ea - 1.0, ea) };
            let s = 1.0 / (1.0 + fast_exp(-gv));
            da[i] = u * de * s;
            dg[i] = u * e * s * (1.0 - s);
        }
    }
}

/// The gated ELU x sigmoid activation as a candle op on an `[N, 2C, H, W]` tensor (first half of
/// the channels is the feature, second half the gate), with its own backward pass. Used when a
/// gated layer is trained; inference fuses this into the convolution instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct GatedEluSigmoidOp;

fn split_dims(shape: &Shape) -> Result<(usize, usize, usize)> {
    let (n, c2, h, w) = shape.dims4()?;
    if c2 % 2 != 0 {
        candle_core::bail!("gated activation needs an even channel count, got {c2}");
    }
    Ok((n, c2 / 2, h * w))
}

impl CustomOp1 for GatedEluSigmoidOp {
    fn name(&self) -> &'static str {
        "gated-elu-sigmoid"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::contiguous_f32(storage, layout)?;
        let (n, c, hw) = split_dims(layout.shape())?;
        let mut out = vec![0f32; n * c * hw];
        // One task per (image, channel) plane pair: enough parallelism at batch 1, and each
        // task streams three contiguous planes.
        if hw > 0 {
            out.par_chunks_mut(hw).enumerate().for_each(|(i, dst)| {
                let (b, ch) = (i / c, i % c);
                let a = &x[(b * 2 * c + ch) * hw..(b * 2 * c + ch + 1) * hw];
                let g = &x[(b * 2 * c + c + ch) * hw..(b * 2 * c + c + ch + 1) * hw];
                bias_gated(dst, a, g, 0.0, 0.0);
            });
        }
        let (_, _, h, w) = layout.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((n, c, h, w))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, c, hw) = split_dims(arg.shape())?;
        let mut grad = vec![0f32; arg.elem_count()];
        if hw > 0 {
            super::with_data(arg, |x| {
                super::with_data(grad_res, |up| {
                    // Chunks of one image's [a-plane ... g-plane] pair per channel would not be
                    // contiguous, so split per image and then per channel inside.
                    grad.par_chunks_mut(2 * c * hw)
                        .enumerate()
                        .for_each(|(b, gb)| {
                            let xb = &x[b * 2 * c * hw..(b + 1) * 2 * c * hw];
                            let ub = &up[b * c * hw..(b + 1) * c * hw];
                            let (da, dg) = gb.split_at_mut(c * hw);
                            da.par_chunks_mut(hw)
                                .zip(dg.par_chunks_mut(hw))
                                .enumerate()
                                .for_each(|(ch, (da, dg))| {
                                    let a = &xb[ch * hw..(ch + 1) * hw];
                                    let g = &xb[(c + ch) * hw..(c + ch + 1) * hw];
                                    gated_backward(da, dg, a, g, &ub[ch * hw..(ch + 1) * hw]);
                                });
                        });
                    Ok(())
                })
            })?;
        }
        Ok(Some(Tensor::from_vec(grad, arg.shape(), arg.device())?))
    }
}

/// `elu(a) * sigmoid(g)` over the channel halves of `x` (`[N, 2C, H, W]` -> `[N, C, H, W]`).
pub fn gated_elu_sigmoid(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(GatedEluSigmoidOp)
}
