"""PyTorch CPU reference for `kintsugi bench-conv` (not shipped; run once in a venv).

Times the same workloads as the Rust benchmark with torch.set_num_threads(2), median of 5 after
one warm-up: the plain and gated inference stacks on a 1x3x512x512 input, one training step
(forward, backward, AdamW) of the same gated encoder-decoder generator at batch 8, 128x128, and
the forward pass of an exact twin of our cGAN inpainting generator
(`kintsugi::models::cgan::Generator`, base 16) on a 512x512 crop.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy safetensors
    /tmp/torchvenv/bin/python benches/conv_torch.py [threads] [--cgan-only] [--check DIR]

With `--check DIR` (a folder written by `kintsugi bench-conv --cgan-dump DIR`) the twin loads
our weights, runs on our inputs and reports the largest difference from our output; the timing
then uses those inputs too.
"""

import argparse
import json
import os
import statistics
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def median_ms(fn, reps=5):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


class Gated(nn.Module):
    def __init__(self, cin, cout, k, padding=0, stride=1, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, 2 * cout, k, stride, padding, dilation)

    def forward(self, x):
        a, g = self.conv(x).chunk(2, dim=1)
        return F.elu(a) * torch.sigmoid(g)


class Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = Gated(cin, cout, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def stack(gated):
    layers = [nn.Conv2d(3, 64, 3, 2, 1), nn.ReLU()]
    for _ in range(6):
        layers += [Gated(64, 64, 3, padding=1)] if gated else [nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU()]
    return nn.Sequential(*layers)


def generator():
    return nn.Sequential(
        Gated(5, 32, 5, padding=2),
        Gated(32, 64, 4, padding=1, stride=2),
        Gated(64, 128, 4, padding=1, stride=2),
        Gated(128, 128, 3, padding=2, dilation=2),
        Gated(128, 128, 3, padding=4, dilation=4),
        Gated(128, 128, 3, padding=1),
        Up(128, 64),
        Up(64, 32),
        nn.Conv2d(32, 3, 3, 1, 1),
        nn.Tanh(),
    )


class CganUp(Gated):
    """Our `UpConv`: nearest 2x upsampling, then a gated 3x3 conv (weights `<name>.conv.*`)."""

    def __init__(self, cin, cout):
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x):
        return super().forward(F.interpolate(x, scale_factor=2, mode="nearest"))


class CganGenerator(nn.Module):
    """Twin of `kintsugi::models::cgan::Generator` (see its module docs), parameter names as in
    our safetensors files, so `load_state_dict` takes our weights as they are."""

    def __init__(self, b=16):
        super().__init__()
        self.e1 = Gated(5, b, 5, padding=2)
        self.e2 = Gated(b, 3 * b, 3, padding=1, stride=2)
        self.e3 = Gated(3 * b, 3 * b, 3, padding=1)
        self.e4 = Gated(3 * b, 6 * b, 3, padding=1, stride=2)
        self.dilations = (2, 4, 8, 16, 1)
        for i, d in enumerate(self.dilations):
            setattr(self, f"mid{i}", Gated(6 * b, 6 * b, 3, padding=d, dilation=d))
        self.d1 = CganUp(6 * b, 3 * b)
        self.d2 = Gated(6 * b, 3 * b, 3, padding=1)
        self.d3 = CganUp(3 * b, b)
        self.d4 = Gated(2 * b, b, 3, padding=1)
        self.out = nn.Conv2d(b, 3, 3, 1, 1)

    def forward(self, image, mask, z):
        """`image` [n,3,h,w] in [0,1], `mask` and `z` [n,1,h,w]; returns (raw, composite)."""
        h, w = image.shape[-2:]
        keep = 1.0 - mask
        x = (image * 2.0 - 1.0) * keep
        inp = torch.cat([x, mask, z], 1)
        ph, pw = -h % 4, -w % 4
        if ph or pw:
            inp = F.pad(inp, (0, pw, 0, ph), mode="replicate")
        e1 = self.e1(inp)
        s2 = self.e3(self.e2(e1))
        y = self.e4(s2)
        for i in range(len(self.dilations)):
            y = getattr(self, f"mid{i}")(y)
        y = self.d2(torch.cat([self.d1(y), s2], 1))
        y = self.d4(torch.cat([self.d3(y), e1], 1))
        y = self.out(y)[..., :h, :w]
        raw = (torch.tanh(y) + 1.0) * 0.5
        return raw, raw * mask + image * keep


def load_safetensors(path):
    """Our f32 safetensors file as {name: tensor} (the `safetensors` package when installed,
    else a parse of the format: u64 header length, JSON header, raw little-endian data)."""
    try:
        from safetensors.torch import load_file

        return load_file(path)
    except ImportError:
        pass
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise ValueError(f"{name}: expected F32, got {info['dtype']}")
        lo, hi = info["data_offsets"]
        raw = bytearray(data[8 + n + lo : 8 + n + hi])
        out[name] = torch.frombuffer(raw, dtype=torch.float32).reshape(info["shape"])
    return out


def bench_cgan(check_dir, size):
    gen = CganGenerator(16).eval()
    params = sum(p.numel() for p in gen.parameters())
    print(f"cGAN generator twin: base 16, {params} parameters")
    if check_dir:
        import numpy as np

        gen.load_state_dict(load_safetensors(os.path.join(check_dir, "weights.safetensors")))
        image, mask, z, ours = (
            torch.from_numpy(np.load(os.path.join(check_dir, f"{n}.npy")))
            for n in ("image", "mask", "z", "out_raw")
        )
        with torch.no_grad():
            raw, _ = gen(image, mask, z)
        diff = (raw - ours).abs()
        print(
            f"  check vs {check_dir}: raw output max abs diff {diff.max().item():.3e}, "
            f"mean {diff.mean().item():.3e}, checksum (sum) {raw.sum().item():.4f} "
            f"(ours {ours.sum().item():.4f})"
        )
    else:
        g = torch.Generator().manual_seed(2024)
        image = torch.rand(1, 3, size, size, generator=g)
        mask = (torch.rand(1, 1, size, size, generator=g) < 0.2).float()
        z = torch.randn(1, 1, size, size, generator=g)
    h, w = image.shape[-2:]
    with torch.no_grad():
        ms = median_ms(lambda: gen(image, mask, z))
    print(f"cgan fwd {h}x{w}: {ms:.1f} ms, {h * w / 1e6 / (ms / 1e3):.3f} MP/s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("threads", nargs="?", type=int, default=2)
    ap.add_argument("--cgan-only", action="store_true", help="time only the cGAN generator twin")
    ap.add_argument("--skip-cgan", action="store_true", help="skip the cGAN generator twin")
    ap.add_argument("--check", metavar="DIR", help="folder from `kintsugi bench-conv --cgan-dump`")
    ap.add_argument("--cgan-size", type=int, default=512, help="crop side without --check")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of 5")
    if not args.cgan_only:
        conv_table()
    if not args.skip_cgan:
        bench_cgan(args.check, args.cgan_size)


def conv_table():
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        for gated in (False, True):
            net = stack(gated).eval()
            name = "gated" if gated else "plain"
            print(f"{name} stack 1x3x512x512: {median_ms(lambda: net(x)):.1f} ms")
    gen = generator()
    params = sum(p.numel() for p in gen.parameters())
    opt = torch.optim.AdamW(gen.parameters(), lr=1e-4)
    inp = torch.randn(8, 5, 128, 128)
    target = torch.tanh(0.5 * torch.randn(8, 3, 128, 128))

    def step():
        opt.zero_grad()
        loss = (gen(inp) - target).abs().mean()
        loss.backward()
        opt.step()

    print(f"train step gen b8 128x128 ({params} params): {median_ms(step):.1f} ms")


if __name__ == "__main__":
    main()
