//! Correctness of the fast convolutions (`kintsugi::models::conv`) against candle's reference
//! conv2d, for outputs and for the gradients of input, weight and bias, plus a finite-difference
//! check of the gradients on tiny shapes. Shapes are small so the whole file runs in seconds.

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use kintsugi::models::conv::{
    conv2d, reference_activation, reference_conv2d, Activation, ConvConfig, Geom, Method,
};
use kintsugi::models::layers::{Conv2dFast, ConvBackend, GatedConv2d, UpConv};

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.uniform() * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

fn cfg(padding: usize, stride: usize, dilation: usize) -> ConvConfig {
    ConvConfig {
        padding,
        stride,
        dilation,
    }
}

/// Largest |a - b| relative to the largest |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let m = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-3)
}

/// One convolution case.
#[derive(Clone, Copy, Debug)]
struct Case {
    n: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    cfg: ConvConfig,
    act: Activation,
}

/// Output and all three gradients of our conv2d against candle's conv2d + bias + activation.
fn check_against_candle(c: Case, rng: &mut Rng) {
    let x = Var::from_tensor(&rng.tensor(&[c.n, c.cin, c.h, c.w], 1.0)).unwrap();
    let scale = 1.0 / ((c.cin * c.k * c.k) as f32).sqrt();
    let w = Var::from_tensor(&rng.tensor(&[c.cout, c.cin, c.k, c.k], scale)).unwrap();
    let b = Var::from_tensor(&rng.tensor(&[c.cout], 0.5)).unwrap();
    let ours = conv2d(&x, &w, Some(&b), c.cfg, c.act).unwrap();
    let pre = x
        .conv2d(&w, c.cfg.padding, c.cfg.stride, c.cfg.dilation, 1)
        .unwrap()
        .broadcast_add(&b.reshape((1, c.cout, 1, 1)).unwrap())
        .unwrap();
    let reference = reference_activation(&pre, c.act).unwrap();
    let e = rel_err(&ours, &reference);
    assert!(e < 1e-4, "{c:?}: output error {e}");

    // A random projection of the output as the loss, so every output element matters.
    let r = rng.tensor(ours.dims(), 1.0);
    let g_ours = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = (&reference * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
        let e = rel_err(g_ours.get(v).unwrap(), g_ref.get(v).unwrap());
        assert!(e < 1e-4, "{c:?}: d{name} error {e}");
    }
}

#[test]
fn edge_cases_match_candle() {
    use Activation::*;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cases = [
        // Winograd path: odd sizes, padding 0..2, every activation, batch > 1.
        (2, 16, 12, 9, 11, 3, cfg(1, 1, 1), Relu),
        (1, 16, 12, 8, 8, 3, cfg(0, 1, 1), Elu(1.0)),
        (3, 9, 8, 7, 13, 3, cfg(2, 1, 1), LeakyRelu(0.2)),
        (2, 10, 8, 11, 10, 3, cfg(1, 1, 1), GatedEluSigmoid),
        (1, 8, 4, 2, 3, 3, cfg(1, 1, 1), Identity),
        // F(4x4, 3x3): 32+ channels, sizes that leave partial tiles, padding 0..2.
        (2, 32, 16, 13, 15, 3, cfg(1, 1, 1), Relu),
        (1, 40, 12, 9, 8, 3, cfg(0, 1, 1), Elu(1.0)),
        (2, 32, 20, 10, 11, 3, cfg(2, 1, 1), GatedEluSigmoid),
        (1, 33, 6, 8, 12, 3, cfg(1, 1, 1), LeakyRelu(0.2)),
        // Enough channels that a tile row spans several full Winograd segments.
        (1, 384, 384, 9, 40, 3, cfg(1, 1, 1), Relu),
        (2, 32, 32, 12, 9, 3, cfg(1, 1, 1), Identity),
        // im2col path: few channels, dilation, stride, 4x4 down, 5x5, 1x1.
        (2, 5, 6, 9, 11, 3, cfg(1, 1, 1), Identity),
        (2, 9, 8, 13, 10, 3, cfg(2, 1, 2), Relu),
        (2, 6, 8, 9, 9, 3, cfg(4, 1, 4), GatedEluSigmoid),
        (2, 7, 8, 13, 11, 3, cfg(1, 2, 1), Identity),
        (2, 7, 8, 12, 10, 4, cfg(1, 2, 1), LeakyRelu(0.1)),
        (2, 7, 8, 11, 10, 5, cfg(2, 1, 1), Elu(0.5)),
        (1, 3, 8, 17, 15, 3, cfg(1, 2, 1), Relu),
        (2, 6, 4, 7, 9, 1, cfg(0, 1, 1), Identity),
        // Many channels: pixel blocks end mid-row, exercising the block seams.
        (2, 256, 8, 13, 11, 3, cfg(3, 1, 2), Relu),
        (1, 256, 6, 14, 12, 4, cfg(1, 2, 1), Identity),
    ];
    for (n, cin, cout, h, w, k, cfg, act) in cases {
        check_against_candle(
            Case {
                n,
                cin,
                cout,
                h,
                w,
                k,
                cfg,
                act,
            },
            &mut rng,
        );
    }
}

#[test]
fn random_shapes_match_candle() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Elu(1.0),
        Activation::GatedEluSigmoid,
    ];
    let mut done = 0;
    while done < 16 {
        let k = [1, 2, 3, 3, 3, 4, 5][rng.below(7)];
        let stride = 1 + rng.below(2);
        let dilation = 1 + rng.below(2);
        let padding = rng.below(3);
        let (h, w) = (3 + rng.below(12), 3 + rng.below(12));
        let span = dilation * (k - 1) + 1;
        if h + 2 * padding < span || w + 2 * padding < span {
            continue;
        }
        // candle 0.11's own conv2d backward derives the transposed conv's output padding from
        // the height only, so its reference gradients are wrong when the two axes leave
        // different remainders; keep to shapes where they agree.
        if (h + 2 * padding - span) % stride != (w + 2 * padding - span) % stride {
            continue;
        }
        let case = Case {
            n: 1 + rng.below(3),
            cin: 1 + rng.below(20),
            cout: 2 * (1 + rng.below(6)),
            h,
            w,
            k,
            cfg: cfg(padding, stride, dilation),
            act: acts[rng.below(acts.len())],
        };
        check_against_candle(case, &mut rng);
        done += 1;
    }
}

/// Gradient of `sum(conv(x, w, b) * r)` with respect to each tensor, checked element by element
/// against central finite differences (in f64 arithmetic on f32 data, hence the loose tolerance).
#[test]
fn gradients_match_finite_differences() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let cases = [
        // Winograd (3x3 stride 1, >= 8 channels) and im2col (strided, dilated) paths.
        (2, 8, 4, 5, 6, 3, cfg(1, 1, 1), Activation::Elu(1.0)),
        (1, 3, 4, 7, 6, 3, cfg(1, 2, 2), Activation::Identity),
        (1, 8, 4, 6, 5, 4, cfg(1, 2, 1), Activation::GatedEluSigmoid),
    ];
    for (n, cin, cout, h, w, k, cfg, act) in cases {
        let x = Var::from_tensor(&rng.tensor(&[n, cin, h, w], 1.0)).unwrap();
        let wt = Var::from_tensor(&rng.tensor(&[cout, cin, k, k], 0.3)).unwrap();
        let b = Var::from_tensor(&rng.tensor(&[cout], 0.3)).unwrap();
        let out = conv2d(&x, &wt, Some(&b), cfg, act).unwrap();
        let r = rng.tensor(out.dims(), 1.0);
        let loss = |x: &Tensor, wt: &Tensor, b: &Tensor| -> f64 {
            let o = conv2d(x, wt, Some(b), cfg, act).unwrap();
            let v = (o * &r)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            v.iter().map(|v| f64::from(*v)).sum()
        };
        let grads = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let eps = 1e-2f32;
        for which in 0..3 {
            let var = [&x, &wt, &b][which];
            let analytic = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let base = var.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for _ in 0..6 {
                let i = rng.below(base.len());
                let shifted = |d: f32| {
                    let mut v = base.clone();
                    v[i] += d;
                    Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()
                };
                let (p, m) = (shifted(eps), shifted(-eps));
                let (lp, lm) = match which {
                    0 => (loss(&p, &wt, &b), loss(&m, &wt, &b)),
                    1 => (loss(&x, &p, &b), loss(&x, &m, &b)),
                    _ => (loss(&x, &wt, &p), loss(&x, &wt, &m)),
                };
                let numeric = (lp - lm) / (2.0 * f64::from(eps));
                let a = f64::from(analytic[i]);
                assert!(
                    (a - numeric).abs() <= 2e-2 * (1.0 + numeric.abs()),
                    "tensor {which} index {i}: analytic {a} vs numeric {numeric} ({cfg:?}, {act:?})"
                );
            }
        }
    }
}

/// Inference (weights that are plain tensors) fuses the gated activation into the conv; it must
/// give the same result as the unfused training path.
#[test]
fn fused_gated_inference_matches_reference() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for (k, c) in [(3, cfg(1, 1, 1)), (4, cfg(1, 2, 1)), (3, cfg(2, 1, 2))] {
        let x = rng.tensor(&[2, 12, 10, 9], 1.0);
        let w = rng.tensor(&[16, 12, k, k], 0.2);
        let b = rng.tensor(&[16], 0.2);
        assert!(!x.track_op() && !w.track_op());
        let ours = conv2d(&x, &w, Some(&b), c, Activation::GatedEluSigmoid).unwrap();
        let pre = x
            .conv2d(&w, c.padding, c.stride, c.dilation, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 16, 1, 1)).unwrap())
            .unwrap();
        let reference = reference_activation(&pre, Activation::GatedEluSigmoid).unwrap();
        assert_eq!(ours.dims()[1], 8);
        assert!(rel_err(&ours, &reference) < 1e-4);
    }
}

#[test]
fn method_choice_follows_the_shape() {
    let geom = |cin, k, c| Geom::new(&(1, cin, 32, 32).into(), &(16, cin, k, k).into(), c).unwrap();
    assert_eq!(
        Method::choose(&geom(64, 3, cfg(1, 1, 1))),
        Method::Winograd4
    );
    assert_eq!(Method::choose(&geom(16, 3, cfg(1, 1, 1))), Method::Winograd);
    assert_eq!(Method::choose(&geom(64, 3, cfg(1, 2, 1))), Method::Im2col);
    assert_eq!(Method::choose(&geom(64, 3, cfg(2, 1, 2))), Method::Im2col);
    assert_eq!(Method::choose(&geom(3, 3, cfg(1, 1, 1))), Method::Im2col);
    assert_eq!(Method::choose(&geom(64, 5, cfg(2, 1, 1))), Method::Im2col);
}

#[test]
fn bad_inputs_are_errors_and_other_dtypes_fall_back() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((8, 3, 3, 3), DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &w, None, cfg(1, 1, 1), Activation::Relu).is_err());
    let w = Tensor::zeros((8, 4, 9, 9), DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &w, None, cfg(0, 1, 1), Activation::Relu).is_err());
    let w = Tensor::zeros((7, 4, 3, 3), DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &w, None, cfg(1, 1, 1), Activation::GatedEluSigmoid).is_err());
    let w = Tensor::zeros((8, 4, 3, 3), DType::F32, &dev).unwrap();
    let b = Tensor::zeros(5, DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &w, Some(&b), cfg(1, 1, 1), Activation::Relu).is_err());
    // Other dtypes fall back to candle's conv2d rather than failing.
    let x64 = Rng(3)
        .tensor(&[1, 4, 6, 5], 1.0)
        .to_dtype(DType::F64)
        .unwrap();
    let w64 = Rng(4)
        .tensor(&[8, 4, 3, 3], 0.3)
        .to_dtype(DType::F64)
        .unwrap();
    let ours = conv2d(&x64, &w64, None, cfg(1, 1, 1), Activation::Relu).unwrap();
    let reference = reference_conv2d(&x64, &w64, None, cfg(1, 1, 1), Activation::Relu).unwrap();
    assert_eq!(ours.dtype(), DType::F64);
    let diff = (ours - reference)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f64>().unwrap(), 0.0);
}

/// The shared blocks give the same output on both backends and name their weights as the
/// models will store them.
#[test]
fn layers_match_candle_backend_and_name_weights() {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &dev);
    let conv = Conv2dFast::new(
        vb.pp("c"),
        5,
        6,
        5,
        cfg(2, 1, 1),
        Activation::LeakyRelu(0.2),
    )
    .unwrap();
    let gated = GatedConv2d::new(vb.pp("g"), 6, 8, 4, cfg(1, 2, 1)).unwrap();
    let up = UpConv::new(vb.pp("u"), 8, 4).unwrap();
    let mut names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            "c.bias",
            "c.weight",
            "g.conv.bias",
            "g.conv.weight",
            "u.conv.bias",
            "u.conv.weight"
        ]
    );
    let x = Rng(77).tensor(&[2, 5, 12, 10], 1.0);
    let run = |backend| {
        let h = conv.clone().with_backend(backend).forward(&x).unwrap();
        let h = gated.clone().with_backend(backend).forward(&h).unwrap();
        up.clone().with_backend(backend).forward(&h).unwrap()
    };
    let (ours, reference) = (run(ConvBackend::Fast), run(ConvBackend::Candle));
    assert_eq!(ours.dims(), [2, 4, 12, 10]);
    assert!(rel_err(&ours, &reference) < 1e-4);
}

/// Our nearest 2x upsampling and its gradient against candle's `upsample_nearest2d`.
#[test]
fn upsample_matches_candle() {
    use kintsugi::models::conv::upsample_nearest2x;
    let x = Var::from_tensor(&Rng(5).tensor(&[2, 3, 5, 7], 1.0)).unwrap();
    let ours = upsample_nearest2x(&x).unwrap();
    let reference = x.upsample_nearest2d(10, 14).unwrap();
    assert!(rel_err(&ours, &reference) < 1e-6);
    let r = Rng(6).tensor(&[2, 3, 10, 14], 1.0);
    let g1 = (&ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (&reference * &r)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(rel_err(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5);
}

/// The vectorised `exp` used by ELU and the sigmoid gate stays within a few ulps of `f32::exp`.
#[test]
fn fast_exp_is_accurate() {
    use kintsugi::models::conv::activation::fast_exp;
    let mut x = -80.0f32;
    while x < 80.0 {
        let (ours, std) = (fast_exp(x), x.exp());
        assert!(
            (ours - std).abs() <= 4e-7 * std,
            "exp({x}): {ours} vs {std}"
        );
        x += 0.0137;
    }
    // Saturates instead of overflowing: tiny but positive below, finite above.
    assert!(fast_exp(-1000.0) > 0.0 && fast_exp(-1000.0) < 1e-37);
    assert!(fast_exp(1000.0).is_finite() && fast_exp(1000.0) > 1e38);
}

/// A first layer (input not tracked, weights trained) skips the input gradient but still gives
/// the weight and bias gradients.
#[test]
fn untracked_input_still_trains_weights() {
    let mut rng = Rng(99);
    let x = rng.tensor(&[2, 3, 9, 8], 1.0);
    let w = Var::from_tensor(&rng.tensor(&[8, 3, 5, 5], 0.2)).unwrap();
    let b = Var::from_tensor(&rng.tensor(&[8], 0.2)).unwrap();
    let c = cfg(2, 1, 1);
    let ours = conv2d(&x, &w, Some(&b), c, Activation::Elu(1.0)).unwrap();
    let reference = reference_conv2d(&x, &w, Some(&b), c, Activation::Elu(1.0)).unwrap();
    let g1 = ours.sum_all().unwrap().backward().unwrap();
    let g2 = reference.sum_all().unwrap().backward().unwrap();
    assert!(g1.get(&x).is_none());
    assert!(rel_err(g1.get(&w).unwrap(), g2.get(&w).unwrap()) < 1e-4);
    assert!(rel_err(g1.get(&b).unwrap(), g2.get(&b).unwrap()) < 1e-4);
}
