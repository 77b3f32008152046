"""PyTorch CPU reference for `kintsugi bench-conv` (not shipped; run once in a venv).

Times the same workloads as the Rust benchmark with torch.set_num_threads(2), median of 5 after
one warm-up: the plain and gated inference stacks on a 1x3x512x512 input, and one training step
(forward, backward, AdamW) of the same gated encoder-decoder generator at batch 8, 128x128.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch
    /tmp/torchvenv/bin/python benches/conv_torch.py
"""

import statistics
import sys
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


def main():
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of 5")
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
