"""Labelling throughput: labelled pairs/s of `hlrp.laq.label` (encoder + shard I/O).

    python bench/label_throughput.py [--model laq_small] [--shards PATH] [--workers 1]
    python bench/label_throughput.py --model laq --image-size 224 --synthetic   # laq_full, GPU

Without --shards it renders and preprocesses the demo corpus into a temp folder first
(--synthetic: moving-square videos at the model's resolution instead, no simulator needed).
A randomly initialised LAQ of the given size labels every (t, t+k) pair of every shard; the
figure includes reading and decoding the clips and writing the labelled shards. Compare with
bench/laq_train_throughput.py on the same machine and model (the issue's target on a GPU:
labelling at least 3x the training samples/s).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import demo_shards, save, synthetic_shards
from hlrp.common.config import load
from hlrp.laq.export import export_laq
from hlrp.laq.label import label
from hlrp.laq.model import LAQ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="laq_small")
    ap.add_argument("--shards", type=Path)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--synthetic", action="store_true", help="moving squares, not the demo")
    args = ap.parse_args()
    cfg = load(
        [
            "experiment=demo_tiny",
            f"model@laq.model={args.model}",
            f"laq.label.batch_size={args.batch}",
            f"laq.label.image_size={args.image_size}",
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            shards = args.shards
        elif args.synthetic:
            shards = synthetic_shards(Path(tmp), cfg.laq.model.image_size)
        else:
            shards = demo_shards(cfg, Path(tmp))
        torch.manual_seed(0)
        ckpt = Path(tmp) / "laq.ckpt"
        export_laq(ckpt, LAQ(cfg.laq.model), "bench", 0)
        t0 = time.perf_counter()
        index = label(
            ckpt,
            shards,
            Path(tmp) / "labels",
            cfg.laq.label,
            cfg.laq.data.offsets[0],
            workers=args.workers,
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
