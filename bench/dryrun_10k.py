"""Dry-run time of the workflow on a corpus of 10,000 input videos.

    python bench/dryrun_10k.py [--videos 10000] [--jobs 16]

Creates empty placeholder .mp4 files (a dry run reads only names and times) in nested
folders, then times `snakemake -n all` pointed at them, best of 3.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, save


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--videos", type=int, default=10_000)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "videos"
        for i in range(args.videos):
            d = root / f"channel_{i % 100:03d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"video_{i:06d}.mp4").touch()
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--quiet",
            "rules",
            "all",
            "--config",
            f"videos={root}",
            f"preprocess_jobs={args.jobs}",
            f"shards_dir={tmp}/shards",
            f"results_dir={tmp}/results",
        ]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        times, out = [], ""
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
            times.append(round(time.perf_counter() - t0, 2))
            out = proc.stdout + proc.stderr
            if proc.returncode:
                sys.exit(out)
        m = re.search(r"preprocess\s+(\d+)", out)
        save(
            "dryrun_10k",
            {
                "videos": args.videos,
                "preprocess_jobs": int(m.group(1)) if m else None,
                "dry_run_seconds": times,
                "best_seconds": min(times),
                "target_seconds": 15,
            },
        )


if __name__ == "__main__":
    main()
