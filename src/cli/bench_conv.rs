//! `kintsugi bench-conv`: times our convolutions against candle's built-in conv2d.
//!
//! Three workloads, each run with both backends in the same process so the ratio is fair:
//! - the plain stack: 1x3x512x512 input, a stride-2 3->64 conv, then six 64->64 3x3 ReLU layers
//!   at 256x256 (inference);
//! - the gated stack: the same with six gated layers (64->128 conv, split, ELU x sigmoid);
//! - one training step (forward, backward, AdamW) of a small gated encoder-decoder generator,
//!   the stand-in for our cGAN, at batch 8 and 128x128.
//!
//! Each figure is the median of `--reps` runs after one warm-up run; our runs and candle's
//! alternate so that load from other processes affects both alike.
//!
//! Then the real cGAN inpainting generator ([`crate::models::cgan::Generator`], base 16, the
//! shipped weights when present, else seeded ones) runs forward on a `--cgan-size` square crop
//! (default 1x3x512x512 plus mask and noise), in two forms: frozen weights (plain tensors, so
//! the gated layers fuse their activation) and as [`LoadedGenerator::load`] ships it (weights
//! as variables, so every gated layer runs its conv and its gate as separate ops).
//! `benches/conv_torch.py` times the same architecture in PyTorch; `--cgan-dump DIR` writes
//! the weights used, the inputs and our output there so that script can check that its twin
//! computes the same function.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

use crate::models::cgan::{self, GeneratorConfig, LoadedGenerator};
use crate::models::conv::{Activation, ConvConfig};
use crate::models::layers::{Conv2dFast, ConvBackend, GatedConv2d, UpConv};

/// Options of `kintsugi bench-conv`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Worker threads for both backends.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Timed runs per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Batch size of the training step.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Side of the training images.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Skip the training-step benchmark (the slowest part with candle's conv).
    #[arg(long)]
    pub skip_train: bool,
    /// Weights of the cGAN generator timed at the end (seeded random weights when the file is
    /// missing; timing does not depend on the values).
    #[arg(long, default_value = "weights/cgan-inpaint.safetensors")]
    pub cgan_weights: PathBuf,
    /// Side of the square crop the cGAN generator runs on.
    #[arg(long, default_value_t = 512)]
    pub cgan_size: usize,
    /// Time only the cGAN generator (skip the conv-stack table).
    #[arg(long)]
    pub cgan_only: bool,
    /// Skip the cGAN generator.
    #[arg(long, conflicts_with = "cgan_only")]
    pub skip_cgan: bool,
    /// Write the cGAN weights used, the inputs and our output (`.npy`, f32) to this folder, for
    /// `benches/conv_torch.py --check DIR`.
    #[arg(long)]
    pub cgan_dump: Option<PathBuf>,
}

/// Runs the benchmark and prints the table.
pub fn run(args: Args) -> anyhow::Result<()> {
    // candle sizes its GEMM split and its element-wise worker pool from RAYON_NUM_THREADS (else
    // from the physical core count, re-read from /proc/cpuinfo on every matmul); pin it to the
    // same thread count as ours so both backends get the same cores. Set before any worker
    // thread exists, so no other thread can be reading the environment.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", args.threads.max(1).to_string());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.max(1))
        .build()
        .context("building the thread pool")?;
    pool.install(|| run_in_pool(&args))
}

fn run_in_pool(args: &Args) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let reps = args.reps.max(1);
    println!(
        "bench-conv: {} threads (RAYON_NUM_THREADS={}), median of {reps} after one warm-up",
        args.threads,
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default()
    );
    if !args.cgan_only {
        conv_table(args, &dev, reps)?;
    }
    if !args.skip_cgan {
        bench_cgan(args, &dev, reps)?;
    }
    Ok(())
}

/// The conv-stack and training-step table, ours against candle's conv.
fn conv_table(args: &Args, dev: &Device, reps: usize) -> anyhow::Result<()> {
    let dev = dev.clone();
    println!(
        "{:<34} {:>10} {:>12} {:>8}",
        "workload", "ours ms", "candle ms", "ratio"
    );
    let x = Tensor::randn(0f32, 1.0, (1, 3, 512, 512), &dev)?;
    for gated in [false, true] {
        let name = if gated {
            "gated stack 1x3x512x512"
        } else {
            "plain stack 1x3x512x512"
        };
        let ours = Stack::new(gated, ConvBackend::Fast, &dev)?;
        let theirs = ours.with_backend(ConvBackend::Candle);
        check_close(&ours.forward(&x)?, &theirs.forward(&x)?, name)?;
        let (t_ours, t_candle) = medians_ms(
            reps,
            || ours.forward(&x).map(drop),
            || theirs.forward(&x).map(drop),
        )?;
        print_row(name, t_ours, t_candle);
    }
    if !args.skip_train {
        let name = format!("train step gen b{} {}x{}", args.batch, args.size, args.size);
        let mut ours = Trainer::new(ConvBackend::Fast, args, &dev)?;
        let mut theirs = Trainer::new(ConvBackend::Candle, args, &dev)?;
        println!("  (generator: {} parameters)", ours.params);
        let (t_ours, t_candle) = medians_ms(reps, || ours.step(), || theirs.step())?;
        print_row(&name, t_ours, t_candle);
    }
    Ok(())
}

fn print_row(name: &str, ours: f64, candle: f64) {
    println!(
        "{name:<34} {ours:>10.1} {candle:>12.1} {:>7.2}x",
        candle / ours
    );
}

/// Times the real cGAN generator's forward pass, frozen and as loaded (see the module docs).
fn bench_cgan(args: &Args, dev: &Device, reps: usize) -> anyhow::Result<()> {
    let cfg = GeneratorConfig::default();
    let (loaded, source) = if args.cgan_weights.is_file() {
        let g = LoadedGenerator::load(cfg, &args.cgan_weights, dev)?;
        (g, args.cgan_weights.display().to_string())
    } else {
        let g = LoadedGenerator::fresh(cfg, 7, dev)?;
        (g, "seeded random weights (no weights file)".to_string())
    };
    // Plain-tensor copies of the same weights: nothing is tracked, so gated layers fuse.
    let fused = cgan::Generator::new(frozen(&loaded.varmap, dev)?, cfg)?;
    let side = args.cgan_size.max(1);
    let (image, mask, z) = cgan_inputs(side, dev)?;
    let run_fused = || {
        fused
            .forward(&image, &mask, &z)
            .map_err(candle_core::Error::wrap)
    };
    let run_loaded = || {
        loaded
            .gen
            .forward(&image, &mask, &z)
            .map_err(candle_core::Error::wrap)
    };
    let out = run_fused()?.raw;
    check_close(
        &out,
        &run_loaded()?.raw,
        "cgan generator fused vs as loaded",
    )?;
    let sum = out.sum_all()?.to_scalar::<f32>()?;
    println!(
        "cGAN generator: base {}, {} parameters, {source}",
        cfg.base,
        loaded.param_count()
    );
    println!("  input 1x3x{side}x{side} + mask + z, raw output checksum (sum) {sum:.4}");
    if let Some(dir) = &args.cgan_dump {
        dump_cgan(
            dir,
            &loaded,
            &[("image", &image), ("mask", &mask), ("z", &z)],
            &out,
        )?;
        println!(
            "  wrote weights, inputs and our output to {}",
            dir.display()
        );
    }
    let (t_fused, t_loaded) =
        medians_ms(reps, || run_fused().map(drop), || run_loaded().map(drop))?;
    let mpix = (side * side) as f64 / 1e6;
    for (what, ms) in [
        ("frozen weights (fused gates)", t_fused),
        ("as loaded (variables, unfused)", t_loaded),
    ] {
        println!(
            "{:<34} {ms:>10.1} ms {:>8.3} MP/s",
            format!("cgan fwd {side}x{side} {what}"),
            mpix / (ms / 1e3)
        );
    }
    Ok(())
}

/// Seeded generator inputs for a `side x side` crop: a random image, a mask with a disc and a
/// diagonal stroke as holes, and standard-normal noise.
fn cgan_inputs(side: usize, dev: &Device) -> anyhow::Result<(Tensor, Tensor, Tensor)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let pixels: Vec<f32> = (0..3 * side * side).map(|_| rng.random::<f32>()).collect();
    let image = Tensor::from_vec(pixels, (1, 3, side, side), dev)?;
    let c = side as f32 / 2.0;
    let r = side as f32 / 6.0;
    let holes: Vec<f32> = (0..side * side)
        .map(|i| {
            let (y, x) = ((i / side) as f32, (i % side) as f32);
            let disc = (x - c).powi(2) + (y - c).powi(2) < r * r;
            let stroke = (x - y).abs() < 3.0;
            if disc || stroke {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(holes, (1, 1, side, side), dev)?;
    let noise = cgan::seeded_normal(&mut rng, side * side);
    let z = Tensor::from_vec(noise, (1, 1, side, side), dev)?;
    Ok((image, mask, z))
}

/// Writes `weights.safetensors`, one `<name>.npy` per input and `out_raw.npy` to `dir`.
fn dump_cgan(
    dir: &Path,
    gen: &LoadedGenerator,
    inputs: &[(&str, &Tensor)],
    out: &Tensor,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    gen.save(&dir.join("weights.safetensors"))?;
    for (name, t) in inputs {
        write_npy(&dir.join(format!("{name}.npy")), t)?;
    }
    write_npy(&dir.join("out_raw.npy"), out)
}

/// Writes an f32 tensor as a NumPy `.npy` file (format 1.0, little-endian, C order).
fn write_npy(path: &Path, t: &Tensor) -> anyhow::Result<()> {
    let shape: String = t.dims().iter().map(|d| format!("{d}, ")).collect();
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let len = u16::try_from(header.len()).context("npy header too long")?;
    let data = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Median wall times of `reps` calls of `ours` and of `theirs`, after one warm-up call each.
/// The calls alternate, so a burst of load from other processes hits both sides alike instead
/// of skewing the ratio.
fn medians_ms(
    reps: usize,
    mut ours: impl FnMut() -> candle_core::Result<()>,
    mut theirs: impl FnMut() -> candle_core::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    ours()?;
    theirs()?;
    let mut times = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps {
        let t = Instant::now();
        ours()?;
        times.0.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        theirs()?;
        times.1.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(times.0), median(times.1)))
}

/// Fails when the two backends disagree beyond float tolerance: a fast wrong answer is no win.
fn check_close(a: &Tensor, b: &Tensor, what: &str) -> anyhow::Result<()> {
    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    let scale = b
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?
        .max(1e-6);
    if diff / scale > 1e-3 {
        anyhow::bail!("{what}: our output differs from candle's by {diff} (scale {scale})");
    }
    Ok(())
}

/// Frozen (non-trainable) copies of the variables in `map`, as inference loads them.
fn frozen(map: &VarMap, dev: &Device) -> anyhow::Result<VarBuilder<'static>> {
    let data = map
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map poisoned"))?;
    let tensors: HashMap<String, Tensor> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    Ok(VarBuilder::from_tensors(tensors, DType::F32, dev))
}

/// The inference stacks: a stride-2 3->64 conv then six 64->64 layers, plain or gated.
struct Stack {
    first: Conv2dFast,
    plain: Vec<Conv2dFast>,
    gated: Vec<GatedConv2d>,
}

impl Stack {
    fn new(gated: bool, backend: ConvBackend, dev: &Device) -> anyhow::Result<Self> {
        let map = VarMap::new();
        let build = |vb: VarBuilder| -> candle_core::Result<Self> {
            let same = ConvConfig {
                padding: 1,
                ..ConvConfig::default()
            };
            let down = ConvConfig {
                padding: 1,
                stride: 2,
                dilation: 1,
            };
            let first = Conv2dFast::new(vb.pp("first"), 3, 64, 3, down, Activation::Relu)?;
            let mut plain = Vec::new();
            let mut gates = Vec::new();
            for i in 0..6 {
                let vb = vb.pp(format!("layer{i}"));
                if gated {
                    gates.push(GatedConv2d::new(vb, 64, 64, 3, same)?);
                } else {
                    plain.push(Conv2dFast::new(vb, 64, 64, 3, same, Activation::Relu)?);
                }
            }
            Ok(Self {
                first,
                plain,
                gated: gates,
            }
            .with_backend(backend))
        };
        // Create the weights, then rebuild from frozen copies: inference weights are plain
        // tensors, which lets the gated layers fuse their activation.
        build(VarBuilder::from_varmap(&map, DType::F32, dev))?;
        Ok(build(frozen(&map, dev)?)?)
    }

    fn with_backend(&self, backend: ConvBackend) -> Self {
        Self {
            first: self.first.clone().with_backend(backend),
            plain: self
                .plain
                .iter()
                .map(|l| l.clone().with_backend(backend))
                .collect(),
            gated: self
                .gated
                .iter()
                .map(|l| l.clone().with_backend(backend))
                .collect(),
        }
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.first.forward(x)?;
        for l in &self.plain {
            h = l.forward(&h)?;
        }
        for l in &self.gated {
            h = l.forward(&h)?;
        }
        Ok(h)
    }
}

/// A small gated encoder-decoder generator (about 1.4M parameters), the stand-in for our cGAN:
/// RGB + mask + noise in, RGB out; strided 4x4 downsampling, a dilated middle, nearest-upsample
/// + gated conv decoding.
struct Generator {
    layers: Vec<Box<dyn Module>>,
}

impl Generator {
    fn new(vb: VarBuilder, backend: ConvBackend) -> candle_core::Result<Self> {
        let cfg = |padding, stride, dilation| ConvConfig {
            padding,
            stride,
            dilation,
        };
        let g = |name: &str, cin, cout, k, c| -> candle_core::Result<Box<dyn Module>> {
            Ok(Box::new(
                GatedConv2d::new(vb.pp(name), cin, cout, k, c)?.with_backend(backend),
            ))
        };
        let up = |name: &str, cin, cout| -> candle_core::Result<Box<dyn Module>> {
            Ok(Box::new(
                UpConv::new(vb.pp(name), cin, cout)?.with_backend(backend),
            ))
        };
        let out = Conv2dFast::new(vb.pp("out"), 32, 3, 3, cfg(1, 1, 1), Activation::Identity)?;
        Ok(Self {
            layers: vec![
                g("enc1", 5, 32, 5, cfg(2, 1, 1))?,
                g("enc2", 32, 64, 4, cfg(1, 2, 1))?,
                g("enc3", 64, 128, 4, cfg(1, 2, 1))?,
                g("mid1", 128, 128, 3, cfg(2, 1, 2))?,
                g("mid2", 128, 128, 3, cfg(4, 1, 4))?,
                g("mid3", 128, 128, 3, cfg(1, 1, 1))?,
                up("dec1", 128, 64)?,
                up("dec2", 64, 32)?,
                Box::new(out.with_backend(backend)),
            ],
        })
    }
}

impl Module for Generator {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        h.tanh()
    }
}

/// The generator, its optimizer and one batch: everything a timed training step needs.
struct Trainer {
    gen: Generator,
    opt: AdamW,
    x: Tensor,
    target: Tensor,
    params: usize,
}

impl Trainer {
    fn new(backend: ConvBackend, args: &Args, dev: &Device) -> anyhow::Result<Self> {
        let map = VarMap::new();
        let gen = Generator::new(VarBuilder::from_varmap(&map, DType::F32, dev), backend)?;
        let params = map.all_vars().iter().map(|v| v.elem_count()).sum();
        let (b, s) = (args.batch, args.size);
        let x = Tensor::randn(0f32, 1.0, (b, 5, s, s), dev)?;
        let target = Tensor::randn(0f32, 0.5, (b, 3, s, s), dev)?.tanh()?;
        let opt = AdamW::new(
            map.all_vars(),
            ParamsAdamW {
                lr: 1e-4,
                ..ParamsAdamW::default()
            },
        )?;
        Ok(Self {
            gen,
            opt,
            x,
            target,
            params,
        })
    }

    /// One forward + backward + AdamW step on an L1 loss.
    fn step(&mut self) -> candle_core::Result<()> {
        let loss = (self.gen.forward(&self.x)? - &self.target)?
            .abs()?
            .mean_all()?;
        self.opt.backward_step(&loss)
    }
}
