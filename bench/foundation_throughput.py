"""Foundation (stage 2) training throughput: tokens/s, samples/s, MFU and peak memory.

    python bench/foundation_throughput.py --preset tiny --batch 16          # CPU
    python bench/foundation_throughput.py --preset 0.5b --batch 64 --bf16 --peak-tflops 989

Builds a backbone of the preset from its config class offline (random weights: throughput
does not depend on them), adds the latent vocabulary, and times full training steps
(forward, backward, clipping, AdamW) on batches the backbone's own processor makes from
random images and real prompts, with and without gradient checkpointing. FLOPs per step are
counted by torch's FlopCounterMode on one step (matmuls and attention, forward and
backward, counted without checkpointing: its recomputation is not useful work). MFU =
counted FLOP/s / --peak-tflops.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from common import save
from hlrp.foundation.data import Collator
from hlrp.foundation.families import build_tiny
from hlrp.foundation.model import LatentActionVLA

#: text / vision config changes of each preset (Qwen2-VL family). 0.5b: Qwen2-0.5B's
#: language model (24 layers, 896 wide, GQA 14/2 heads) and an 8-layer 768-wide vision tower.
PRESETS = {
    "tiny": {"family": "qwen2_vl", "image_size": 64, "text": {}, "vision": {}},
    "0.5b": {
        "family": "qwen2_vl",
        "image_size": 224,
        "text": {
            "hidden_size": 896,
            "intermediate_size": 4864,
            "num_hidden_layers": 24,
            "num_attention_heads": 14,
            "num_key_value_heads": 2,
        },
        "vision": {"depth": 8, "embed_dim": 768, "num_heads": 12, "mlp_ratio": 4},
    },
}
INSTRUCTIONS = ["open the drawer", "close the drawer", "press the button from the top"]


def synthetic_items(n: int, size: int, codebook: int, seq_len: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        codes = rng.integers(0, codebook, seq_len).tolist()
        meta = {"instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)], "codes": codes}
        items.append({"jpg": buf.getvalue(), "meta": meta})
    return items


def measure(args, folder: Path, grad_ckpt: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vla = LatentActionVLA.from_backbone(str(folder), args.codebook, args.seq_len)
    vla.to(device).train()
    opt = torch.optim.AdamW([p for p in vla.parameters() if p.requires_grad], lr=1e-5)
    collate = Collator(vla.processor, vla.family, vla.meta.action_token_ids, append_codes=True)
    items = synthetic_items(
        args.batch, PRESETS[args.preset]["image_size"], args.codebook, args.seq_len
    )
    batch = {k: v.to(device) for k, v in collate(items).items()}
    tokens = int(batch["attention_mask"].sum())
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def step() -> None:
        with amp:
            loss, _ = vla.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vla.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    counter = FlopCounterMode(display=False)
    with counter:
        with amp:
            loss, _ = vla.loss(batch)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = float(counter.get_total_flops())  # before checkpointing: useful work only
    if grad_ckpt:
        vla.backbone.gradient_checkpointing_enable({"use_reentrant": False})
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        best = min(best, (time.perf_counter() - t0) / args.steps)
    row = {
        "gradient_checkpointing": grad_ckpt,
        "seconds_per_step": best,
        "samples_per_s": args.batch / best,
        "tokens_per_s": tokens / best,
        "tokens_per_sample": tokens / args.batch,
        "flops_per_step": flops,
        "achieved_tflops": flops / best / 1e12,
        "mfu": flops / best / (args.peak_tflops * 1e12) if args.peak_tflops else None,
        "parameters": sum(p.numel() for p in vla.parameters()),
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--codebook", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=4)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--only", choices=["plain", "ckpt"], default=None)
    args = p.parse_args()
    preset = PRESETS[args.preset]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny(
            preset["family"],
            Path(tmp) / "backbone",
            image_size=preset["image_size"],
            text=preset["text"],
            vision=preset["vision"],
        )
        modes = {"plain": [False], "ckpt": [True], None: [False, True]}[args.only]
        rows = [measure(args, folder, g) for g in modes]
    save(
        f"foundation_throughput_{args.preset}",
        {"args": vars(args), "family": preset["family"], "rows": rows},
    )


if __name__ == "__main__":
    main()
