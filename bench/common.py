"""Helpers shared by the benchmark scripts: machine description and JSON results."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def machine() -> dict:
    info = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    with contextlib.suppress(OSError):
        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return path


def demo_shards(cfg, tmp: Path) -> Path:
    """Render the demo corpus of ``cfg`` and preprocess it into ``tmp/shards``."""
    from hlrp.data.preprocess import preprocess
    from hlrp.sim.demo_videos import generate

    generate(cfg.demo, tmp / "demo", workers=2)
    preprocess(tmp / "demo" / "videos", tmp / "shards", cfg.data.preprocess, workers=2)
    return tmp / "shards"


def synthetic_shards(tmp: Path, resolution: int, videos: int = 16, frames: int = 64) -> Path:
    """Moving-square videos (tests/videos.py) at ``resolution``, preprocessed into
    ``tmp/shards``: benchmark data that needs no simulator (a GPU node without EGL)."""
    sys.path.insert(0, str(REPO / "tests"))
    from hlrp.common.config import PreprocessConfig
    from hlrp.data.preprocess import preprocess
    from videos import moving_square, write_video

    for i in range(videos):
        write_video(tmp / "videos" / f"v{i:03d}.mp4", moving_square(frames, 320, 256, seed=i), 20)
    cfg = PreprocessConfig(fps=20, resolution=resolution, min_motion=0.0, min_clip_frames=3)
    preprocess(tmp / "videos", tmp / "shards", cfg, workers=2)
    return tmp / "shards"
