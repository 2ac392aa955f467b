"""Raw videos -> WebDataset shards of clips (the ``preprocess`` stage).

    python -m hlrp.data.preprocess input_dir=videos/ output_dir=shards/ [experiment=...] [key=value ...]

For each video: probe the container, decode (decord, else PyAV or torchcodec as configured),
resample to ``data.preprocess.fps`` by timestamp, resize the shorter side and center-crop to
``data.preprocess.resolution``, split into scenes at cuts, split long scenes into clips of at
most ``max_clip_frames``, and drop clips shorter than ``min_clip_frames`` (a pair (t, t+k)
needs k + 1 frames) or static (mean frame difference below ``min_motion``).
Clips go to tar shards (see :mod:`hlrp.data.shards` for the sample keys).

Optional side inputs, both found by file name:

* ``<input_dir>/metadata.csv``: columns ``file`` (path relative to input_dir) and any of
  ``instruction``, ``episode_id``, ``task``; the demo corpus writes one.
* ``actions_dir=PATH``: ``<stem>.npz`` with an ``actions`` array, one row per source frame.

Which videos: every video under ``input_dir``, or the files named in ``input_list=FILE`` (one
path per line, relative to ``input_dir``; the workflow gives each job its own list), or, for
hand runs, ``chunk=N num_chunks=M`` (the videos whose name hashes to chunk N).

A video's name is its path relative to ``input_dir`` (:func:`hlrp.data.video.relative_name`):
a symbolic link keeps its link path, whether it points inside or outside the folder. The name
decides the chunk, the metadata.csv row, the actions file, ``video_id`` and the manifest entry.
A dangling link, or a listed file that does not exist, is recorded as ``skipped``.

``output_dir/manifest.json`` lists every input with its status: ``ok`` (clips and frames
written), ``skipped`` (with the reason: empty, not a video, too short, static...) or
``failed`` (a decoder crash). One bad file never stops the run. Shards are written under a
temporary name and renamed when complete; the manifest is written last.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import multiprocessing as mp
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

try:
    import simplejpeg
except ImportError:  # optional: Pillow encodes too, about half as fast
    simplejpeg = None

from hlrp.common.cli import run
from hlrp.common.config import PreprocessConfig, RootConfig
from hlrp.common.io import stable_bucket, write_json
from hlrp.common.logging import get_logger
from hlrp.data.shards import ShardWriter, make_sample
from hlrp.data.video import (
    VideoError,
    fit_frame,
    list_videos,
    open_decoder,
    probe,
    relative_name,
    resample_indices,
)

log = get_logger("preprocess")

THUMB = 32  # scene-cut and motion statistics are computed on 32x32 grey thumbnails


@dataclass
class VideoJob:
    """One input video and what is known about it."""

    path: str
    rel: str  # path relative to the input folder: the video's name in the dataset
    instruction: str = ""
    episode_id: str = ""
    task: str = ""
    actions_path: str | None = None
    skip: str = ""  # why it cannot be processed (missing, dangling link...); empty: process it


@dataclass
class VideoResult:
    """A manifest record, plus the encoded clips (not written to the manifest)."""

    file: str
    status: str  # ok | skipped | failed
    reason: str = ""
    clips: int = 0
    frames: int = 0
    source_frames: int = 0
    decoder: str = ""
    fps: float = 0.0
    duration_s: float = 0.0
    size: list[int] = field(default_factory=list)
    rotation: int = 0
    codec: str = ""
    scenes: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0
    payload: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def record(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("payload")
        return {k: v for k, v in d.items() if v not in ("", None) or k in ("file", "status")}


def video_id(rel: str) -> str:
    """A WebDataset-safe key: ASCII slug of the relative path + 8 hex digits of its hash."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(rel).with_suffix("").as_posix()).strip("_")
    return f"{slug[-48:] or 'video'}_{stable_bucket(rel, 16**8):08x}"


def chunk_of(rel: str, num_chunks: int) -> int:
    """The preprocess job a video belongs to: a stable hash of its relative path.

    Adding, removing or changing one video changes one chunk only, so the workflow re-runs
    one job, and the number of jobs stays bounded however large the corpus is.
    """
    return stable_bucket(rel, num_chunks)


# --------------------------------------------------------------------------------------
# one video (runs in a worker process)
# --------------------------------------------------------------------------------------
_GREY = np.array([0.299, 0.587, 0.114], np.float32)


def _thumb(frame: np.ndarray) -> np.ndarray:
    """32x32 grey thumbnail (block mean when the size allows, else a bilinear resize)."""
    grey = frame.astype(np.float32) @ _GREY  # (H, W)
    h, w = grey.shape
    if h % THUMB == 0 and w % THUMB == 0:
        return grey.reshape(THUMB, h // THUMB, THUMB, w // THUMB).mean(axis=(1, 3))
    img = Image.fromarray(grey.astype(np.uint8)).resize((THUMB, THUMB), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _encode(frame: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB frame (libjpeg-turbo through simplejpeg, else Pillow)."""
    if simplejpeg is not None:
        return simplejpeg.encode_jpeg(
            np.ascontiguousarray(frame), quality=quality, colorspace="RGB", colorsubsampling="420"
        )
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def split_scenes(diffs: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """[start, end) frame ranges between cuts; ``diffs[i]`` compares frames i and i+1."""
    cuts = [i + 1 for i, d in enumerate(diffs) if d > threshold]
    bounds = [0, *cuts, len(diffs) + 1]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def process_video(job: VideoJob, cfg: PreprocessConfig, min_frames: int) -> VideoResult:
    """Decode, resample, cut and encode one video. Never raises for a bad video."""
    t0 = time.perf_counter()
    res = VideoResult(file=job.rel, status="ok")
    if job.skip:
        res.status, res.reason = "skipped", job.skip
        return res
    try:
        _process(job, cfg, min_frames, res)
    except VideoError as e:
        res.status, res.reason, res.payload = "skipped", str(e), []
    except Exception as e:  # noqa: BLE001 - a bug or an exotic file: record it, keep going
        res.status, res.payload = "failed", []
        res.reason = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    res.seconds = round(time.perf_counter() - t0, 3)
    return res


def _process(job: VideoJob, cfg: PreprocessConfig, min_frames: int, res: VideoResult) -> None:
    info = probe(job.path)
    res.codec, res.rotation = info.codec, info.rotation
    res.size = list(info.display_size)
    dec = open_decoder(info, cfg.resolution, cfg.decoders)
    res.decoder = dec.name
    try:
        ts = dec.timestamps()
        res.source_frames = len(ts)
        span = float(ts[-1] - ts[0]) if len(ts) > 1 else 0.0
        res.fps = round((len(ts) - 1) / span, 3) if span > 0 else info.fps
        res.duration_s = round(span + (1.0 / res.fps if res.fps else 0.0), 3)
        if len(ts) < 2:
            raise VideoError(f"too short: {len(ts)} frame(s), need {min_frames} at {cfg.fps:g} fps")
        picks = resample_indices(ts, cfg.fps, cfg.max_duration_s)
        if len(picks) < min_frames:
            raise VideoError(
                f"too short: {span:.2f} s gives {len(picks)} frames at {cfg.fps:g} fps, "
                f"need {min_frames}"
            )
        actions = _load_actions(job, len(ts))
        frames, thumbs = [], []
        unique = np.unique(picks)
        decoded: dict[int, tuple[bytes, np.ndarray]] = {}
        try:
            for i, frame in zip(unique, dec.frames(unique.tolist(), cfg.decode_chunk)):
                frame = fit_frame(frame, cfg.resolution)
                decoded[int(i)] = (_encode(frame, cfg.jpeg_quality), _thumb(frame))
        except VideoError as e:  # truncated or damaged: keep what decoded
            if not decoded:
                raise
            res.note = f"decoding stopped early, kept {len(decoded)} of {len(unique)} frames ({e})"
        picks = np.asarray([p for p in picks if int(p) in decoded])
        for p in picks:
            jpg, th = decoded[int(p)]
            frames.append(jpg)
            thumbs.append(th)
    finally:
        dec.close()

    thumbs_arr = np.stack(thumbs) if thumbs else np.zeros((0, THUMB, THUMB), np.float32)
    diffs = (
        np.abs(np.diff(thumbs_arr, axis=0)).mean(axis=(1, 2)) if len(thumbs) > 1 else np.zeros(0)
    )
    scenes = split_scenes(diffs, cfg.scene_cut_threshold)
    res.scenes = len(scenes)
    dropped: Counter[str] = Counter()
    vid = video_id(job.rel)
    for a, b in scenes:
        for start in range(a, b, cfg.max_clip_frames):
            end = min(b, start + cfg.max_clip_frames)
            n = end - start
            if n < min_frames:
                dropped["too_short"] += 1
                continue
            motion = float(diffs[start : end - 1].mean()) if n > 1 else 0.0
            if motion < cfg.min_motion:
                dropped["static"] += 1
                continue
            src = picks[start:end]
            meta = {
                "video_id": vid,
                "source": job.rel,
                "clip_index": res.clips,
                "num_frames": n,
                "fps": cfg.fps,
                "start_s": round(start / cfg.fps, 4),
                "end_s": round(end / cfg.fps, 4),
                "source_frames": [int(s) for s in src],
                "resolution": cfg.resolution,
                "motion": round(motion, 3),
                "instruction": job.instruction,
                "episode_id": job.episode_id,
                "task": job.task,
                "has_actions": actions is not None,
            }
            res.payload.append(
                {
                    "key": f"{vid}-{res.clips:04d}",
                    "meta": meta,
                    "jpegs": frames[start:end],
                    "actions": None if actions is None else actions[src],
                }
            )
            res.clips += 1
            res.frames += n
    res.dropped = dict(dropped)
    if res.clips == 0:
        why = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(dropped.items()))
        raise VideoError(
            f"no usable clip ({why}; need >= {min_frames} frames and motion >= {cfg.min_motion})"
        )


def _load_actions(job: VideoJob, num_source_frames: int) -> np.ndarray | None:
    if not job.actions_path:
        return None
    with np.load(job.actions_path) as data:
        if "actions" not in data:
            raise VideoError(f"{job.actions_path} has no 'actions' array")
        actions = np.asarray(data["actions"], dtype=np.float32)
    if actions.ndim == 1:
        actions = actions[:, None]
    if len(actions) < num_source_frames:  # pad the tail (e.g. the final frame has no action)
        pad = np.full((num_source_frames - len(actions), actions.shape[1]), np.nan, np.float32)
        actions = np.concatenate([actions, pad])
    return actions.reshape(len(actions), -1)[:num_source_frames]


# --------------------------------------------------------------------------------------
# a whole folder (runs in the parent)
# --------------------------------------------------------------------------------------
def read_sidecar(input_dir: Path) -> dict[str, dict[str, str]]:
    """``metadata.csv`` beside the videos: file -> {instruction, episode_id, task}."""
    table = input_dir / "metadata.csv"
    if not table.is_file():
        return {}
    with open(table, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise ValueError(f"{table}: needs a 'file' column, found {reader.fieldnames}")
        return {row["file"]: row for row in reader}


def input_problem(path: Path) -> str:
    """Why ``path`` cannot be read as a file ("" when it can)."""
    if path.is_symlink() and not path.exists():
        return f"dangling symlink (target {os.readlink(path)} does not exist)"
    if not path.exists():
        return "file does not exist"
    if not path.is_file():
        return "not a regular file"
    return ""


def build_jobs(
    input_dir: Path,
    videos: Sequence[Path],
    actions_dir: Path | None,
) -> list[VideoJob]:
    """One job per video, named by :func:`relative_name` (link paths, never resolved)."""
    side = read_sidecar(input_dir)
    jobs = []
    seen = set()
    for path in videos:
        try:
            rel, skip = relative_name(input_dir, path), input_problem(path)
        except ValueError:
            rel, skip = str(path), f"not under the input folder {input_dir}"
        if rel in seen:  # listed twice: one video, one set of clips
            continue
        seen.add(rel)
        row = side.get(rel, {})
        actions = None
        if actions_dir is not None and not skip:
            candidate = actions_dir / Path(rel).with_suffix(".npz")
            actions = str(candidate) if candidate.is_file() else None
        jobs.append(
            VideoJob(
                path=str(path),
                rel=rel,
                instruction=row.get("instruction", "") or "",
                episode_id=row.get("episode_id", "") or "",
                task=row.get("task", "") or "",
                actions_path=actions,
                skip=skip,
            )
        )
    return jobs


def _work(job: VideoJob, cfg: PreprocessConfig, min_frames: int) -> VideoResult:
    """Pool entry point; looks ``process_video`` up at call time (forked workers see patches)."""
    return process_video(job, cfg, min_frames)


def _run_isolated(job: VideoJob, cfg: PreprocessConfig, min_frames: int) -> VideoResult:
    """Process one video in its own process, so a decoder crash names its culprit."""
    ctx = mp.get_context("fork")
    with cf.ProcessPoolExecutor(1, mp_context=ctx) as ex:
        try:
            return ex.submit(_work, job, cfg, min_frames).result()
        except cf.process.BrokenProcessPool:
            return VideoResult(
                file=job.rel, status="failed", reason="the decoder crashed the worker process"
            )


def _abandon(ex: cf.ProcessPoolExecutor) -> None:
    """Shut a broken pool down. Its surviving workers are killed first: one may be blocked
    writing a result nobody reads any more, and Python 3.11's pool then waits for it
    forever (at the latest when the interpreter exits)."""
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.kill()
    ex.shutdown(wait=True, cancel_futures=True)


def process_all(
    jobs: Sequence[VideoJob], cfg: PreprocessConfig, min_frames: int, workers: int
) -> Iterator[VideoResult]:
    """Results in input order, computed by ``workers`` processes with a bounded window."""
    if workers <= 1:
        for job in jobs:
            yield process_video(job, cfg, min_frames)
        return
    ctx = mp.get_context("fork")
    window = 2 * workers
    ex = cf.ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        pending: list[tuple[VideoJob, cf.Future]] = []
        it = iter(jobs)
        for job in it:
            pending.append((job, ex.submit(_work, job, cfg, min_frames)))
            if len(pending) >= window:
                break
        while pending:
            job, fut = pending.pop(0)
            try:
                yield fut.result()
            except cf.process.BrokenProcessPool:
                # a worker died (segfault in a decoder): retry the victims one by one
                _abandon(ex)
                yield _run_isolated(job, cfg, min_frames)
                victims = [j for j, _ in pending]
                pending = []
                for j in victims:
                    yield _run_isolated(j, cfg, min_frames)
                ex = cf.ProcessPoolExecutor(workers, mp_context=ctx)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, ex.submit(_work, nxt, cfg, min_frames)))
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def preprocess(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    cfg: PreprocessConfig,
    *,
    videos: Sequence[str | os.PathLike] | None = None,
    actions_dir: str | os.PathLike | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Preprocess ``videos`` (default: every video under ``input_dir``) into ``output_dir``.

    Relative entries of ``videos`` are taken under ``input_dir``. Paths are never resolved
    (see :func:`relative_name`); an entry that does not exist is recorded as skipped.
    """
    input_dir = Path(os.path.abspath(input_dir))
    out = Path(output_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    if videos is None:
        paths = list_videos(input_dir, cfg.extensions)
    else:
        paths = [input_dir / v for v in videos]  # an absolute entry stays as it is
    min_frames = max(2, cfg.min_clip_frames)
    jobs = build_jobs(input_dir, paths, Path(actions_dir) if actions_dir else None)
    out.mkdir(parents=True, exist_ok=True)
    for stale in list(out.glob("shard-*.tar")) + list(out.glob(".shard-*.tar.tmp")):
        stale.unlink()  # a rerun replaces the previous output entirely
    log.info("preprocessing %d videos from %s with %d workers", len(jobs), input_dir, workers)

    t0 = time.perf_counter()
    records = []
    counts: Counter[str] = Counter()
    with ShardWriter(out, cfg.shard_size_mb * 1e6) as writer:
        bar = tqdm(
            total=len(jobs), unit="video", desc="preprocess", mininterval=progress_interval()
        )
        for res in process_all(jobs, cfg, min_frames, workers):
            for clip in res.payload:
                writer.write(make_sample(clip["key"], clip["meta"], clip["jpegs"], clip["actions"]))
            counts[res.status] += 1
            if res.status != "ok":
                log.warning("%s %s: %s", res.status, res.file, res.reason)
            elif res.note:
                log.warning("%s: %s", res.file, res.note)
            records.append(res.record())
            res.payload = []
            bar.update(1)
            bar.set_postfix(ok=counts["ok"], skipped=counts["skipped"], failed=counts["failed"])
        bar.close()
        shards = writer.close()
    seconds = time.perf_counter() - t0
    manifest = {
        "input_dir": str(input_dir),
        "config": asdict(cfg),
        "min_clip_frames": min_frames,
        "shards": shards,
        "videos": records,
        "totals": {
            "videos": len(records),
            **{k: counts[k] for k in ("ok", "skipped", "failed")},
            "clips": sum(r.get("clips", 0) for r in records),
            "frames": sum(r.get("frames", 0) for r in records),
            "source_frames": sum(r.get("source_frames", 0) for r in records),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
            "seconds": round(seconds, 3),
        },
    }
    write_json(out / "manifest.json", manifest)
    t = manifest["totals"]
    log.info(
        "done in %.1f s: %d ok, %d skipped, %d failed; %d clips, %d frames in %d shards",
        seconds,
        t["ok"],
        t["skipped"],
        t["failed"],
        t["clips"],
        t["frames"],
        t["shards"],
    )
    return manifest


def progress_interval() -> float:
    """Seconds between progress-bar updates: live on a terminal, sparse in log files."""
    return 1.0 if sys.stderr.isatty() else 30.0


def default_workers(requested: int) -> int:
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def read_input_list(path: str | os.PathLike) -> list[str]:
    """The entries of an ``input_list`` file: one path per line, UTF-8, taken verbatim (any
    character but a newline; a trailing CR is dropped); blank lines are ignored."""
    text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    lines = (line[:-1] if line.endswith("\r") else line for line in text.split("\n"))
    return [line for line in lines if line.strip()]


def select_chunk(
    input_dir: str | os.PathLike, videos: Sequence[str | os.PathLike], chunk: int, num_chunks: int
) -> list[str]:
    """The entries of ``videos`` (relative to ``input_dir``, or absolute) in ``chunk``."""
    root = Path(os.path.abspath(input_dir))
    out = []
    for v in videos:
        try:
            name = relative_name(root, root / v)
        except ValueError:  # outside the folder: recorded as skipped by the chunk it hashes to
            name = os.fspath(v)
        if chunk_of(name, num_chunks) == chunk:
            out.append(os.fspath(v))
    return out


def _main(cfg: RootConfig) -> int:
    if not cfg.output_dir or not (cfg.input_dir or cfg.input_list):
        log.error("preprocess needs output_dir=PATH and input_dir=PATH (or input_list=FILE)")
        return 2
    videos = None
    input_dir = cfg.input_dir
    if cfg.input_list:
        videos = read_input_list(cfg.input_list)
        if input_dir is None:  # entries relative to the current folder; their common folder
            videos = [os.path.abspath(v) for v in videos]
            input_dir = os.path.commonpath([os.path.dirname(v) for v in videos] or ["."])
        log.info("%d inputs listed in %s", len(videos), cfg.input_list)
    if cfg.chunk is not None:
        if not 0 <= cfg.chunk < cfg.num_chunks:
            log.error("chunk=%d is outside [0, num_chunks=%d)", cfg.chunk, cfg.num_chunks)
            return 2
        if videos is None:
            if not Path(input_dir).is_dir():
                raise FileNotFoundError(f"input folder {input_dir} does not exist")
            found = list_videos(input_dir, cfg.data.preprocess.extensions)
            videos = [relative_name(input_dir, p) for p in found]
        videos = select_chunk(input_dir, videos, cfg.chunk, cfg.num_chunks)
    preprocess(
        input_dir,
        cfg.output_dir,
        cfg.data.preprocess,
        videos=videos,
        actions_dir=cfg.actions_dir,
        workers=default_workers(cfg.workers),
    )
    return 0


USAGE = """
usage: python -m hlrp.data.preprocess input_dir=PATH output_dir=PATH [key=value ...]

Turns every video under input_dir into WebDataset shards of clips in output_dir, with a
manifest.json listing each input's status. Useful keys: experiment=NAME, workers=N,
input_list=FILE (only these videos: one path per line, relative to input_dir),
chunk=N num_chunks=M (only the videos whose name hashes to chunk N), actions_dir=PATH,
data.preprocess.fps=10, data.preprocess.resolution=128,
data.preprocess.decoders=[decord,pyav], data.preprocess.min_clip_frames=3.
"""


def main(argv: Sequence[str] | None = None) -> int:
    return run(_main, argv, USAGE, stage="laq")


if __name__ == "__main__":
    raise SystemExit(main())
