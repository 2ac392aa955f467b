"""Labelling throughput: labelled pairs/s of `hlrp.laq.label` (encoder + shard I/O).

    python bench/label_throughput.py [--model laq_small] [--shards PATH] [--workers 1]

Without --shards it renders and preprocesses the demo corpus into a temp folder first.
A randomly initialised LAQ of the given size labels every (t, t+k) pair of every shard; the
figure includes reading and decoding the clips and writing the labelled shards. Compare with
bench/laq_train_throughput.py on the same machine and model (the issue's target on a GPU:
labelling at least 3x the training samples/s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from common import demo_shards, save
from hlrp.common.config import load
from hlrp.laq.label import label
from hlrp.laq.model import LAQ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="laq_small")
    ap.add_argument("--shards", type=Path)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    cfg = load(
        [
            "experiment=demo_tiny",
            f"model={args.model}",
            f"label.batch_size={args.batch}",
            f"label.image_size={args.image_size}",
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or demo_shards(cfg, Path(tmp))
        torch.manual_seed(0)
        ckpt = Path(tmp) / "laq.ckpt"
        torch.save(
            {
                "model_config": asdict(cfg.model),
                "state_dict": LAQ(cfg.model).state_dict(),
                "global_step": 0,
                "config_hash": "bench",
            },
            ckpt,
        )
        t0 = time.perf_counter()
        index = label(
            ckpt, shards, Path(tmp) / "labels", cfg.label, cfg.data.offsets[0], workers=args.workers
        )
        seconds = time.perf_counter() - t0
        device = (
            torch.cuda.get_device_name(0)
            if torch.cuda.is_available()
            else (f"cpu ({torch.get_num_threads()} threads)")
        )
        save(
            f"label_{args.model}_{'cuda' if torch.cuda.is_available() else 'cpu'}",
            {
                "model": args.model,
                "device": device,
                "workers": args.workers,
                "batch": args.batch,
                "image_size": args.image_size,
                "pairs": index["totals"]["pairs"],
                "seconds": round(seconds, 2),
                "pairs_per_s": round(index["totals"]["pairs"] / seconds, 1),
            },
        )


if __name__ == "__main__":
    main()
