"""Synthetic labelled shards (the format of ``label_latents``) for stage 2's tests.

Each task has its own colour and instruction, and each pair's codes are a fixed function of
the colour shade, so a model that reads the image and the instruction can be exact.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from hlrp.common.io import file_sha256, write_json
from hlrp.laq.export import export_laq
from hlrp.laq.model import LAQ

TASKS = {
    "drawer-open": ("open the drawer", (200, 40, 40)),
    "door-open": ("open the door", (40, 200, 40)),
    "button-press": ("press the button from the top", (40, 40, 200)),
}


def codes_for(task_idx: int, shade: int, codebook_size: int, seq_len: int) -> list[int]:
    return [(task_idx * 2 + shade + j) % codebook_size for j in range(seq_len)]


def make_labels(
    root: Path,
    laq_cfg,
    videos_per_task: int = 4,
    pairs_per_video: int = 8,
    image_size: int = 32,
    pairs_per_shard: int = 24,
    seed: int = 0,
    codebook_size: int | None = None,
) -> tuple[Path, Path]:
    """Write a LAQ checkpoint and labelled shards under ``root``; returns (index.json, laq.ckpt).
    ``codebook_size`` different from the LAQ's makes labels of another vocabulary."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    laq_path = root / "laq.ckpt"
    export_laq(laq_path, LAQ(laq_cfg), f"seed{seed}", 0)
    k = codebook_size or laq_cfg.codebook_size
    L = laq_cfg.code_seq_len
    rng = np.random.default_rng(seed)
    items = []
    for ti, (task, (instruction, colour)) in enumerate(TASKS.items()):
        for v in range(videos_per_task):
            vid = f"{task}-video{v:02d}"
            for t in range(pairs_per_video):
                shade = int(rng.integers(0, 2))
                img = np.zeros((image_size, image_size, 3), np.uint8)
                img[:] = np.array(colour) // (1 + shade)
                half = image_size // 2
                img[:half, :half] = 255 * shade  # a white square when shade is 1
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=95)
                meta = {
                    "codes": codes_for(ti, shade, k, L),
                    "offset": 1,
                    "t": t,
                    "instruction": instruction,
                    "laq_hash": "",
                    "clip_key": f"{vid}-c0000",
                    "video_id": vid,
                    "source": "synthetic",
                    "episode_id": vid,
                    "task": task,
                    "codebook_size": k,
                    "has_actions": True,
                }
                act = np.array([shade, ti, 0.0, 0.0], np.float32)
                items.append((f"{vid}-c0000-{t:04d}", buf.getvalue(), meta, act))
    laq_hash = file_sha256(laq_path)
    labels_dir = root / "labels" / "labels-synthetic"
    labels_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    for s in range(0, len(items), pairs_per_shard):
        name = f"shard-{s // pairs_per_shard:06d}.tar"
        with wds.TarWriter(str(labels_dir / name)) as w:
            for key, jpg, meta, act in items[s : s + pairs_per_shard]:
                a = io.BytesIO()
                np.save(a, act)
                w.write(
                    {
                        "__key__": key,
                        "jpg": jpg,
                        "json": json.dumps({**meta, "laq_hash": laq_hash}).encode(),
                        "actions.npy": a.getvalue(),
                    }
                )
        shards.append(
            {"path": f"{labels_dir.name}/{name}", "samples": len(items[s : s + pairs_per_shard])}
        )
    index = root / "labels" / "index.json"
    write_json(
        index,
        {
            "laq_checkpoint": str(laq_path),
            "laq_hash": laq_hash,
            "labels_key": f"synthetic{seed}{k}",
            "offset": 1,
            "image_size": image_size,
            "codebook_size": k,
            "code_seq_len": L,
            "shards": shards,
            "totals": {"shards": len(shards), "pairs": len(items)},
        },
    )
    return index, laq_path


def other_vocabulary(cfg, codebook_size: int):
    return replace(cfg, codebook_size=codebook_size)
