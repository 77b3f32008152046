#!/usr/bin/env python3
"""Trains Kintsugi's damage detector on a GPU: a PyTorch twin of `DetectNet`
(src/detect/learned.rs), fed by `kintsugi train detect-data`, so the samples, labels and loss
are those of `kintsugi train detect` (src/train/detect.rs).

For a lent GPU machine, which has PyTorch but no Rust toolchain: stage the data and build the
CLI here, carry both, run this there, and bring the weights back. They are f16 safetensors with
the Rust network's tensor names; `kintsugi train detect --steps 0 --init FILE ...` then
calibrates the threshold and writes the manifest, and `kintsugi eval-detect` scores them.

Several networks train side by side on the same batches (the sample stream is the costly
part): each is given as NAME:BASE,MID,DEEP,BLOCKS,FINE:LR[:INIT]. A network starts from INIT
(else --init) widened to its sizes without changing what it computes (as LoadedNet::widened_from does), or
from scratch with --scratch. Samples go to a replay buffer on the GPU, and batches are drawn
from it with random horizontal flips, so the GPU need not wait for the CPU; the summary says
how often each sample was used. Written to --out: NAME.safetensors and NAME.json (the history
that `train detect --init` carries into the manifest) per network, and summary.json; a lent
machine returns at most 8 files, so run at most 3 networks when a log is written there too
(or pack --out into one archive).

Distillation: with --teacher NAME (one of the networks, trained along or frozen with LR 0) and
--student NAME=ALPHA, the student's loss also has ALPHA times the mean binary cross-entropy of
its logits against the teacher's probabilities on the same batch (valid pixels only), so a
network of the shipped size can learn from a larger one what is and is not detectable.
"""

import argparse
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F
from torch import nn

# Label bytes of `encode_sample` (src/train/detect.rs).
FAR_CLEAN, DAMAGE, IGNORED, NEAR_CLEAN = 0, 1, 2, 3
# Offsets scored on the validation crops (logit >= offset flags a pixel), as `calibrate` does.
OFFSETS = [-4.0 + 0.125 * k for k in range(129)]


class DetectNet(nn.Module):
    """The twin of src/detect/learned.rs `DetectNet`: same layers, names and arithmetic."""

    def __init__(self, base, mid, deep, blocks, fine):
        super().__init__()
        self.sizes = (base, mid, deep, blocks, fine)

        def conv(cin, cout, k, stride=1, dil=1):
            return nn.Conv2d(cin, cout, k, stride=stride, padding=dil * (k // 2), dilation=dil)

        self.e1 = conv(12, base, 3)
        self.e2 = conv(base, mid, 3, stride=2)
        self.e3 = conv(mid, mid, 3)
        self.e4 = conv(mid, deep, 3, stride=2)
        self.m1 = conv(deep, deep, 3)
        self.m2 = conv(deep, deep, 3, dil=2)
        self.block_names = [f"m{k + 3}" for k in range(blocks)]
        for name in self.block_names:
            setattr(self, name, conv(deep, deep, 3, dil=2))
        self.u2 = conv(deep, mid, 1)
        self.d2 = conv(mid, mid, 3)
        self.u1 = conv(mid, base, 1)
        self.d1 = conv(base, base, 3)
        self.fine_names = [(f"f{k}a", f"f{k}b") for k in range(1, fine + 1)]
        for a, b in self.fine_names:
            setattr(self, a, conv(base, base, 3))
            setattr(self, b, conv(base, base, 3))
        self.out = conv(base, 4, 1)

    def forward(self, x):
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        e1 = F.relu(self.e1(x))
        s4 = F.relu(self.e3(F.relu(self.e2(e1))))
        m = F.relu(self.e4(s4))
        m = F.relu(self.m2(F.relu(self.m1(m))))
        for name in self.block_names:
            m = m + F.relu(getattr(self, name)(m))
        d2 = F.relu(self.d2(F.relu(up(self.u2(m)) + s4)))
        d1 = F.relu(self.d1(F.relu(up(self.u1(d2)) + e1)))
        for a, b in self.fine_names:
            d1 = d1 + getattr(self, b)(F.relu(getattr(self, a)(d1)))
        return self.out(d1)


def widen_from(net, tensors):
    """Loads `tensors` (a smaller or equal network) into `net` so that it computes what they
    compute: old kernels in the top-left corner, old outputs reading new inputs with zero
    weights, new outputs keeping their random start; missing fine blocks start as the
    identity (their second conv zero). Mirrors LoadedNet::widened_from."""
    state = net.state_dict()
    extra = [k for k in tensors if k not in state]
    if extra:
        raise ValueError(f"{extra[0]} has no place in the network")
    fine_second = {b for _, b in net.fine_names}
    with torch.no_grad():
        for name, var in state.items():
            old = tensors.get(name)
            if old is None:
                layer = name.split(".")[0]
                if layer in fine_second:
                    var.zero_()
                elif not any(layer in pair for pair in net.fine_names):
                    raise ValueError(f"no tensor {name}")
                continue
            old = old.float()
            if old.dim() != var.dim() or any(o > n for o, n in zip(old.shape, var.shape)):
                raise ValueError(f"{name} is {list(old.shape)}, larger than {list(var.shape)}")
            if old.dim() == 1:
                var[: old.shape[0]] = old
            else:
                if old.shape[2:] != var.shape[2:]:
                    raise ValueError(f"{name}: kernel {list(old.shape)} vs {list(var.shape)}")
                var[: old.shape[0]] = 0
                var[: old.shape[0], : old.shape[1]] = old


def read_exact(stream, n):
    """`n` bytes from a raw pipe, or None at its end."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf


class Feeder:
    """Worker processes of `kintsugi train detect-data`, each writing other samples (other
    start indices); reader threads hand chunks of records to the training loop."""

    def __init__(self, cmd, workers, threads, crop, chunk, logdir):
        self.rec = crop * crop * 4
        self.chunk = chunk
        self.queue = queue.Queue(maxsize=8 * workers)
        self.procs = []
        self.errors = []
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
        for w in range(workers):
            log = open(os.path.join(logdir, f"worker{w}.err"), "wb")
            args = cmd + ["--start", str(w * 100_000_000), "--chunk", str(chunk)]
            p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env, bufsize=0)
            self.procs.append((p, log))
            threading.Thread(target=self._read, args=(p, w), daemon=True).start()

    def _read(self, p, w):
        while True:
            buf = read_exact(p.stdout, self.rec * self.chunk)
            if buf is None:
                self.errors.append(f"worker {w} ended (exit {p.poll()})")
                return
            self.queue.put(torch.frombuffer(buf, dtype=torch.uint8).view(self.chunk, self.rec))

    def stop(self):
        for p, log in self.procs:
            p.kill()
            p.wait()
            log.close()


def fixed_samples(cmd, count, crop):
    """`count` records from one run of `cmd` (e.g. the validation crops)."""
    rec = crop * crop * 4
    out = subprocess.run(cmd + ["--count", str(count)], capture_output=True, check=False)
    if out.returncode != 0 or len(out.stdout) != rec * count:
        raise RuntimeError(f"{cmd}: exit {out.returncode}: {out.stderr.decode()[-2000:]}")
    return torch.frombuffer(bytearray(out.stdout), dtype=torch.uint8).view(count, rec)


def unpack(recs, crop, flip=None):
    """Folded network inputs `[n, 12, crop/2, crop/2]` in [-1, 1] and folded label codes
    `[n, 4, crop/2, crop/2]` (channel 4c + 2dy + dx, as `fold_input` and `fold_mask`)."""
    n = recs.shape[0]
    img = recs[:, : crop * crop * 3].view(n, crop, crop, 3).permute(0, 3, 1, 2)
    lab = recs[:, crop * crop * 3 :].view(n, 1, crop, crop)
    if flip is not None:
        img = torch.where(flip.view(n, 1, 1, 1), img.flip(-1), img)
        lab = torch.where(flip.view(n, 1, 1, 1), lab.flip(-1), lab)
    return fold_input(img), F.pixel_unshuffle(lab, 2)


def fold_input(img):
    """The network input of uint8 RGB images `[n, 3, h, w]`: scaled to [-1, 1] and folded 2x2
    into 12 channels, as `fold_input` in src/detect/learned.rs."""
    return F.pixel_unshuffle(img.float() * (2.0 / 255.0) - 1.0, 2)


def top_bce(z, frac):
    """Mean BCE against "clean" of the `frac` highest-scoring of the logits `z` (flat, at least
    one): the hard-negative term of src/train/detect.rs."""
    k = max(1, min(z.numel(), math.ceil(z.numel() * frac)))
    _, idx = torch.topk(z.detach(), k)
    return F.softplus(z[idx]).mean()


def detect_loss(z, codes, pos_weight, dice_weight, hard_weight, hard_frac):
    """The loss of src/train/detect.rs: weighted BCE + soft Dice over valid pixels, plus the
    mean BCE of the top `hard_frac` far clean pixels. Returns (total, bce, dice, hard)."""
    z = z.float()
    t = (codes == DAMAGE).float()
    valid = (codes != IGNORED).float()
    sp = F.softplus(z)
    weight = (t * (pos_weight - 1.0) + 1.0) * valid
    bce = ((sp - z * t) * weight).mean()
    p = torch.sigmoid(z) * valid
    dice = 1.0 - (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)
    total = bce + dice_weight * dice
    hard = torch.zeros((), device=z.device)
    if hard_weight > 0:
        zf = z[codes == FAR_CLEAN]
        if zf.numel() > 0:
            hard = top_bce(zf, hard_frac)
            total = total + hard_weight * hard
    return total, bce, dice, hard


def distill_loss(z, teacher_z, codes):
    """Mean BCE of the logits `z` against the probabilities of `teacher_z` (no gradient to the
    teacher), over the pixels the labels do not ignore."""
    z = z.float()
    p = torch.sigmoid(teacher_z.detach().float())
    valid = (codes != IGNORED).float()
    return ((F.softplus(z) - z * p) * valid).sum() / valid.sum().clamp(min=1.0)


def load_photos(folder, dev):
    """The photos of `folder` as uint8 `[3, h8, w8]` tensors on `dev`, cropped to multiples of 8
    (the untouched photos of `--photo-negatives`)."""
    from PIL import Image

    photos = []
    for name in sorted(os.listdir(folder)):
        if not name.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        with Image.open(os.path.join(folder, name)) as im:
            im = im.convert("RGB")
            w, h = im.size
            t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(h, w, 3)
        photos.append(t[: h // 8 * 8, : w // 8 * 8].permute(2, 0, 1).contiguous().to(dev))
    if not photos:
        raise RuntimeError(f"no photos in {folder}")
    return photos


def photo_negative_loss(net, photos, frac, amp):
    """The hard-negative term of `train detect --photo-negatives`: the mean BCE of the `frac`
    highest-scoring pixels of each untouched photo (all clean), averaged over the photos."""
    terms = []
    for p in photos:
        x = fold_input(p[None])
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            z = net(x.contiguous(memory_format=torch.channels_last))
        terms.append(top_bce(z.float().flatten(), frac))
    return torch.stack(terms).mean()


@torch.no_grad()
def score(net, val_x, val_t, amp):
    """Precision/recall/F1 on the validation crops at offset 0 and at the best offset."""
    logits = []
    for i in range(0, val_x.shape[0], 128):
        with torch.autocast(val_x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits.append(net(val_x[i : i + 128]).float())
    z = torch.cat(logits).flatten()
    t = val_t.flatten()
    offs = torch.tensor(OFFSETS, device=z.device)
    flagged = z[None, :] >= offs[:, None] if z.numel() < 2_000_000 else None
    rows = []
    for k, off in enumerate(OFFSETS):
        f = flagged[k] if flagged is not None else z >= off
        tp = (f & t).sum().item()
        fp = (f & ~t).sum().item()
        fn = (~f & t).sum().item()
        rows.append((off, tp, fp, fn))

    def f1(r):
        _, tp, fp, fn = r
        return 2 * tp / max(1, 2 * tp + fp + fn)

    at0 = next(r for r in rows if r[0] == 0.0)
    best = max(rows, key=f1)
    return {"f1_at_0": f1(at0), "best_f1": f1(best), "best_offset": best[0]}


def save_net(net, path):
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in net.state_dict().items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True, help="the kintsugi CLI")
    ap.add_argument("--data", required=True, help="staged photos (train detect-data --stage)")
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--init", help="weights to widen every network from")
    ap.add_argument("--scratch", action="store_true", help="ignore --init")
    ap.add_argument("--model", action="append", required=True, help="NAME:B,M,D,BLOCKS,FINE:LR[:INIT]")
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=5.0, help="training time (wall clock)")
    ap.add_argument("--workers", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--buffer", type=int, default=200_000, help="replay buffer (samples)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--pos-weight", type=float, default=3.0)
    ap.add_argument("--dice-weight", type=float, default=0.5)
    ap.add_argument("--hard-neg-weight", type=float, default=1.0)
    ap.add_argument("--hard-neg-frac", type=float, default=0.01)
    ap.add_argument("--dashes", type=float, default=0.0)
    ap.add_argument("--vivid", type=float, default=0.0)
    ap.add_argument("--print", type=float, default=0.0)
    ap.add_argument("--cracks", type=float, default=0.0)
    ap.add_argument("--brush", type=float, default=0.0)
    ap.add_argument("--garments", type=float, default=0.0)
    ap.add_argument("--photo-negatives", type=int, default=0,
                    help="untouched whole training photos per step for the hard-negative term")
    ap.add_argument("--teacher", help="NAME of the network whose probabilities the students learn")
    ap.add_argument("--student", action="append", default=[],
                    help="NAME=ALPHA: add ALPHA x the distillation loss to NAME's loss (needs --teacher)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--val-count", type=int, default=512)
    ap.add_argument("--report-every", type=float, default=30.0, help="seconds")
    ap.add_argument("--save-every", type=float, default=90.0, help="seconds")
    ap.add_argument("--logdir", default="/tmp", help="where the workers' error output goes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()

    started = time.time()
    os.makedirs(a.out, exist_ok=True)
    dev = torch.device(a.device)
    amp = dev.type == "cuda"
    torch.manual_seed(a.seed)
    torch.backends.cudnn.benchmark = True
    crop = a.crop
    base_cmd = [a.bin, "train", "detect-data", "--data", a.data, "--artifacts", a.artifacts,
                "--crop", str(crop), "--seed", str(a.seed)]
    print(f"device {dev} ({torch.cuda.get_device_name() if amp else 'cpu'}), torch {torch.__version__}", flush=True)

    val = fixed_samples(base_cmd + ["--val"], a.val_count, crop)
    val_x, val_codes = unpack(val.to(dev), crop)
    val_t = val_codes == DAMAGE
    print(f"validation: {a.val_count} crops, {val_t.float().mean().item():.4f} damage", flush=True)

    from safetensors.torch import load_file

    nets = []
    for spec in a.model:
        name, sizes, lr, *own = spec.split(":")
        sizes = [int(v) for v in sizes.split(",")]
        net = DetectNet(*sizes)
        init = own[0] if own else a.init
        if init and not a.scratch:
            widen_from(net, load_file(init))
        net = net.to(dev).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(net.parameters(), lr=float(lr), weight_decay=1e-4)
        params = sum(p.numel() for p in net.parameters())
        s0 = score(net, val_x, val_t, amp)
        print(f"{name}: {sizes}, {params} parameters, lr {lr}, from {init}, at start {s0}", flush=True)
        nets.append({"name": name, "sizes": sizes, "lr": float(lr), "init": init, "net": net, "opt": opt,
                     "params": params, "history": [{"seconds": 0.0, "step": 0, **s0}]})
        save_net(net, os.path.join(a.out, f"{name}.safetensors"))

    names = [n["name"] for n in nets]
    students = {}
    for spec in a.student:
        name, alpha = spec.split("=")
        if name not in names or name == a.teacher:
            raise ValueError(f"--student {name}: not one of the other networks {names}")
        students[name] = float(alpha)
    if students and a.teacher not in names:
        raise ValueError(f"--teacher {a.teacher}: not one of the networks {names}")
    # The teacher trains first on each batch so that its logits are there for the students.
    nets.sort(key=lambda n: n["name"] != a.teacher)

    photos = load_photos(os.path.join(a.data, "train"), dev) if a.photo_negatives > 0 else []
    feeder = Feeder(base_cmd + ["--dashes", str(a.dashes), "--vivid", str(a.vivid), "--print", str(a.print),
                               "--cracks", str(a.cracks), "--brush", str(a.brush),
                               "--garments", str(a.garments)], a.workers, a.threads, crop, a.chunk, a.logdir)
    rec = crop * crop * 4
    buf = torch.empty((a.buffer, rec), dtype=torch.uint8, device=dev)
    ring = {"filled": 0, "head": 0, "unique": 0}

    def put(chunk):
        """Writes a chunk of records into the ring buffer, over the oldest ones."""
        chunk = chunk.to(dev)
        n = chunk.shape[0]
        head = ring["head"]
        end = min(head + n, a.buffer)
        buf[head:end] = chunk[: end - head]
        if end - head < n:
            buf[: n - (end - head)] = chunk[end - head :]
        ring["head"] = (head + n) % a.buffer
        ring["filled"] = min(a.buffer, ring["filled"] + n)
        ring["unique"] += n

    need = min(a.buffer, max(4 * a.batch, 2048))
    while ring["filled"] < need:
        if len(feeder.errors) == a.workers:
            raise RuntimeError("; ".join(feeder.errors))
        try:
            put(feeder.queue.get(timeout=60))
        except queue.Empty:
            raise RuntimeError(f"no samples within a minute: {feeder.errors}")
    print(f"buffer primed with {ring['filled']} samples in {time.time() - started:.0f} s", flush=True)

    budget = a.minutes * 60.0
    t0 = time.time()
    step = 0
    last_report = last_save = t0
    losses = {n["name"]: [] for n in nets}
    while True:
        now = time.time()
        elapsed = now - t0
        if elapsed >= budget:
            break
        # Take in whatever the workers made since the last step.
        for _ in range(64):
            try:
                put(feeder.queue.get_nowait())
            except queue.Empty:
                break
        if len(feeder.errors) == a.workers and feeder.queue.empty():
            raise RuntimeError("; ".join(feeder.errors))
        idx = torch.randint(0, ring["filled"], (a.batch,), device=dev)
        flip = torch.rand(a.batch, device=dev) < 0.5
        x, codes = unpack(buf[idx], crop, flip)
        x = x.contiguous(memory_format=torch.channels_last)
        frac = elapsed / budget
        picked = [photos[i] for i in torch.randint(0, max(1, len(photos)), (a.photo_negatives,)).tolist()] \
            if photos else []
        teacher_z = None
        for n in nets:
            lr = n["lr"] * (step + 1) / a.warmup if step < a.warmup else \
                n["lr"] * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))
            for g in n["opt"].param_groups:
                g["lr"] = lr
            frozen = n["name"] == a.teacher and n["lr"] == 0
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp), \
                    torch.set_grad_enabled(not frozen):
                z = n["net"](x)
            if n["name"] == a.teacher:
                teacher_z = z.detach()
                if n["lr"] == 0:
                    continue
            total, bce, dice, hard = detect_loss(z, codes, a.pos_weight, a.dice_weight,
                                                 a.hard_neg_weight, a.hard_neg_frac)
            if n["name"] in students:
                total = total + students[n["name"]] * distill_loss(z, teacher_z, codes)
            if picked and a.hard_neg_weight > 0:
                total = total + a.hard_neg_weight * photo_negative_loss(
                    n["net"], picked, a.hard_neg_frac, amp)
            n["opt"].zero_grad(set_to_none=True)
            total.backward()
            n["opt"].step()
            if step % 10 == 0:
                losses[n["name"]].append(total.item())
        step += 1
        now = time.time()
        if now - last_report >= a.report_every:
            last_report = now
            for n in nets:
                s = score(n["net"], val_x, val_t, amp)
                n["history"].append({"seconds": now - t0, "step": step, **s})
                recent = losses[n["name"]][-10:]
                print(f"{now - t0:6.0f}s step {step:6d} {n['name']}: loss "
                      f"{sum(recent) / max(1, len(recent)):.4f} val {s}", flush=True)
            unique = ring["unique"]
            print(f"        samples made {unique} ({unique / (now - started):.0f}/s), used "
                  f"{step * a.batch} ({step * a.batch / max(1, unique):.1f}x each)", flush=True)
        if now - last_save >= a.save_every:
            last_save = now
            for n in nets:
                save_net(n["net"], os.path.join(a.out, f"{n['name']}.safetensors"))
    feeder.stop()
    train_seconds = time.time() - t0
    summary = {
        "device": torch.cuda.get_device_name() if amp else "cpu",
        "torch": torch.__version__,
        "command": " ".join(sys.argv),
        "train_seconds": train_seconds,
        "steps": step,
        "batch": a.batch,
        "crop": crop,
        "samples_made": ring["unique"],
        "sample_uses": step * a.batch,
        "workers": f"{a.workers} x {a.threads} threads",
        "init": None if a.scratch else a.init,
        "teacher": a.teacher,
        "students": students,
        "nets": [],
    }
    for n in nets:
        s = score(n["net"], val_x, val_t, amp)
        n["history"].append({"seconds": train_seconds, "step": step, **s})
        save_net(n["net"], os.path.join(a.out, f"{n['name']}.safetensors"))
        # What `kintsugi train detect --init` carries into the manifest: the history of the
        # initialising weights (their manifest beside them, if any) and this run.
        prior = {}
        if n["init"] and not a.scratch and os.path.isfile(os.path.splitext(n["init"])[0] + ".json"):
            with open(os.path.splitext(n["init"])[0] + ".json") as f:
                prior = json.load(f)
        this = (f"python3 {' '.join(sys.argv)}  [PyTorch twin on {summary['device']}: {step} steps "
                f"of batch {a.batch}, {crop} px crops, {train_seconds:.0f} s; net {n['name']}]")
        history = {
            "steps": prior.get("total_steps", prior.get("steps", 0)) + step,
            "train_seconds": prior.get("total_train_seconds", prior.get("train_seconds", 0.0)) + train_seconds,
            "commands": prior.get("commands", []) + [this],
        }
        with open(os.path.join(a.out, f"{n['name']}.json"), "w") as f:
            json.dump(history, f, indent=1)
        summary["nets"].append({k: n[k] for k in ("name", "sizes", "lr", "init", "params", "history")})
        print(f"final {n['name']}: {s}", flush=True)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"done in {time.time() - started:.0f} s: {step} steps of {a.batch}", flush=True)


if __name__ == "__main__":
    main()
