"""Latent-action labelling of the shards for stage 2 (the ``label_latents`` stage).

    python -m hlrp.laq.label laq_ckpt=results/laq/laq.ckpt data.shards=results/shards/index.json \\
        output_dir=results/labels report=results/laq_report/report.json [workers=N]

For every frame t of every clip that has a frame t+k (k = ``label.offset``, default
``data.offsets[0]``), the trained LAQ's encoder gives the latent action codes of (t, t+k).
One labelled sample per pair:

==============  ======================================================================
``__key__``     ``<clip key>-<t:04d>``
``jpg``         frame t at ``label.image_size`` (the foundation model's input size)
``json``        ``codes`` (list of L ints), ``offset``, ``t``, ``instruction``,
                ``laq_hash`` (sha256 of the laq.ckpt file), ``clip_key``, ``video_id``,
                ``source``, ``episode_id``, ``task``, ``codebook_size``, ``has_actions``
``actions.npy`` float32 (A,), the action of the pair (:func:`hlrp.data.actions.pair_action`:
                the sum of frames t..t+k-1's rows), where every one of those rows is known
==============  ======================================================================

Labels are written to ``output_dir/labels-<key>/``, one tar per input shard, each under a
temporary name and renamed when complete. The key hashes everything that defines the labels:
the LAQ checkpoint's sha256, the label settings (image size, JPEG quality), the offset and the
input shards (their real paths, sizes and modification times). A finished shard is never
recomputed, so a killed run resumes where it stopped, and labels made with other weights,
settings or shards go to another folder: two kinds of labels are never mixed.
``output_dir/index.json`` points at the current labels and states what defines them.

Before labelling, the LAQ report's gate is checked (``report=``): collapsed codes or codes
that carry nothing stop the run with the reasons, unless ``label.allow_failed_gate=true``.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from hlrp.common.cli import run
from hlrp.common.config import LabelConfig, RootConfig, result_config
from hlrp.common.io import atomic_open, file_sha256, write_json
from hlrp.common.logging import get_logger
from hlrp.data.actions import pair_action
from hlrp.data.preprocess import progress_interval
from hlrp.data.shards import decode_actions, decode_frames, iter_clips, resolve_shards
from hlrp.laq.export import load_laq, read_laq_config
from hlrp.laq.gate import GateFailed, check_report_gate
from hlrp.laq.model import to_model_input

log = get_logger("laq.label")

GATE_FAILED_EXIT = 3


def output_name(shard: str, root: str) -> str:
    """``part-000/shard-000001.tar`` -> ``part-000_shard-000001.tar`` (unique per input)."""
    rel = os.path.relpath(shard, root) if root else os.path.basename(shard)
    return rel.replace(os.sep, "_")


def _image(sample: dict[str, Any], t: int, size: int, quality: int) -> bytes:
    """Frame t as JPEG at size x size (the stored bytes when the size already matches)."""
    if sample["meta"].get("resolution") == size:
        return sample[f"{t:04d}.jpg"]
    frame = _clip(sample)["frames"][t]
    img = Image.fromarray(frame).resize((size, size), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _clip(sample: dict[str, Any]) -> dict[str, Any]:
    """A clip's frames and actions, decoded once and kept with the sample while it is in use."""
    if "_decoded" not in sample:
        sample["_decoded"] = {
            "frames": decode_frames(sample),  # (T, H, W, 3) uint8
            "actions": decode_actions(sample) if sample["meta"].get("has_actions") else None,
        }
    return sample["_decoded"]


def labels_key(laq_hash: str, cfg: LabelConfig, offset: int, inputs: Sequence[str]) -> str:
    """16 hex digits naming a set of labels: everything that defines them (module docstring)."""
    shards = []
    for url in inputs:
        st = os.stat(url)
        shards.append([os.path.realpath(url), st.st_size, st.st_mtime_ns])
    payload = {
        "laq": laq_hash,
        "label": result_config(cfg),
        "offset": int(offset),
        "shards": shards,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _pairs(shard: str, k: int) -> Iterator[tuple[dict[str, Any], int]]:
    for sample in iter_clips([shard]):
        for t in range(sample["meta"]["num_frames"] - k):
            yield sample, t


@torch.no_grad()
def label_shard(
    model, shard: str, out_path: Path, cfg: LabelConfig, k: int, laq_hash: str
) -> dict[str, Any]:
    """Label one input shard into ``out_path`` (atomically). Returns its index entry."""
    device = next(model.parameters()).device
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    n = 0
    with atomic_open(out_path, "wb") as f:
        writer = wds.TarWriter(f)
        batch: list[tuple[dict[str, Any], int]] = []

        def flush() -> None:
            nonlocal n
            frames = torch.stack(
                [torch.from_numpy(_clip(s)["frames"][[t, t + k]]) for s, t in batch]
            )
            x = to_model_input(frames.to(device), model.cfg.image_size)  # (B, 2, C, S, S)
            with amp:
                codes, _ = model.encode_actions(x)  # (B, L)
            for (sample, t), c in zip(batch, codes.cpu().tolist()):
                meta = sample["meta"]
                action = pair_action(_clip(sample)["actions"], t, k)  # None: not known
                out = {
                    "__key__": f"{sample['__key__']}-{t:04d}",
                    "jpg": _image(sample, t, cfg.image_size, cfg.jpeg_quality),
                    "json": json.dumps(
                        {
                            "codes": c,
                            "offset": k,
                            "t": t,
                            "instruction": meta.get("instruction", ""),
                            "laq_hash": laq_hash,
                            "clip_key": sample["__key__"],
                            "video_id": meta.get("video_id", ""),
                            "source": meta.get("source", ""),
                            "episode_id": meta.get("episode_id", ""),
                            "task": meta.get("task", ""),
                            "codebook_size": model.cfg.codebook_size,
                            "has_actions": action is not None,
                        }
                    ).encode(),
                }
                if action is not None:
                    buf = io.BytesIO()
                    np.save(buf, action)
                    out["actions.npy"] = buf.getvalue()
                writer.write(out)
                n += 1
            batch.clear()

        for item in _pairs(shard, k):
            batch.append(item)
            if len(batch) >= cfg.batch_size:
                flush()
        if batch:
            flush()
        writer.close()
    return {"path": out_path.name, "samples": n, "bytes": out_path.stat().st_size, "source": shard}


_MODEL = None


def _worker_init(laq_path: str, threads: int) -> None:
    global _MODEL
    torch.set_num_threads(threads)
    _MODEL = load_laq(laq_path)


def _worker(shard: str, out_path: str, cfg: LabelConfig, k: int, laq_hash: str) -> dict:
    return label_shard(_MODEL, shard, Path(out_path), cfg, k, laq_hash)


def label(
    laq_path: str | os.PathLike,
    shards: str | os.PathLike,
    output_dir: str | os.PathLike,
    cfg: LabelConfig,
    offset: int,
    workers: int = 1,
) -> dict[str, Any]:
    """Label every input shard not labelled yet; returns the labels index."""
    laq_path = str(laq_path)
    laq_hash = file_sha256(laq_path)
    out_root = Path(output_dir)
    inputs = resolve_shards(shards)
    key = labels_key(laq_hash, cfg, offset, inputs)
    labels_dir = out_root / f"labels-{key}"
    labels_dir.mkdir(parents=True, exist_ok=True)
    for stale in labels_dir.glob(".*.tmp"):  # left by a killed run: never visible, now removed
        stale.unlink()
    root = os.path.commonpath([os.path.dirname(s) for s in inputs]) if len(inputs) > 1 else ""
    todo, done = [], []
    for shard in inputs:
        out = labels_dir / output_name(shard, root)
        (done if out.is_file() else todo).append((shard, out))
    log.info(
        "labelling %d shards with LAQ %s (%d already done) into %s",
        len(todo),
        laq_hash[:16],
        len(done),
        labels_dir,
    )
    t0 = time.perf_counter()
    entries: dict[str, dict[str, Any]] = {}
    for shard, out in done:  # finished earlier: count, never recompute
        entries[shard] = {
            "path": out.name,
            "samples": sum(1 for _ in wds.tariterators.tarfile_samples([{"url": str(out)}])),
            "bytes": out.stat().st_size,
            "source": shard,
        }
    bar = tqdm(total=len(todo), unit="shard", desc="label_latents", mininterval=progress_interval())
    if workers > 1 and len(todo) > 1 and not torch.cuda.is_available():
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(
            workers, mp_context=ctx, initializer=_worker_init, initargs=(laq_path, threads)
        ) as ex:
            futures = {ex.submit(_worker, s, str(o), cfg, offset, laq_hash): s for s, o in todo}
            for fut in cf.as_completed(futures):
                entries[futures[fut]] = fut.result()
                bar.update(1)
    else:
        model = load_laq(laq_path, map_location="cuda" if torch.cuda.is_available() else "cpu")
        for shard, out in todo:
            entries[shard] = label_shard(model, shard, out, cfg, offset, laq_hash)
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    shard_list = [entries[s] for s in inputs]
    vocab = read_laq_config(laq_path)
    total = sum(e["samples"] for e in shard_list)
    index = {
        "laq_checkpoint": laq_path,
        "laq_hash": laq_hash,
        "labels_key": key,
        "offset": offset,
        "image_size": cfg.image_size,
        "jpeg_quality": cfg.jpeg_quality,
        "codebook_size": vocab.codebook_size,
        "code_seq_len": vocab.code_seq_len,
        "shards": [{**e, "path": f"{labels_dir.name}/{e['path']}"} for e in shard_list],
        "totals": {
            "shards": len(shard_list),
            "pairs": total,
            "labelled_now": sum(entries[s]["samples"] for s, _ in todo),
            "seconds": round(seconds, 3),
        },
    }
    write_json(labels_dir / "index.json", {**index, "shards": shard_list})
    write_json(out_root / "index.json", index)
    log.info(
        "%d labelled pairs in %d shards (%d labelled now, %.1f s)",
        total,
        len(shard_list),
        index["totals"]["labelled_now"],
        seconds,
    )
    return index


def _main(cfg: RootConfig) -> int:
    stage = cfg.laq
    if not (cfg.laq_ckpt and stage.data.shards and cfg.output_dir):
        log.error("label needs laq_ckpt=PATH (laq.ckpt), data.shards=PATH and output_dir=PATH")
        return 2
    if cfg.report:
        try:
            check_report_gate(cfg.report, stage.label.allow_failed_gate, cfg.laq_ckpt)
        except GateFailed as e:
            log.error("%s", e)
            return GATE_FAILED_EXIT
    offset = stage.label.offset or stage.data.offsets[0]
    workers = cfg.workers or 1
    label(cfg.laq_ckpt, stage.data.shards, cfg.output_dir, stage.label, offset, workers=workers)
    return 0


USAGE = """
usage: python -m hlrp.laq.label laq_ckpt=LAQ.ckpt data.shards=INDEX.json output_dir=DIR
                                [report=REPORT.json] [workers=N] [key=value ...]

Labels every (t, t+k) pair of the shards with the LAQ's latent action codes. Resumable: a
finished output shard is never recomputed. With report=, a failed LAQ gate stops the run
(exit 3) unless label.allow_failed_gate=true.
"""


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv, USAGE, stage="laq")


if __name__ == "__main__":
    raise SystemExit(main())
