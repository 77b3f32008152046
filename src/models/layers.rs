//! Shared building blocks for our convolutional models (cGAN, VAE, GAN, RL).
//!
//! Each block follows the candle examples: `new(vb, ..)` creates or loads its weights under
//! `vb.pp(..)` names, and `impl Module` runs it. All blocks use the fast kernels of
//! [`super::conv`]; [`ConvBackend::Candle`] switches a block to candle's built-in conv2d, which
//! the benchmark and tests use as the reference.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use super::conv::{conv2d, reference_conv2d, upsample_nearest2x, Activation, ConvConfig};

/// Which convolution implementation a block runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvBackend {
    /// Our kernels ([`super::conv::conv2d`]): fused bias and activation, fast backward.
    #[default]
    Fast,
    /// candle's `Tensor::conv2d` followed by separate bias and activation ops.
    Candle,
}

/// A 2-D convolution with bias and a fused activation.
#[derive(Clone, Debug)]
pub struct Conv2dFast {
    weight: Tensor,
    bias: Tensor,
    cfg: ConvConfig,
    act: Activation,
    backend: ConvBackend,
}

impl Conv2dFast {
    /// A `kernel x kernel` convolution from `cin` to `cout` channels, weights under
    /// `vb.pp("weight")` / `"bias"`, initialised like `candle_nn::conv2d` when created. With
    /// [`Activation::GatedEluSigmoid`] the module outputs `cout / 2` channels.
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        cfg: ConvConfig,
        act: Activation,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin, kernel, kernel),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        let bound = 1.0 / ((cin * kernel * kernel) as f64).sqrt();
        let bias = vb.get_with_hints(
            cout,
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            weight,
            bias,
            cfg,
            act,
            backend: ConvBackend::Fast,
        })
    }

    /// The same block running on `backend`.
    pub fn with_backend(mut self, backend: ConvBackend) -> Self {
        self.backend = backend;
        self
    }

    /// The `[cout, cin, k, k]` weights.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for Conv2dFast {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self.backend {
            ConvBackend::Fast => conv2d(x, &self.weight, Some(&self.bias), self.cfg, self.act),
            ConvBackend::Candle => {
                reference_conv2d(x, &self.weight, Some(&self.bias), self.cfg, self.act)
            }
        }
    }
}

/// A gated convolution (Yu et al., free-form inpainting): one conv producing features and
/// gates, output `elu(features) * sigmoid(gates)`. The proven block for irregular holes.
#[derive(Clone, Debug)]
pub struct GatedConv2d {
    conv: Conv2dFast,
}

impl GatedConv2d {
    /// A gated `kernel x kernel` convolution from `cin` to `cout` channels (the underlying conv,
    /// named `vb.pp("conv")`, has `2 * cout` outputs).
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        cfg: ConvConfig,
    ) -> Result<Self> {
        let conv = Conv2dFast::new(
            vb.pp("conv"),
            cin,
            2 * cout,
            kernel,
            cfg,
            Activation::GatedEluSigmoid,
        )?;
        Ok(Self { conv })
    }

    /// The same block running on `backend`.
    pub fn with_backend(self, backend: ConvBackend) -> Self {
        Self {
            conv: self.conv.with_backend(backend),
        }
    }
}

impl Module for GatedConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}

/// The decoder's upsampling step: nearest-neighbour 2x upsampling then a gated 3x3 conv.
///
/// Nearest + conv avoids the checkerboard artefacts of transposed convolutions, and the 3x3
/// stride-1 conv runs on the Winograd path, which spends fewer multiplies per low-resolution
/// pixel (9 per channel pair with F(4x4, 3x3)) than a sub-pixel rewrite of the same layer into
/// four 2x2 convolutions would (16).
#[derive(Clone, Debug)]
pub struct UpConv {
    conv: GatedConv2d,
}

impl UpConv {
    /// Upsample 2x, then a gated 3x3 conv from `cin` to `cout` channels (named `vb.pp("conv")`).
    pub fn new(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        let cfg = ConvConfig {
            padding: 1,
            ..ConvConfig::default()
        };
        Ok(Self {
            conv: GatedConv2d::new(vb, cin, cout, 3, cfg)?,
        })
    }

    /// The same block running on `backend`.
    pub fn with_backend(self, backend: ConvBackend) -> Self {
        Self {
            conv: self.conv.with_backend(backend),
        }
    }
}

impl Module for UpConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let up = match self.conv.conv.backend {
            ConvBackend::Fast => upsample_nearest2x(x)?,
            ConvBackend::Candle => {
                let (_, _, h, w) = x.dims4()?;
                x.upsample_nearest2d(2 * h, 2 * w)?
            }
        };
        self.conv.forward(&up)
    }
}
