"""Preprocessing throughput (source frames/s) against raw decord decoding of the same files.

    python bench/preprocess_throughput.py [--videos DIR] [--workers 2] [--repeats 3]

Without --videos it renders the demo corpus (default DemoConfig) into a temp folder.
The limit is decord decoding every frame of every file at native size with the same number
of worker processes; preprocessing adds resampling, resizing, scene statistics, JPEG
encoding and shard writing. Both are measured in this run, best of --repeats.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from common import save
from hlrp.common.config import load
from hlrp.data.preprocess import preprocess
from hlrp.data.video import list_videos


def decode_all(path: str) -> int:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    n = 0
    for start in range(0, len(vr), 64):
        n += len(vr.get_batch(list(range(start, min(len(vr), start + 64)))).asnumpy())
    return n


def raw_decode(videos: list[Path], workers: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as ex:
        frames = sum(ex.map(decode_all, [str(v) for v in videos], chunksize=4))
    return frames, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=Path)
    ap.add_argument("--experiment", default="demo_tiny")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cfg = load([f"experiment={args.experiment}"])
    with tempfile.TemporaryDirectory() as tmp:
        videos_dir = args.videos
        if videos_dir is None:
            from hlrp.sim.demo_videos import generate

            t0 = time.perf_counter()
            generate(cfg.demo, Path(tmp) / "demo", workers=args.workers)
            render_s = time.perf_counter() - t0
            videos_dir = Path(tmp) / "demo" / "videos"
        else:
            render_s = None
        videos = list_videos(videos_dir, cfg.data.preprocess.extensions)
        decode_runs, pre_runs = [], []
        for r in range(args.repeats):
            frames, secs = raw_decode(videos, args.workers)
            decode_runs.append(secs)
            m = preprocess(
                videos_dir,
                Path(tmp) / f"out{r}",
                cfg.data.preprocess,
                workers=args.workers,
            )
            pre_runs.append(m["totals"]["seconds"])
        totals = m["totals"]
        decode_fps = frames / min(decode_runs)
        pre_fps = totals["source_frames"] / min(pre_runs)
        save(
            "preprocess_throughput",
            {
                "videos": len(videos),
                "corpus": "demo (default DemoConfig)" if args.videos is None else str(args.videos),
                "demo_render_seconds": render_s,
                "experiment": args.experiment,
                "resolution": cfg.data.preprocess.resolution,
                "target_fps": cfg.data.preprocess.fps,
                "workers": args.workers,
                "source_frames": frames,
                "raw_decode_seconds": decode_runs,
                "preprocess_seconds": pre_runs,
                "raw_decode_frames_per_s": round(decode_fps, 1),
                "preprocess_source_frames_per_s": round(pre_fps, 1),
                "ratio_to_raw_decode": round(pre_fps / decode_fps, 3),
                "clips": totals["clips"],
                "frames_written": totals["frames"],
            },
        )


if __name__ == "__main__":
    main()
