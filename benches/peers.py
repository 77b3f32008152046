#!/usr/bin/env python3
"""Score the standard tools on the exact image/mask pairs `kintsugi eval --export-pairs` wrote.

Peers: OpenCV's cv2.inpaint (Telea and Navier-Stokes), scikit-image's inpaint_biharmonic and
PyPatchMatch (patch_size=3, as IOPaint uses it). Metrics use the same definitions as
`kintsugi eval`: holes blanked to black before restoring, results quantised to 8 bit, hole-PSNR
and hole-L1 over hole pixels and channels, whole-image PSNR, and SSIM with an 11-tap Gaussian
window (sigma 1.5, no sample covariance), on [0, 1] data.

Set up once (outside the repository):
    python3 -m venv /tmp/peers && /tmp/peers/bin/pip install opencv-python-headless scikit-image pypatchmatch
Run:
    kintsugi eval --images IMGS --masks MASKS --model telea --export-pairs PAIRS
    /tmp/peers/bin/python benches/peers.py PAIRS --methods cv2_telea,cv2_ns,skimage_biharmonic,pypatchmatch
"""

import argparse
import csv
import glob
import os
import sys
import time

import numpy as np
from PIL import Image


def load_pairs(folder):
    pairs = []
    for img_path in sorted(glob.glob(os.path.join(folder, "*_image.png"))):
        mask_path = img_path.replace("_image.png", "_mask.png")
        if os.path.exists(mask_path):
            img = np.asarray(Image.open(img_path).convert("RGB"))
            mask = np.asarray(Image.open(mask_path).convert("L")) > 0
            pairs.append((os.path.basename(img_path), img, mask))
    return pairs


def method_fn(name, radius):
    if name in ("cv2_telea", "cv2_ns"):
        import cv2

        flag = cv2.INPAINT_TELEA if name == "cv2_telea" else cv2.INPAINT_NS

        def run(img, mask):
            bgr = np.ascontiguousarray(img[:, :, ::-1])
            out = cv2.inpaint(bgr, mask.astype(np.uint8) * 255, radius, flag)
            return out[:, :, ::-1]

        return run
    if name == "skimage_biharmonic":
        from skimage.restoration import inpaint_biharmonic

        def run(img, mask):
            out = inpaint_biharmonic(img.astype(np.float64) / 255.0, mask, channel_axis=-1)
            return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)

        return run
    if name == "pypatchmatch":
        from patchmatch import patch_match

        def run(img, mask):
            return patch_match.inpaint(img, mask.astype(np.uint8) * 255, patch_size=3)

        return run
    raise SystemExit(f"unknown method {name}")


def metrics(clean, out, mask):
    from skimage.metrics import structural_similarity

    a = clean.astype(np.float64) / 255.0
    b = out.astype(np.float64) / 255.0
    d = (a - b)[mask]
    hole_mse = float(np.mean(d**2))
    mse = float(np.mean((a - b) ** 2))
    psnr = lambda m: float("inf") if m == 0 else -10.0 * np.log10(m)
    ssim = structural_similarity(
        a, b, channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )
    return psnr(hole_mse), float(np.mean(np.abs(d))), psnr(mse), float(ssim)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("pairs")
    ap.add_argument("--methods", default="cv2_telea,cv2_ns,skimage_biharmonic,pypatchmatch")
    ap.add_argument("--radius", type=int, default=5, help="cv2.inpaint radius")
    ap.add_argument("--csv")
    args = ap.parse_args()
    pairs = load_pairs(args.pairs)
    if not pairs:
        sys.exit(f"no *_image.png / *_mask.png pairs in {args.pairs}")
    rows = []
    for name in args.methods.split(","):
        run = method_fn(name, args.radius)
        for fname, img, mask in pairs:
            damaged = img.copy()
            damaged[mask] = 0
            t0 = time.perf_counter()
            out = run(damaged, mask)
            ms = (time.perf_counter() - t0) * 1000.0
            hp, hl1, p, s = metrics(img, out, mask)
            rows.append((fname, name, 100.0 * mask.mean(), hp, hl1, p, s, ms))
        mine = [r for r in rows if r[1] == name]
        mean = lambda k: sum(r[k] for r in mine) / len(mine)
        print(f"{name:<20} n={len(mine):<4} hole%={mean(2):6.2f} holePSNR={mean(3):6.2f} "
              f"holeL1={mean(4):.4f} PSNR={mean(5):6.2f} SSIM={mean(6):.4f} ms={mean(7):8.1f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "method", "hole_pct", "hole_psnr", "hole_l1", "psnr", "ssim", "ms"])
            w.writerows(rows)


if __name__ == "__main__":
    main()
