"""LAQ training throughput: samples/s, achieved TFLOP/s, MFU and peak memory.

    python bench/laq_train_throughput.py --model laq_tiny --batch 16
    python bench/laq_train_throughput.py --model laq --batch 64 --bf16 --compile --peak-tflops 800

Times full training steps (forward, backward, gradient clipping, AdamW) of the real model on
random frames after warm-up steps, best of --repeats windows. FLOPs per sample come from
torch's FlopCounterMode at batch 1, with its overcount of depthwise-convolution backward
(it ignores `groups`) replaced by 2x the convolutions' forward FLOPs. MFU needs the device's
peak matmul throughput (--peak-tflops, e.g. about 800 for an H200 in bf16).
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import asdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import save
from hlrp.common.config import load
from hlrp.laq.model import LAQ, maybe_compile


def flops_per_sample(cfg) -> float:
    with torch.device("meta"):
        model = LAQ(cfg)
        x = torch.rand(1, 2, cfg.channels, cfg.image_size, cfg.image_size)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).total_loss.backward()
    counts = counter.get_flop_counts()["Global"]
    total = sum(counts.values())
    conv_fwd = sum(v for k, v in counts.items() if str(k) == "aten.convolution.default")
    conv_bwd = sum(v for k, v in counts.items() if "convolution_backward" in str(k))
    return float(total - conv_bwd + 2 * conv_fwd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="laq_tiny", help="a file in config/model/")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    cfg = load(
        [f"model@laq.model={args.model}", f"laq.model.compile={str(args.compile).lower()}"]
    ).laq.model
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = maybe_compile(LAQ(cfg).to(dev), cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
    x = torch.rand(args.batch, 2, cfg.channels, cfg.image_size, cfg.image_size, device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step() -> float:
        with amp:
            loss = model(x).total_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    windows = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        float(loss)
        sync()
        windows.append(time.perf_counter() - t0)
    sps = args.batch * args.steps / min(windows)
    fps = flops_per_sample(cfg)
    peak_mem = (
        torch.cuda.max_memory_allocated()
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    result = {
        "model": args.model,
        "params": sum(p.numel() for p in model.parameters()),
        "device": (
            torch.cuda.get_device_name(0)
            if dev.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)"
        ),
        "batch": args.batch,
        "bf16": args.bf16,
        "compile": args.compile,
        "warmup_seconds": round(warmup_s, 2),
        "samples_per_s": round(sps, 2),
        "gflop_per_sample_fwd_bwd": round(fps / 1e9, 3),
        "achieved_tflops": round(sps * fps / 1e12, 4),
        "mfu": round(sps * fps / (args.peak_tflops * 1e12), 4) if args.peak_tflops else None,
        "peak_memory_gb": round(peak_mem / 1e9, 3),
        "model_config": asdict(cfg),
    }
    name = f"laq_train_{args.model}_b{args.batch}{'_bf16' if args.bf16 else ''}"
    name += f"{'_compile' if args.compile else ''}_{dev.type}{args.tag}"
    save(name, result)


if __name__ == "__main__":
    main()
