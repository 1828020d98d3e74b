"""Benchmark: the book's NVNet against MONAI's SegResNetVAE, same configuration, same run.

MONAI's ``SegResNetVAE`` is the network a researcher would otherwise pick for
Myronenko's architecture. Both are built alike: 4 channels in, 3 out, ``init_filters=8``,
blocks (1, 2, 2, 4) down and (1, 1, 1) up, GroupNorm(8), dropout 0.2, the VAE on with a
128-dimensional latent (MONAI's ``vae_nz=128``) and an estimated standard deviation. Each
step is ``zero_grad``, forward, a soft Dice loss on the segmentation plus the VAE loss
(MONAI returns its own; the book's is ``0.1 * L2 + 0.1 * KL``), and backward. The two
networks alternate step by step in one process, so that a busy machine slows both alike,
and the median over ``--steps`` steps (after ``--warmup``) is reported, with the peak
memory of one step of each (:func:`mednets.torch.memory.step_memory`: the CUDA allocator's
peak on a GPU, the dispatch-mode meter on a CPU).

Usage::

    nice python benchmarks/bench_nvnet_vs_monai.py [--steps 20] [--warmup 3] [--threads 1] [--amp bf16]

MONAI is a benchmark-only dependency (``benchmarks/requirements.txt``). The results go to
``benchmarks/results/nvnet_vs_monai.json`` (written atomically), with the command, the
commit, the package versions, the CPU and the load average before and after, since the
machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mednets.torch.losses import nvnet_loss, soft_dice_loss
from mednets.torch.memory import step_memory
from mednets.torch.nvnet import NVNet
from mednets.utils import atomic_write, seed_everything

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "nvnet_vs_monai.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="timed steps per network (>= 16). Default 20.")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first. Default 3.")
    p.add_argument("--size", type=int, default=64, help="crop side (divisible by 16). Default 64.")
    p.add_argument("--batch", type=int, default=2, help="batch size. Default 2.")
    p.add_argument("--init-filters", type=int, default=8, help="filters of the first level. Default 8.")
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU. Default 1.")
    p.add_argument("--device", default=None, help="cpu or cuda. Default: cuda if available.")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype. Default: none.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results file. Default {DEFAULT_OUT}.")
    return p


def build_models(size: int, init_filters: int):
    from monai.networks.nets import SegResNetVAE

    shape = (size,) * 3
    ours = NVNet(
        spatial_dims=3, in_channels=4, out_channels=3, init_filters=init_filters, spatial_size=shape, vae=True
    )
    peer = SegResNetVAE(
        input_image_size=shape,
        vae_estimate_std=True,
        vae_nz=128,
        spatial_dims=3,
        init_filters=init_filters,
        in_channels=4,
        out_channels=3,
        dropout_prob=0.2,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
    )
    return ours, peer


def ours_loss(x, target):
    return lambda out: nvnet_loss(out, target, x)[0]


def peer_loss(target):
    def loss(out):
        seg, vae = out
        return soft_dice_loss(torch.sigmoid(seg), target) + vae

    return loss


def step(model, x, loss_fn, amp):
    model.zero_grad(set_to_none=True)
    if amp:
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = model(x)
    else:
        out = model(x)
    loss_fn(out).backward()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "mednets"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.steps < 16:
        raise SystemExit(f"--steps must be >= 16 (the median needs enough steps), got {args.steps}")
    if args.size % 16:
        raise SystemExit(f"--size must be divisible by 16 (the VAE's stride), got {args.size}")
    import monai

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cudnn.benchmark = True
    seed_everything(args.seed)
    ours, peer = build_models(args.size, args.init_filters)
    ours, peer = ours.to(device).train(), peer.to(device).train()
    x = torch.randn(args.batch, 4, *(args.size,) * 3, device=device)
    target = (torch.rand(args.batch, 3, *(args.size,) * 3, device=device) > 0.9).float()
    runs = {"nvnet": (ours, ours_loss(x, target)), "monai_segresnetvae": (peer, peer_loss(target))}

    load_before = os.getloadavg()
    memory = {name: step_memory(m, x, fn, amp=args.amp) for name, (m, fn) in runs.items()}
    times = {name: [] for name in runs}
    for i in range(args.warmup + args.steps):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))  # alternate who goes first
        for name in order:
            model, fn = runs[name]
            start = time.perf_counter()
            step(model, x, fn, args.amp)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()

    result = {
        "benchmark": "nvnet_vs_monai",
        "command": " ".join(
            ["python", "benchmarks/bench_nvnet_vs_monai.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "config": {
            "size": args.size,
            "batch": args.batch,
            "init_filters": args.init_filters,
            "vae": True,
            "latent": 128,
            "amp": args.amp,
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "device": str(device),
        },
        "models": {
            name: {
                "params": int(sum(p.numel() for p in model.parameters())),
                "median_s": statistics.median(times[name]),
                "min_s": min(times[name]),
                "step_s": [round(t, 5) for t in times[name]],
                "peak_bytes": memory[name]["peak_bytes"],
                "memory_method": memory[name]["method"],
            }
            for name, (model, _) in runs.items()
        },
        "commit": commit(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "monai": monai.__version__,
            "numpy": np.__version__,
        },
        "machine": {
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "loadavg_before": [round(v, 2) for v in load_before],
            "loadavg_after": [round(v, 2) for v in load_after],
        },
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    a, b = result["models"]["nvnet"], result["models"]["monai_segresnetvae"]
    result["time_ratio"] = a["median_s"] / b["median_s"]
    result["memory_ratio"] = a["peak_bytes"] / b["peak_bytes"]
    # Per-step ratios of the same iteration, a robust check when the load varies.
    pairs = [s / t for s, t in zip(a["step_s"], b["step_s"])]
    result["paired_ratio_median"] = statistics.median(pairs)
    with atomic_write(args.out, suffix=".json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"NVNet {a['median_s']:.3f} s/step, {a['peak_bytes'] / 2**20:.0f} MiB | "
        f"SegResNetVAE {b['median_s']:.3f} s/step, {b['peak_bytes'] / 2**20:.0f} MiB | "
        f"time ratio {result['time_ratio']:.3f} (paired {result['paired_ratio_median']:.3f}), "
        f"memory ratio {result['memory_ratio']:.3f} | load {load_before[0]:.1f} -> {load_after[0]:.1f}"
    )
    return result


if __name__ == "__main__":
    main()
