"""Shared fixtures: synthetic video corpora generated on the fly (nothing is downloaded)."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).parent))

from hlrp.common.config import LAQModelConfig  # noqa: E402
from videos import bad_input_corpus, moving_square, write_video  # noqa: E402

#: The smallest LAQ the tests build (32 px, ~25 k parameters): fast enough for any test.
MICRO_LAQ = LAQModelConfig(
    image_size=32,
    patch_size=8,
    dim=32,
    spatial_depth=1,
    temporal_depth=1,
    decoder_depth=1,
    heads=2,
    dim_head=16,
    codebook_size=8,
    code_seq_len=2,
    quant_dim=8,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def bad_corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("bad_corpus")
    return root, bad_input_corpus(root)


def make_small_corpus(root: Path, n: int = 4, frames: int = 60) -> Path:
    """``n`` moving-square videos with a metadata.csv and per-frame actions (<stem>.npz)."""
    videos = root / "videos"
    actions = root / "actions"
    actions.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        name = f"sub/clip_{i}.mp4" if i % 2 else f"clip_{i}.mp4"
        write_video(videos / name, moving_square(frames, 96, 64, seed=i), fps=30)
        (actions / name).parent.mkdir(parents=True, exist_ok=True)
        act = np.stack([np.arange(frames), np.full(frames, i)], axis=1).astype(np.float32)
        np.savez(actions / Path(name).with_suffix(".npz"), actions=act)
        rows.append(
            {
                "file": name,
                "instruction": f"move the square {i}",
                "episode_id": f"ep{i}",
                "task": "square",
            }
        )
    with open(videos / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "instruction", "episode_id", "task"])
        w.writeheader()
        w.writerows(rows)
    return root


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    return make_small_corpus(tmp_path)


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run where CUDA is; elsewhere they are skipped, saying why."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (bench/gpu_suite.sh runs these)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def count_calls(monkeypatch, module, name: str) -> list[int]:
    """Replace ``module.name`` by a wrapper that counts its calls; returns the counter."""
    calls = [0]
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls
