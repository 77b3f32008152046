//! Fast CPU 2-D convolutions as candle custom ops, forward and backward.
//!
//! [`conv2d`] is a drop-in for `Tensor::conv2d` (NCHW input, `[cout, cin, kh, kw]` weights) that
//! also takes a bias and a fused [`Activation`]. It picks the method per layer:
//! - [`Method::Winograd4`]: F(4x4, 3x3) for wide 3x3 stride-1 undilated layers, the bulk of our
//!   nets;
//! - [`Method::Winograd`]: F(2x2, 3x3) for narrower ones (8 to 31 input channels), and for the
//!   weight gradient of every 3x3 stride-1 layer;
//! - [`Method::Im2col`]: blocked im2col + GEMM for everything else (strided, dilated, 4x4, 5x5,
//!   few input channels).
//!
//! Gradients for input, weight and bias come from the op's own backward pass, so the result
//! plugs into candle's autograd (`Tensor::backward`, `candle_nn::AdamW`).

pub mod activation;
pub mod backward;
pub mod gemm;
pub mod im2col;
pub(crate) mod simd;
pub mod upsample;
pub mod winograd;
pub mod winograd4;

use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};

pub use activation::{gated_elu_sigmoid, reference_activation, Activation, GatedEluSigmoidOp};
pub use upsample::{upsample_nearest2x, UpsampleNearest2x};

/// Stride, padding and dilation of a convolution (the same on both axes, as in candle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvConfig {
    /// Zero padding added on every side.
    pub padding: usize,
    /// Step between two output pixels, in input pixels.
    pub stride: usize,
    /// Spacing between kernel taps.
    pub dilation: usize,
}

impl Default for ConvConfig {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            dilation: 1,
        }
    }
}

/// The full geometry of one convolution call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels of the convolution (before a gated activation halves them).
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub pad: usize,
    /// Dilation.
    pub dilation: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
}

impl Geom {
    /// Geometry from the input and weight shapes; fails on mismatched channels or an empty
    /// output.
    pub fn new(x: &Shape, w: &Shape, cfg: ConvConfig) -> Result<Self> {
        let (n, cin, h, wd) = x.dims4()?;
        let (cout, wcin, kh, kw) = w.dims4()?;
        if wcin != cin {
            candle_core::bail!("conv2d: input has {cin} channels but the kernel expects {wcin}");
        }
        if cfg.stride == 0 || cfg.dilation == 0 {
            candle_core::bail!("conv2d: stride and dilation must be positive");
        }
        let span_h = cfg.dilation * (kh.max(1) - 1) + 1;
        let span_w = cfg.dilation * (kw.max(1) - 1) + 1;
        if h + 2 * cfg.padding < span_h || wd + 2 * cfg.padding < span_w {
            candle_core::bail!("conv2d: kernel larger than the padded input");
        }
        Ok(Self {
            n,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            stride: cfg.stride,
            pad: cfg.padding,
            dilation: cfg.dilation,
            ho: (h + 2 * cfg.padding - span_h) / cfg.stride + 1,
            wo: (wd + 2 * cfg.padding - span_w) / cfg.stride + 1,
        })
    }
}

/// How a convolution is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Winograd F(4x4, 3x3): wide 3x3 stride-1 layers.
    Winograd4,
    /// Winograd F(2x2, 3x3): narrower 3x3 stride-1 layers.
    Winograd,
    /// Blocked im2col + GEMM.
    Im2col,
}

impl Method {
    /// The fastest method we measured for this geometry.
    pub fn choose(g: &Geom) -> Self {
        let winograd_shape =
            g.kh == 3 && g.kw == 3 && g.stride == 1 && g.dilation == 1 && g.pad <= 2;
        // With very few input channels the transforms cost more than the GEMM they save.
        if !winograd_shape || g.cin < 8 || g.ho < 2 || g.wo < 2 {
            Self::Im2col
        } else if g.cin >= WINOGRAD4_MIN_CIN && g.cout >= 16 && g.ho >= 8 && g.wo >= 8 {
            Self::Winograd4
        } else {
            Self::Winograd
        }
    }

    /// Whether this is one of the Winograd methods (3x3 stride-1 layers).
    pub fn is_winograd(self) -> bool {
        matches!(self, Self::Winograd | Self::Winograd4)
    }
}

/// Input channels from which F(4x4, 3x3) beats F(2x2, 3x3) (measured, see the README).
const WINOGRAD4_MIN_CIN: usize = 32;

/// Runs the forward pass with the method [`Method::choose`] picks.
pub(crate) fn forward_any(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    act: Activation,
    out: &mut [f32],
) -> Result<()> {
    match Method::choose(g) {
        Method::Winograd4 => winograd4::forward(g, x, w, b, act, out),
        Method::Winograd => winograd::forward(g, x, w, b, act, out),
        Method::Im2col => im2col::forward(g, x, w, b, act, out),
    }
}

/// Shares one output buffer between rayon tasks that each write their own disjoint ranges.
pub(crate) struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `SharedOut` is only a pointer plus length; the tasks that use it write disjoint ranges
// (each caller documents why), so sending or sharing it across threads cannot cause a data race.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Wraps `out`; the borrow keeps the buffer alive and unaliased for as long as the tasks run.
    pub(crate) fn new(out: &mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
        }
    }

    /// The range `off..off + len` as a mutable slice (bounds-checked).
    ///
    /// # Safety
    /// No other live slice obtained from this `SharedOut` may overlap the range.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> Result<&mut [f32]> {
        if off + len > self.len {
            candle_core::bail!("conv2d: output range {off}+{len} past {}", self.len);
        }
        // SAFETY: the range is inside the buffer (checked above) and the caller guarantees that
        // no other task holds an overlapping slice.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(off), len) })
    }
}

/// The contiguous `f32` data of a CPU storage, or an error for other dtypes or strided layouts.
pub(crate) fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("fast conv2d supports f32 tensors only");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("fast conv2d needs contiguous inputs"),
    }
}

/// Runs `f` on the contiguous `f32` data of a CPU tensor.
pub(crate) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(contiguous_f32(cpu, layout)?),
        _ => candle_core::bail!("fast conv2d runs on the CPU only"),
    }
}

/// The convolution as a candle op: arguments `(x, w)` or `(x, w, bias)`.
#[derive(Clone, Copy, Debug)]
pub struct Conv2dOp {
    /// Stride, padding, dilation.
    pub cfg: ConvConfig,
    /// Activation fused into the output pass.
    pub act: Activation,
}

impl Conv2dOp {
    fn forward(
        &self,
        x: &[f32],
        xs: &Shape,
        w: &[f32],
        ws: &Shape,
        b: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geom::new(xs, ws, self.cfg)?;
        if let Some(b) = b {
            if b.len() != g.cout {
                candle_core::bail!(
                    "conv2d: bias has {} values for {} channels",
                    b.len(),
                    g.cout
                );
            }
        }
        let out_c = if self.act == Activation::GatedEluSigmoid {
            if g.cout % 2 != 0 {
                candle_core::bail!("gated conv2d needs an even output channel count");
            }
            g.cout / 2
        } else {
            g.cout
        };
        let mut out = vec![0f32; g.n * out_c * g.ho * g.wo];
        forward_any(&g, x, w, b, self.act, &mut out)?;
        Ok((CpuStorage::F32(out), Shape::from((g.n, out_c, g.ho, g.wo))))
    }

    /// Gradients for `(x, w, bias)` given the op's result and the gradient of the result; none
    /// for `x` when it does not need one.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        if self.act == Activation::GatedEluSigmoid {
            candle_core::bail!(
                "the fused gated conv2d has no backward; conv2d() unfuses it when training"
            );
        }
        let g = Geom::new(x.shape(), w.shape(), self.cfg)?;
        let mut dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        if self.act != Activation::Identity {
            with_data(res, |r| {
                activation::act_backward(&mut dy, r, self.act);
                Ok(())
            })?;
        }
        let dev = x.device();
        let db = backward::bias_grad(&g, &dy);
        // The first layer's input (an image batch) needs no gradient: skip its whole pass.
        let dx = if x.track_op() {
            let dx = with_data(w, |wd| backward::input_grad(&g, wd, &dy))?;
            Some(Tensor::from_vec(dx, x.shape(), dev)?)
        } else {
            None
        };
        let dw = with_data(x, |xd| backward::weight_grad(&g, xd, &dy))?;
        Ok((
            dx,
            Tensor::from_vec(dw, w.shape(), dev)?,
            Tensor::from_vec(db, g.cout, dev)?,
        ))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(
            contiguous_f32(s1, l1)?,
            l1.shape(),
            contiguous_f32(s2, l2)?,
            l2.shape(),
            None,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, res, grad)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = contiguous_f32(s3, l3)?;
        self.forward(
            contiguous_f32(s1, l1)?,
            l1.shape(),
            contiguous_f32(s2, l2)?,
            l2.shape(),
            Some(b),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, res, grad)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// `act(conv2d(x, w) + bias)` with our fast kernels; `x` is `[n, cin, h, w]`, `w` is
/// `[cout, cin, kh, kw]`, `bias` is `[cout]`. With [`Activation::GatedEluSigmoid`] the result has
/// `cout / 2` channels. Differentiable with respect to all three tensors.
///
/// The kernels are for `f32` on the CPU; other devices (the `cuda` feature) and dtypes run
/// [`reference_conv2d`] instead, so models work everywhere and are fast where we train.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: ConvConfig,
    act: Activation,
) -> Result<Tensor> {
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return reference_conv2d(x, w, bias, cfg, act);
    }
    let tracked = x.track_op() || w.track_op() || bias.is_some_and(|b| b.track_op());
    if act == Activation::GatedEluSigmoid && tracked {
        // Training needs the pre-activation for the gate's gradient: run the conv unfused and
        // the gate as its own differentiable op.
        let pre = conv2d(x, w, bias, cfg, Activation::Identity)?;
        return gated_elu_sigmoid(&pre);
    }
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    let op = Conv2dOp { cfg, act };
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

/// `act(conv2d(x, w) + bias)` with candle's own ops (`Tensor::conv2d`, a broadcast add and the
/// activation): the reference the fast kernels are tested and benchmarked against, and the
/// fallback for devices and dtypes they do not cover.
pub fn reference_conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    cfg: ConvConfig,
    act: Activation,
) -> Result<Tensor> {
    let y = x.conv2d(w, cfg.padding, cfg.stride, cfg.dilation, 1)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    reference_activation(&y, act)
}
