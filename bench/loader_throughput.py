"""Loader throughput: clips/s and frame pairs/s read back from shards with DataLoader workers.

    python bench/loader_throughput.py [--shards PATH] [--workers 2] [--seconds 10]

Without --shards it renders and preprocesses the demo corpus into a temp folder first.
Clips/s decodes every frame of every clip (what labelling does); pairs/s decodes only the
two frames of each (t, t+k) pair (what LAQ training does), batched as training batches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import demo_shards, save
from hlrp.common.config import load
from hlrp.data.shards import ClipStream, decode_frames, frame_pairs


def all_frames(sample, rng):
    return [torch.from_numpy(decode_frames(sample)).shape[0]]


def measure(ds, workers: int, seconds: float, batch_size: int | None) -> tuple[int, float]:
    n, t0 = 0, None
    epoch = 0
    while True:
        ds.set_epoch(epoch)
        dl = torch.utils.data.DataLoader(
            ds, batch_size=batch_size, num_workers=workers, persistent_workers=False
        )
        for item in dl:
            if t0 is None:  # start the clock at the first item: worker start-up excluded
                t0 = time.perf_counter()
                continue
            n += item["frames"].shape[0] if isinstance(item, dict) else 1
            if time.perf_counter() - t0 > seconds:
                return n, time.perf_counter() - t0
        epoch += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shards", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    cfg = load(["experiment=demo_tiny"])
    with tempfile.TemporaryDirectory() as tmp:
        shards = args.shards or demo_shards(cfg, Path(tmp))
        clips = ClipStream(shards, shuffle=64, transform=all_frames)
        n_clips, t_clips = measure(clips, args.workers, args.seconds, None)
        pairs = ClipStream(
            shards,
            shuffle=64,
            transform=frame_pairs(cfg.laq.data.offsets, cfg.laq.data.pairs_per_clip),
        )
        n_pairs, t_pairs = measure(pairs, args.workers, args.seconds, args.batch_size)
        save(
            "loader_throughput",
            {
                "shards": str(args.shards or "demo corpus (default DemoConfig, demo_tiny data)"),
                "resolution": cfg.data.preprocess.resolution,
                "workers": args.workers,
                "batch_size": args.batch_size,
                "pairs_per_clip": cfg.laq.data.pairs_per_clip,
                "clips_per_s": round(n_clips / t_clips, 1),
                "frame_pairs_per_s": round(n_pairs / t_pairs, 1),
            },
        )


if __name__ == "__main__":
    main()
