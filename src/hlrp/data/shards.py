"""WebDataset shards of video clips: the atomic writer and the streaming reader.

A shard is a plain POSIX tar file (large sequential reads suit GPFS). One *sample* is one clip
of consecutive frames at the dataset's frame rate. Sample keys inside a shard:

=====================  =================================================================
``__key__``            ``<video-id>-<clip:04d>``; the video id is an ASCII slug of the
                       source's relative path plus 8 hex digits of its hash
``json``               metadata (see below)
``0000.jpg`` ...       the frames, one JPEG each, ``resolution x resolution`` RGB
``actions.npy``        float32 ``(num_frames, action_dim)``, only when actions are known
=====================  =================================================================

Metadata (``json``): ``video_id``, ``source`` (path relative to the input folder),
``clip_index``, ``num_frames``, ``fps``, ``start_s`` and ``end_s`` (time span in the source),
``source_frames`` (the source frame index of every clip frame), ``resolution``,
``instruction``, ``episode_id``, ``task`` (empty strings when unknown), ``has_actions``.

Frames are decoded lazily by :func:`decode_frames`, so a reader that needs two frames of a
128-frame clip (LAQ's frame pairs) decodes two JPEGs, not 128.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from hlrp.common.io import write_json

FRAME_EXT = "{:04d}.jpg"


def frame_keys(num_frames: int) -> list[str]:
    return [FRAME_EXT.format(i) for i in range(num_frames)]


class ShardWriter:
    """Write samples to ``shard-000000.tar``, ``shard-000001.tar``... in ``out_dir``.

    A shard is written under a temporary name and renamed when closed, so a shard that is
    visible is complete. A new shard starts once the current one reaches ``max_bytes``.
    """

    def __init__(self, out_dir: str | os.PathLike, max_bytes: float, prefix: str = "shard"):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.prefix = prefix
        self.shards: list[dict[str, Any]] = []  # {"path", "samples", "bytes"} of closed shards
        self._tar: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._samples = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = self.out_dir / f".{name}.tmp"
        self._tar = wds.TarWriter(str(self._tmp))
        self._samples = 0

    def write(self, sample: dict[str, Any]) -> None:
        if self._tar is None:
            self._open()
        assert self._tar is not None and self._tmp is not None
        self._tar.write(sample)
        self._samples += 1
        if self._tmp.stat().st_size >= self.max_bytes:
            self._close_current()

    def _close_current(self) -> None:
        if self._tar is None:
            return
        assert self._tmp is not None
        self._tar.close()
        final = self._tmp.with_name(self._tmp.name[1:].removesuffix(".tmp"))
        os.replace(self._tmp, final)
        self.shards.append(
            {"path": final.name, "samples": self._samples, "bytes": final.stat().st_size}
        )
        self._tar, self._tmp = None, None

    def close(self) -> list[dict[str, Any]]:
        self._close_current()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (closed shards stay)."""
        if self._tar is not None:
            self._tar.close()
            assert self._tmp is not None
            self._tmp.unlink(missing_ok=True)
            self._tar, self._tmp = None, None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def make_sample(
    key: str, meta: dict[str, Any], jpegs: Sequence[bytes], actions: np.ndarray | None
) -> dict[str, Any]:
    sample: dict[str, Any] = {"__key__": key, "json": json.dumps(meta).encode("utf-8")}
    for name, data in zip(frame_keys(len(jpegs)), jpegs):
        sample[name] = data
    if actions is not None:
        buf = io.BytesIO()
        np.save(buf, np.asarray(actions, dtype=np.float32))
        sample["actions.npy"] = buf.getvalue()
    return sample


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
def resolve_shards(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    """Shard paths from an ``index.json``, a ``manifest.json``, a folder, a glob or a list."""
    if isinstance(spec, list | tuple):
        return [str(s) for s in spec]
    spec = str(spec)
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        index = json.loads(path.read_text())
        base = path.parent
        return [str(base / s["path"]) for s in index["shards"]]
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*.tar") if not p.name.startswith("."))
    else:
        found = sorted(glob.glob(spec)) if any(c in spec for c in "*?[") else []
        if not found and "{" in spec:
            return list(wds.shardlists.expand_urls(spec))
    if not found:
        raise FileNotFoundError(f"no shards found at {spec}")
    return found


def decode_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample with its ``json`` parsed into ``meta`` (frames stay JPEG bytes)."""
    sample["meta"] = json.loads(sample["json"])
    return sample


def decode_frames(sample: dict[str, Any], indices: Iterable[int] | None = None) -> np.ndarray:
    """Decode the frames at ``indices`` (all when None) to uint8 ``(n, H, W, 3)``."""
    meta = sample["meta"] if "meta" in sample else json.loads(sample["json"])
    idx = range(meta["num_frames"]) if indices is None else indices
    frames = [_decode_jpeg(sample[FRAME_EXT.format(i)]) for i in idx]
    return np.stack(frames)


def _decode_jpeg(data: bytes) -> np.ndarray:
    try:
        import simplejpeg

        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ImportError:
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def decode_actions(sample: dict[str, Any]) -> np.ndarray | None:
    data = sample.get("actions.npy")
    return None if data is None else np.load(io.BytesIO(data))


def _rank_world() -> tuple[int, int]:
    """This process's (rank, world size): torch.distributed if up, else Slurm/torchrun vars."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ClipStream(torch.utils.data.IterableDataset):
    """A stream of clip samples (metadata parsed as ``meta``, frames still JPEG bytes).

    Epochs. Call :meth:`set_epoch` before each epoch (Lightning does, through the sampler
    hook of the LAQ datamodule); shuffling is seeded by ``(seed, epoch)``, so every epoch has
    its own order and a rerun reproduces it.

    * ``resampled=False`` (validation, labelling, single process): one epoch reads every
      shard exactly once. Shards are dealt out to (rank, worker) pairs; with fewer shards
      than readers some readers get nothing, so keep shards >= ranks x workers.
    * ``resampled=True`` (multi-GPU training): each reader draws shards at random with
      replacement and yields exactly ``epoch_size`` samples, so every rank takes the same
      number of steps and none waits at the end of an epoch.

    ``transform`` maps each sample to zero or more training examples (e.g. frame pairs). A
    transform with a ``plan(sample, rng)`` method (see :class:`FramePairs`) is *lazy*: ``plan``
    draws the same random numbers as the call and returns one zero-argument function per
    example, so examples the stream skips are never built (no JPEG is decoded for them).

    ``batch_size`` (optional) makes the stream independent of the number of DataLoader
    workers: every worker of a rank reads the rank's whole stream and builds only its share of
    the examples, batch b (of ``batch_size`` consecutive examples) in worker b mod workers,
    which is the order in which a DataLoader of the same ``batch_size`` collects them. Without
    it, the shards are dealt out to the workers as described above.

    Position. :meth:`set_position` (epoch, start) makes the next iteration begin at example
    ``start`` of the epoch (of each reader's stream; with ``batch_size``, of the rank's
    stream). The skipped examples are planned, not built: their samples are read from the
    shards, but with a lazy transform none of their frames is decoded, and the result is
    exactly the examples an uninterrupted epoch yields from that position on.
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str],
        *,
        shuffle: int = 0,
        seed: int = 0,
        resampled: bool = False,
        epoch_size: int | None = None,
        transform: Callable[[dict[str, Any], np.random.Generator], Iterable[Any]] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        batch_size: int | None = None,
    ):
        super().__init__()
        self.rank, self.world_size = rank, world_size  # None: from torch.distributed / env
        self.urls = resolve_shards(shards)
        self.shuffle = shuffle
        self.seed = seed
        self.resampled = resampled
        if resampled and not epoch_size:
            raise ValueError("resampled=True needs epoch_size (samples per reader per epoch)")
        self.epoch_size = epoch_size
        self.transform = transform
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be positive")
        self.batch_size = batch_size
        # shared with DataLoader workers forked from this process, so persistent workers see
        # the epoch and position set in the main process
        self._epoch = mp.RawValue("q", 0)
        self._start = mp.RawValue("q", 0)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @property
    def start(self) -> int:
        """Examples the next iteration skips (see :meth:`set_position`)."""
        return int(self._start.value)

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, start: int) -> None:
        """Begin the next iteration at example ``start`` of epoch ``epoch``."""
        if start < 0:
            raise ValueError(f"start={start}: must be >= 0")
        self._epoch.value = epoch
        self._start.value = start

    def _reader(self) -> tuple[int, int, int, int]:
        """(reader, readers, worker, workers): the shard reader this process is and the
        DataLoader worker it runs in (with ``batch_size``, a rank's workers are one reader)."""
        rank, world = _rank_world()
        if self.rank is not None and self.world_size is not None:
            rank, world = self.rank, self.world_size
        info = torch.utils.data.get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        if self.batch_size is not None:
            return rank, world, wid, nworkers
        return rank * nworkers + wid, world * nworkers, 0, 1

    def _shard_urls(self, reader: int, readers: int) -> Iterator[str]:
        if self.resampled:
            rng = np.random.default_rng([self.seed, self.epoch, reader, 1])
            while True:
                yield self.urls[rng.integers(len(self.urls))]
        order = list(self.urls)
        if self.shuffle:  # the same shard order on every reader, then dealt out
            np.random.default_rng([self.seed, self.epoch, 0]).shuffle(order)
        yield from order[reader::readers]

    def __iter__(self) -> Iterator[Any]:
        reader, readers, worker, workers = self._reader()
        epoch, start = self.epoch, self.start
        rng = np.random.default_rng([self.seed, epoch, reader, 2])
        samples = wds.tariterators.tarfile_samples(
            ({"url": u} for u in self._shard_urls(reader, readers)),
            handler=wds.warn_and_continue,
        )
        samples = (decode_meta(s) for s in samples)
        if self.shuffle:
            samples = _buffer_shuffle(samples, self.shuffle, rng)
        pos = 0  # examples of this reader's epoch so far, built or skipped
        for sample in samples:
            for build in self._plan(sample, rng):
                if self.epoch_size is not None and pos >= self.epoch_size:
                    return
                mine = pos >= start and (
                    self.batch_size is None
                    or ((pos - start) // self.batch_size) % workers == worker
                )
                pos += 1
                if mine:
                    yield build()
            if self.epoch_size is not None and pos >= self.epoch_size:
                return

    def _plan(self, sample: dict[str, Any], rng: np.random.Generator) -> list[Callable[[], Any]]:
        """The sample's examples as zero-argument builders (drawing from rng as the transform
        does); without a lazy transform the examples are built here."""
        if self.transform is None:
            return [functools.partial(_same, sample)]
        plan = getattr(self.transform, "plan", None)
        if plan is not None:
            return list(plan(sample, rng))
        return [functools.partial(_same, item) for item in self.transform(sample, rng)]


def _same(item: Any) -> Any:
    return item


def _buffer_shuffle(samples: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Streaming shuffle: keep ``size`` samples, emit a random one as each new one arrives."""
    buf: list[Any] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.integers(size)
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)
    yield from buf


def iter_clips(shards: str | os.PathLike | Sequence[str]) -> Iterator[dict[str, Any]]:
    """Every clip of ``shards`` once, in order, in this process (no workers, no shuffling)."""
    for url in resolve_shards(shards):
        for sample in wds.tariterators.tarfile_samples([{"url": url}]):
            yield decode_meta(sample)


def random_pairs(
    num_frames: int, offsets: Sequence[int], count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``count`` random frame pairs (t, t+k) of a clip, k drawn from the offsets that fit."""
    valid = [k for k in offsets if k < num_frames]
    pairs = []
    for _ in range(count if valid else 0):
        k = valid[rng.integers(len(valid))]
        t = int(rng.integers(num_frames - k))
        pairs.append((t, t + k))
    return pairs


def all_pairs(num_frames: int, offsets: Sequence[int]) -> list[tuple[int, int]]:
    """Every valid (t, t+k) of a clip (pair-level mode)."""
    return [(t, t + k) for k in offsets for t in range(num_frames - k)]


def pair_example(sample: dict[str, Any], t: int, u: int) -> dict[str, Any]:
    """Frames t and u of a clip: ``{"frames": uint8 (2, H, W, 3), "offset": u - t, "t",
    "key", "instruction"}``; decodes these two JPEGs only."""
    meta = sample["meta"]
    return {
        "frames": decode_frames(sample, (t, u)),
        "offset": u - t,
        "t": t,
        "key": sample["__key__"],
        "instruction": meta.get("instruction", ""),
    }


class FramePairs:
    """A lazy :class:`ClipStream` transform: clip -> ``count`` random frame pairs
    (:func:`pair_example`), drawn by :func:`random_pairs`. ``keep`` (optional) drops clips."""

    def __init__(
        self,
        offsets: Sequence[int],
        count: int,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        build: Callable[[dict[str, Any], int, int], Any] = pair_example,
    ):
        self.offsets, self.count, self.keep, self.build = list(offsets), count, keep, build

    def plan(self, sample: dict[str, Any], rng: np.random.Generator) -> list[Callable[[], Any]]:
        """One builder per pair; the pairs are drawn now, the frames decoded when built."""
        if self.keep is not None and not self.keep(sample):
            return []
        n = sample["meta"]["num_frames"]
        pairs = random_pairs(n, self.offsets, self.count, rng)
        return [functools.partial(self.build, sample, t, u) for t, u in pairs]

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> Iterator[Any]:
        return (build() for build in self.plan(sample, rng))


def frame_pairs(offsets: Sequence[int], pairs_per_clip: int) -> FramePairs:
    """A :class:`ClipStream` transform: clip -> ``pairs_per_clip`` decoded frame pairs.

    Each example is ``{"frames": uint8 (2, H, W, 3), "offset": k, "key", "instruction"}``;
    only the two JPEGs of each pair are decoded.
    """
    return FramePairs(offsets, pairs_per_clip)


def write_index(out_path: str | os.PathLike, manifests: Sequence[str | os.PathLike]) -> dict:
    """Merge per-job ``manifest.json`` files into one ``index.json`` of all shards."""
    out_path = Path(out_path)
    shards, videos = [], []
    for m in manifests:
        m = Path(m)
        data = json.loads(m.read_text())
        rel = os.path.relpath(m.parent, out_path.parent)
        for s in data["shards"]:
            shards.append({**s, "path": os.path.join(rel, s["path"])})
        videos.extend(data["videos"])
    status = {}
    for v in videos:
        status[v["status"]] = status.get(v["status"], 0) + 1
    index = {
        "shards": shards,
        "totals": {
            "shards": len(shards),
            "clips": sum(s["samples"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "frames": sum(v.get("frames", 0) for v in videos),
            "videos": len(videos),
            "videos_by_status": status,
        },
        "manifests": [os.path.relpath(m, out_path.parent) for m in manifests],
    }
    write_json(out_path, index)
    return index
