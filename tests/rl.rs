//! PixelRL agent: actions, reward, policy output, returns, training progress, save/load.

use candle_core::Device;
use kintsugi::rl::a2c::{discounted_returns, sample_actions, A2cConfig};
use kintsugi::rl::env::{apply_at, filter_frame, reward, step_frame, Action, Episode, Frame};
use kintsugi::rl::net::{observe, policy, LoadedNet, NetConfig};
use kintsugi::train::rl::{add_noise, RlTrainer};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// A `w x h` frame from a function of `(x, y, c)`.
fn frame(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> f32) -> Frame {
    let mut data = Vec::with_capacity(3 * w * h);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                data.push(f(x, y, c));
            }
        }
    }
    Frame::from_planar(w, h, data).unwrap()
}

fn px(f: &Frame, x: usize, y: usize) -> [f32; 3] {
    let p = f.w * f.h;
    [0, 1, 2].map(|c| f.data[c * p + y * f.w + x])
}

fn close(a: [f32; 3], b: [f32; 3]) -> bool {
    a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[test]
fn reward_is_the_decrease_of_squared_error() {
    // 2x1 image; target (0.5, 0.5, 0.5) and (0.2, 0.4, 0.6).
    let target = frame(
        2,
        1,
        |x, _, c| if x == 0 { 0.5 } else { [0.2, 0.4, 0.6][c] },
    );
    let before = frame(
        2,
        1,
        |x, _, c| if x == 0 { 0.7 } else { [0.2, 0.4, 0.9][c] },
    );
    let after = frame(
        2,
        1,
        |x, _, c| if x == 0 { 0.6 } else { [0.1, 0.4, 0.6][c] },
    );
    let r = reward(&target, &before, &after, 255.0, None);
    // Pixel 0: e_before = 0.04, e_after = 0.01 (every channel).
    assert!((r[0] - 255.0 * (0.04 - 0.01)).abs() < 1e-3, "{r:?}");
    // Pixel 1: e_before = 0.09 / 3, e_after = 0.01 / 3.
    assert!((r[1] - 255.0 * (0.09 - 0.01) / 3.0).abs() < 1e-3, "{r:?}");
    // Inactive pixels earn nothing.
    let r = reward(&target, &before, &after, 255.0, Some(&[false, true]));
    assert_eq!(r[0], 0.0);
    // Through an episode step: the rewards sum to the decrease of the summed squared error.
    let noisy = frame(6, 5, |x, y, c| {
        0.5 + if (x + y + c) % 2 == 0 { 0.1 } else { -0.1 }
    });
    let clean = frame(6, 5, |_, _, _| 0.5);
    let mut ep = Episode {
        target: clean.clone(),
        state: noisy.clone(),
        hole: None,
    };
    let e0: f32 = (0..30).map(|p| noisy.sq_err(&clean, p)).sum();
    let choice: Vec<u8> = (0..30).map(|p| (p % 9) as u8).collect();
    let r = ep.step(&Action::DENOISE, &choice, 1.0);
    let e1: f32 = (0..30).map(|p| ep.state.sq_err(&clean, p)).sum();
    assert!((r.iter().sum::<f32>() - (e0 - e1)).abs() < 1e-5);
}

#[test]
fn each_action_does_what_it_says() {
    // A flat grey image with one bright pixel at (2, 2) on a 5x5 grid.
    let img = frame(5, 5, |x, y, _| if (x, y) == (2, 2) { 1.0 } else { 0.5 });
    let at = |a: Action, x: usize, y: usize| apply_at(a, &img, None, x, y);
    let step = 1.0 / 255.0;
    assert!(close(at(Action::Keep, 2, 2), [1.0; 3]));
    assert!(close(at(Action::PlusOne, 0, 0), [0.5 + step; 3]));
    assert!(close(at(Action::MinusOne, 0, 0), [0.5 - step; 3]));
    // Median removes the outlier; box takes the 5x5 mean.
    assert!(close(at(Action::Median, 2, 2), [0.5; 3]));
    assert!(close(at(Action::Box, 2, 2), [0.5 + 0.5 / 25.0; 3]));
    // Gaussians: weighted means, the narrow one keeps more of the centre.
    let g1 = at(Action::GaussianNarrow, 2, 2)[0];
    let g2 = at(Action::GaussianWide, 2, 2)[0];
    assert!(g1 > g2 && g2 > 0.5 && g1 < 1.0, "{g1} {g2}");
    // Narrow Gaussian (sigma 0.5): centre weight 1 / (1 + 4e^-2 + 4e^-4).
    let e = |v: f32| v.exp();
    let wc = 1.0 / (1.0 + 4.0 * e(-2.0) + 4.0 * e(-4.0));
    assert!((g1 - (0.5 + 0.5 * wc)).abs() < 1e-5);
    // Bilateral keeps an outlier (far in colour), the loose one smooths it more.
    let bt = at(Action::BilateralTight, 2, 2)[0];
    let bl = at(Action::BilateralLoose, 2, 2)[0];
    assert!(bt > 0.99 && bl < bt, "{bt} {bl}");
    // On a flat region every smoothing action is the identity.
    let flat = frame(5, 5, |_, _, _| 0.5);
    for a in Action::ALL {
        if !matches!(a, Action::PlusOne | Action::MinusOne) {
            assert!(close(apply_at(a, &flat, None, 0, 4), [0.5; 3]), "{a:?}");
        }
    }
    // Diffuse: the mean of the 4 neighbours.
    assert!(close(
        at(Action::Diffuse, 2, 1),
        [(0.5 * 3.0 + 1.0) / 4.0; 3]
    ));
    assert!(close(at(Action::Diffuse, 2, 2), [0.5; 3]));
    // Masked median ignores the hole pixels: a 5x5 hole of 1.0 inside a 7x7 image of 0.2.
    let in_hole = |x: usize, y: usize| (1..=5).contains(&x) && (1..=5).contains(&y);
    let holed = frame(7, 7, |x, y, _| if in_hole(x, y) { 1.0 } else { 0.2 });
    let known: Vec<bool> = (0..49).map(|p| !in_hole(p % 7, p / 7)).collect();
    let mm = |x, y, k: Option<&[bool]>| apply_at(Action::MaskedMedian, &holed, k, x, y);
    assert!(close(mm(2, 2, Some(&known)), [0.2; 3]));
    // Without the mask the hole values win the median.
    assert!(close(mm(2, 2, None), [1.0; 3]));
    // No known neighbour: unchanged.
    assert!(close(mm(3, 3, Some(&known)), [1.0; 3]));
    // step_frame applies each pixel's own action, only where active.
    let choice = vec![1u8; 25];
    let mut choice2 = choice.clone();
    choice2[12] = 7; // median at the centre
    let set = Action::DENOISE;
    let out = step_frame(&img, &set, &choice2, None, None);
    assert!(close(px(&out, 2, 2), [0.5; 3]));
    let mut active = vec![true; 25];
    active[12] = false;
    let out = step_frame(&img, &set, &choice2, None, Some(&active));
    assert!(close(px(&out, 2, 2), [1.0; 3]));
    // filter_frame = the action everywhere.
    let f = filter_frame(&img, Action::Median);
    assert!(f.data.iter().all(|&v| (v - 0.5).abs() < 1e-6));
    // Names round-trip.
    for a in Action::ALL {
        assert_eq!(Action::from_name(a.name()), Some(a));
    }
}

#[test]
fn policy_is_a_distribution_per_pixel() {
    let dev = Device::Cpu;
    let cfg = NetConfig {
        channels: 8,
        actions: 9,
    };
    let net = LoadedNet::fresh(cfg, 3, &dev).unwrap();
    let img = frame(12, 10, |x, y, c| ((x * 7 + y * 3 + c) % 11) as f32 / 10.0);
    let obs = observe(&[&img, &img], &[None, None], 0.2, &dev).unwrap();
    let (logits, value) = net.net.forward(&obs).unwrap();
    assert_eq!(logits.dims(), &[2, 9, 10, 12]);
    assert_eq!(value.dims(), &[2, 1, 10, 12]);
    let p = policy(&logits).unwrap();
    let sums: Vec<f32> = p.sum(1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    let all: Vec<f32> = p.flatten_all().unwrap().to_vec1().unwrap();
    assert!(all.iter().all(|&v| (0.0..=1.0).contains(&v)));
    // Sampling gives valid indices, reproducibly for a seed.
    let a = sample_actions(&p, &mut StdRng::seed_from_u64(1)).unwrap();
    let b = sample_actions(&p, &mut StdRng::seed_from_u64(1)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert!(a.iter().all(|m| m.len() == 120 && m.iter().all(|&k| k < 9)));
    // Greedy picks one action per pixel.
    let g = net.greedy(&obs).unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].len(), 120);
}

#[test]
fn returns_are_discounted_per_pixel() {
    let r = vec![vec![1.0, 0.0], vec![2.0, 1.0], vec![4.0, 0.0]];
    let ret = discounted_returns(&r, 0.5);
    assert_eq!(ret[2], vec![4.0, 0.0]);
    assert_eq!(ret[1], vec![4.0, 1.0]);
    assert_eq!(ret[0], vec![3.0, 0.5]);
}

#[test]
fn weights_round_trip() {
    let dev = Device::Cpu;
    let cfg = NetConfig {
        channels: 4,
        actions: 11,
    };
    let net = LoadedNet::fresh(cfg, 5, &dev).unwrap();
    let dir = std::env::temp_dir().join(format!("kintsugi-rl-{}", std::process::id()));
    let path = dir.join("net.safetensors");
    net.save(&path).unwrap();
    let back = LoadedNet::load(cfg, &path, &dev).unwrap();
    let img = frame(8, 8, |x, y, c| ((x + 2 * y + c) % 5) as f32 / 4.0);
    let obs = observe(&[&img], &[None], 0.0, &dev).unwrap();
    assert_eq!(net.greedy(&obs).unwrap(), back.greedy(&obs).unwrap());
    let wrong = NetConfig {
        channels: 5,
        actions: 11,
    };
    assert!(LoadedNet::load(wrong, &path, &dev).is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn short_training_increases_mean_reward() {
    // Tiny task: smooth gradients with strong noise; the best single action is a wide
    // smoother, which the random initial policy picks a fraction of the time.
    let dev = Device::Cpu;
    let a2c = A2cConfig {
        steps: 3,
        ..A2cConfig::default()
    };
    let mut t = RlTrainer::new(8, Action::DENOISE.to_vec(), a2c, 3e-3, 11, &dev).unwrap();
    let batch = |k: u64| -> Vec<Episode> {
        (0..4u64)
            .map(|j| {
                let clean = frame(16, 16, |x, y, c| {
                    0.3 + 0.02 * x as f32 + 0.01 * y as f32 + 0.05 * c as f32
                });
                let state = add_noise(&clean, 40.0, k * 16 + j);
                Episode {
                    target: clean,
                    state,
                    hole: None,
                }
            })
            .collect()
    };
    let mut rewards = Vec::new();
    for k in 0..80u64 {
        let mut eps = batch(k);
        let mut rng = StdRng::seed_from_u64(k);
        let s = t.update(&mut eps, &mut rng, &dev).unwrap();
        assert!(s.loss.is_finite());
        rewards.push(s.mean_reward);
    }
    let first: f64 = rewards[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = rewards[70..].iter().sum::<f64>() / 10.0;
    assert!(
        last > first * 1.05,
        "mean reward did not increase: first {first:.4}, last {last:.4}"
    );
    // The greedy agent then beats the noisy input on fresh data.
    let eval = batch(999);
    let (before, after) = t.evaluate(&eval, &dev).unwrap();
    assert!(after > before + 1.0, "{before} -> {after}");
}

#[test]
fn refine_changes_only_hole_pixels() {
    use kintsugi::imaging::{ImageF32, Mask};
    use kintsugi::rl::agent::{Agent, RlManifest};
    let dev = Device::Cpu;
    let set = Action::ALL.to_vec();
    let cfg = NetConfig {
        channels: 4,
        actions: set.len(),
    };
    let net = LoadedNet::fresh(cfg, 9, &dev).unwrap();
    let manifest = RlManifest {
        id: "test".into(),
        family: "rl".into(),
        task: "refine".into(),
        architecture: String::new(),
        net: cfg,
        params: net.param_count(),
        actions: set.iter().map(|a| a.name().to_owned()).collect(),
        a2c: A2cConfig::default(),
        optimiser: String::new(),
        data: String::new(),
        data_license: String::new(),
        crop: 16,
        batch: 1,
        updates: 0,
        train_seconds: 0.0,
        updates_per_sec: 0.0,
        command: String::new(),
        seed: 0,
        last_train: None,
        metrics: None,
        refine_metrics: None,
        start: None,
        holes: None,
        init: None,
    };
    let agent = Agent::from_net(net, manifest, set);
    let img = ImageF32::from_fn(20, 14, 3, |x, y, c| {
        ((x * 3 + y * 5 + c) % 13) as f32 / 12.0
    });
    let mask = Mask::from_fn(20, 14, |x, y| (8..12).contains(&x) && (5..9).contains(&y));
    let mut steps = 0;
    let out = kintsugi::rl::refine::refine_fill(&agent, &img, &mask, &mut |_, _| {
        steps += 1;
        true
    })
    .unwrap();
    assert_eq!(steps, 5);
    for y in 0..14 {
        for x in 0..20 {
            if !mask.get(x, y) {
                assert_eq!(out.pixel(x, y), img.pixel(x, y));
            }
        }
    }
}

/// A tiny untrained agent over `set` (random policy, but a fixed one: episodes are
/// deterministic).
fn tiny_agent(set: Vec<Action>, task: &str, seed: u64) -> kintsugi::rl::agent::Agent {
    use kintsugi::rl::agent::{Agent, RlManifest};
    let cfg = NetConfig {
        channels: 4,
        actions: set.len(),
    };
    let net = LoadedNet::fresh(cfg, seed, &Device::Cpu).unwrap();
    // Sharpen the near-uniform fresh policy so the greedy choice varies from pixel to pixel.
    for (name, var) in kintsugi::rl::net::named_vars(&net.varmap).unwrap() {
        if name == "policy1.weight" {
            var.set(&(var.as_tensor() * 30.0).unwrap()).unwrap();
        }
    }
    let manifest = RlManifest {
        id: "tiny".into(),
        family: "rl".into(),
        task: task.into(),
        architecture: String::new(),
        net: cfg,
        params: net.param_count(),
        actions: set.iter().map(|a| a.name().to_owned()).collect(),
        a2c: A2cConfig::default(),
        optimiser: String::new(),
        data: String::new(),
        data_license: String::new(),
        crop: 16,
        batch: 1,
        updates: 0,
        train_seconds: 0.0,
        updates_per_sec: 0.0,
        command: String::new(),
        seed: 0,
        last_train: None,
        metrics: None,
        refine_metrics: None,
        start: None,
        holes: None,
        init: None,
    };
    Agent::from_net(net, manifest, set)
}

fn textured(w: usize, h: usize) -> Frame {
    frame(w, h, |x, y, c| {
        ((x as f32 * 0.4).sin() * (y as f32 * 0.3).cos() * 0.35 + 0.5 + 0.05 * c as f32)
            .clamp(0.0, 1.0)
    })
}

#[test]
fn recorded_episode_replays_exactly_and_rewards_telescope() {
    use kintsugi::rl::episode::{record_episode, replay};
    let agent = tiny_agent(Action::DENOISE.to_vec(), "denoise", 3);
    let clean = textured(24, 20);
    let noisy = add_noise(&clean, 25.0, 5);
    let mut seen = Vec::new();
    let rec = record_episode(&agent, &noisy, None, Some(&clean), &mut |s| {
        seen.push(s.step);
        true
    })
    .unwrap();
    assert_eq!(
        seen,
        vec![1, 2, 3, 4, 5],
        "every step is reported as it is made"
    );
    assert_eq!(rec.len(), 5);
    assert_eq!(rec.frame(0), Some(&noisy));
    // The policy really chooses per pixel: more than one action in the first map.
    let first = &rec.steps[0].actions;
    assert!(
        first.iter().any(|&a| a != first[0]),
        "one action everywhere"
    );
    // Replaying the recorded action maps gives every step's image bit for bit.
    let maps: Vec<Vec<u8>> = rec.steps.iter().map(|s| s.actions.clone()).collect();
    let frames = replay(&agent.set, &noisy, None, &maps);
    assert_eq!(frames.len(), 6);
    for (t, f) in frames.iter().enumerate() {
        assert_eq!(Some(f), rec.frame(t), "step {t} differs from its replay");
    }
    // A step's PSNR before is the previous step's after, and the mean rewards telescope to
    // the total decrease of squared error.
    for pair in rec.steps.windows(2) {
        assert_eq!(pair[0].stats.psnr_after, pair[1].stats.psnr_before);
    }
    let scale = f64::from(agent.manifest.a2c.reward_scale);
    let expected = scale * (noisy.mse(&clean, None) - rec.steps[4].image.mse(&clean, None));
    let total = rec.total_reward().unwrap();
    assert!(
        (total - expected).abs() < 1e-4 * expected.abs().max(1.0),
        "{total} vs {expected}"
    );
    for s in &rec.steps {
        let sum: f64 = s.stats.share.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9, "shares sum to {sum}");
        assert!(s.stats.mean_change >= 0.0);
    }
}

#[test]
fn recorded_refine_episode_acts_on_the_hole_and_stops_on_request() {
    use kintsugi::rl::episode::record_episode;
    let agent = tiny_agent(Action::ALL.to_vec(), "refine", 4);
    let clean = textured(20, 16);
    let hole: Vec<bool> = (0..20 * 16)
        .map(|p| (6..12).contains(&(p % 20)) && (4..10).contains(&(p / 20)))
        .collect();
    let mut start = clean.clone();
    for (p, _) in hole.iter().enumerate().filter(|(_, &h)| h) {
        for c in 0..3 {
            start.data[c * 320 + p] = 0.5;
        }
    }
    let mut calls = 0;
    let rec = record_episode(&agent, &start, Some(&hole), None, &mut |_| {
        calls += 1;
        calls < 2
    })
    .unwrap();
    assert_eq!(rec.len(), 2, "stopped after the second step");
    for t in 0..=2 {
        let f = rec.frame(t).unwrap();
        for p in (0..320).filter(|&p| !hole[p]) {
            for c in 0..3 {
                assert_eq!(f.data[c * 320 + p], start.data[c * 320 + p]);
            }
        }
    }
    // No target: no reward or PSNR, but the change is measured.
    assert!(rec.steps[0].stats.mean_reward.is_none());
    assert!(rec.steps[0].stats.psnr_change().is_none());
    assert!(rec.total_reward().is_none());
    assert!(
        rec.steps[0].stats.mean_change > 0.0,
        "the grey hole was not touched"
    );
    // Mismatched inputs are refused, not a panic.
    assert!(record_episode(&agent, &start, Some(&hole[..10]), None, &mut |_| true).is_err());
}

#[test]
fn rl_refine_cgan_refines_the_cgan_fill_through_the_registry() {
    use kintsugi::imaging::{ImageF32, Mask};
    use kintsugi::models::registry::{Availability, Registry};
    use kintsugi::restore::pipeline::{restore_image, Silent};
    use kintsugi::restore::Params;
    let weights = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    let reg = Registry::new(&weights);
    let refine = reg
        .restorer("rl-refine-cgan")
        .expect("rl-refine-cgan loads");
    assert_eq!(refine.id(), "rl-refine-cgan");
    let cgan = reg.restorer("cgan-inpaint").expect("cgan loads");
    let img = ImageF32::from_fn(64, 48, 3, |x, y, c| {
        ((x as f32 * 0.15).sin() * 0.3 + (y as f32 * 0.1).cos() * 0.2 + 0.45 + 0.03 * c as f32)
            .clamp(0.0, 1.0)
    });
    let mask = Mask::from_fn(64, 48, |x, y| {
        (26..38).contains(&x) && (18..28).contains(&y)
    });
    let out = restore_image(refine.as_ref(), &img, &mask, &Params::new(), &Silent).unwrap();
    let fill = restore_image(cgan.as_ref(), &img, &mask, &Params::new(), &Silent).unwrap();
    let mut changed = 0;
    for y in 0..48 {
        for x in 0..64 {
            if mask.get(x, y) {
                assert!(out.pixel(x, y).iter().all(|v| v.is_finite()));
                if out.pixel(x, y) != fill.pixel(x, y) {
                    changed += 1;
                }
            } else {
                assert_eq!(out.pixel(x, y), img.pixel(x, y), "known pixel ({x}, {y})");
            }
        }
    }
    assert!(
        changed > mask.count() / 2,
        "the agent changed {changed} hole pixels"
    );
    // Loading it with another starting fill than the one it was trained on is refused.
    let err = kintsugi::rl::refine::RlRefine::load(&weights, "rl-refine-cgan")
        .err()
        .expect("a Telea start is refused");
    assert!(err.to_string().contains("cgan-inpaint"), "{err}");
    // Without the cGAN's weights it is listed as unavailable, with the reason.
    let dir = tempfile::tempdir().unwrap();
    for ext in ["safetensors", "json"] {
        std::fs::copy(
            weights.join(format!("rl-refine-cgan.{ext}")),
            dir.path().join(format!("rl-refine-cgan.{ext}")),
        )
        .unwrap();
    }
    let info = Registry::new(dir.path())
        .list()
        .into_iter()
        .find(|m| m.id == "rl-refine-cgan")
        .expect("listed");
    match info.availability {
        Availability::Unavailable(reason) => assert!(reason.contains("start fill"), "{reason}"),
        Availability::Available => panic!("available without the cGAN"),
    }
}
