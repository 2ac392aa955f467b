"""Frame pairs for LAQ training: ``LAQDataModule`` over the preprocess shards.

Two modes (``data.pair_level``):

* **Scene-level** (default). One dataset item is a clip; every visit draws
  ``data.pairs_per_clip`` random pairs (t, t+k), k from ``data.offsets``. Clips stream from
  the shards (nothing is held in memory), so this scales to any corpus.
* **Pair-level**. Every valid (t, t+k) pair of every clip is enumerated up front (clips in
  key order, offsets in the order given) and one item is one pair. The clips' JPEG bytes are
  held in memory, which suits debugging and small sets: ``data.max_samples=1`` keeps exactly
  one pair, the overfitting recipe of the README.

``data.max_samples`` keeps the first N clips (scene-level) or pairs (pair-level).
``data.val_split`` holds out whole *videos* (a stable hash of the video id), so validation
pairs never come from a video seen in training.

Both loaders are :class:`ResumableLoader` objects: deterministic for (seed, epoch), with a
``state_dict`` (epoch, batches served) that Lightning stores in every checkpoint, so a resumed
run continues with the exact batch where the killed run stopped. The position is restored
without building the skipped batches: the scene-level stream plans the skipped pairs (drawing
their random numbers) but decodes none of their frames, and the pair-level sampler starts at
the first unserved index. The examples do not depend on ``data.num_workers`` (the workers of a
rank share one stream), and the loaders never draw from the global RNGs (each DataLoader has
its own generator), so validation or a rebuilt loader cannot shift the model's random numbers.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from hlrp.common.config import DataConfig
from hlrp.common.lightning import ResumableLoader
from hlrp.data.preprocess import video_id
from hlrp.data.shards import ClipStream, FramePairs, all_pairs, decode_frames, iter_clips
from hlrp.data.split import is_val_video


def pair_item(sample: dict[str, Any], t: int, u: int) -> dict[str, Any]:
    """One training example: frames uint8 (2, H, W, 3) of clip ``sample`` at t and u."""
    meta = sample["meta"]
    return {
        "frames": torch.from_numpy(decode_frames(sample, (t, u))),
        "offset": u - t,
        "t": t,
        "key": sample["__key__"],
        "instruction": meta.get("instruction", ""),
    }


def count_clips(shards: str | Path, val_split: float) -> dict[str, int]:
    """Clips per split, from the shard index's manifests (fast) or by reading the shards."""
    counts = {"train": 0, "val": 0}
    path = Path(shards)
    if path.suffix == ".json" and path.is_file():
        index = json.loads(path.read_text())
        for m in index.get("manifests", []):
            manifest = json.loads((path.parent / m).read_text())
            for v in manifest["videos"]:
                split = "val" if is_val_video(video_id(v["file"]), val_split) else "train"
                counts[split] += v.get("clips", 0)
        if index.get("manifests"):
            return counts
    for clip in iter_clips(shards):
        split = "val" if is_val_video(clip["meta"]["video_id"], val_split) else "train"
        counts[split] += 1
    return counts


class SplitFilter:
    """Keep clips of one split (and, when ``allowed`` is given, only those clip keys)."""

    def __init__(self, val_split: float, want_val: bool, allowed: set[str] | None = None):
        self.val_split, self.want_val, self.allowed = val_split, want_val, allowed

    def __call__(self, sample: dict[str, Any]) -> bool:
        if self.allowed is not None and sample["__key__"] not in self.allowed:
            return False
        return is_val_video(sample["meta"]["video_id"], self.val_split) == self.want_val


class ScenePairs(FramePairs):
    """Lazy ClipStream transform: a clip of the wanted split -> ``count`` random frame pairs
    (:func:`pair_item`); skipped pairs are drawn but never decoded."""

    def __init__(self, offsets: list[int], count: int, keep: SplitFilter):
        super().__init__(offsets, count, keep=keep, build=pair_item)


class PairDataset(Dataset):
    """Pair-level mode: every valid (t, t+k) of the given clips, held in memory."""

    def __init__(self, clips: list[dict[str, Any]], offsets: list[int], max_samples: int | None):
        self.clips = clips
        self.pairs: list[tuple[int, int, int]] = []
        for ci, clip in enumerate(clips):
            for t, u in all_pairs(clip["meta"]["num_frames"], offsets):
                self.pairs.append((ci, t, u))
                if max_samples is not None and len(self.pairs) >= max_samples:
                    return

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ci, t, u = self.pairs[i]
        return pair_item(self.clips[ci], t, u)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "frames": torch.stack([it["frames"] for it in items]),  # (B, 2, H, W, 3) uint8
        "offset": torch.tensor([it["offset"] for it in items]),
        "t": torch.tensor([it["t"] for it in items]),
        "key": [it["key"] for it in items],
        "instruction": [it["instruction"] for it in items],
    }


class SkipSampler(torch.utils.data.Sampler):
    """A sampler's indices from position ``start`` on (the pair-level resume)."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


def _loader(dataset, batch_size: int, workers: int, seed: int, sampler=None) -> DataLoader:
    """One DataLoader for all epochs: workers persist (forked, so they share the epoch).

    Its own generator: starting an iterator draws the workers' base seed from it, not from the
    global torch RNG, which holds the model's random streams (NSVQ noise) and is checkpointed.
    """
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "multiprocessing_context": mp.get_context("fork")}
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )


class LAQDataModule(L.LightningDataModule):
    """Train/val frame-pair loaders over preprocess shards (see the module docstring)."""

    def __init__(self, cfg: DataConfig, shards: str | Path, seed: int = 0, world_size: int = 1):
        super().__init__()
        self.cfg = cfg
        self.world_size = world_size  # used before a Trainer is attached (sizing the schedule)
        self.shards = str(shards)
        self.seed = seed
        self.counts: dict[str, int] = {}
        self.allowed_train: set[str] | None = None
        self.train_pairs: PairDataset | None = None
        self.val_pairs: PairDataset | None = None

    # --- distributed context -------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return 0, self.world_size

    def setup(self, stage: str | None = None) -> None:
        if self.counts:  # already set up (train() sizes the schedule before fit)
            return
        c = self.cfg
        if c.pair_level:
            clips = sorted(iter_clips(self.shards), key=lambda s: s["__key__"])
            train = [s for s in clips if not is_val_video(s["meta"]["video_id"], c.val_split)]
            val = [s for s in clips if is_val_video(s["meta"]["video_id"], c.val_split)]
            self.train_pairs = PairDataset(train, c.offsets, c.max_samples)
            self.val_pairs = PairDataset(val, c.offsets, c.max_samples)
            self.counts = {"train": len(self.train_pairs), "val": len(self.val_pairs)}
        else:
            self.counts = count_clips(self.shards, c.val_split)
            if c.max_samples is not None:  # the first N training clips in key order
                keys = sorted(
                    s["__key__"]
                    for s in iter_clips(self.shards)
                    if not is_val_video(s["meta"]["video_id"], c.val_split)
                )
                self.allowed_train = set(keys[: c.max_samples])
                self.counts["train"] = len(self.allowed_train)
        if self.counts["train"] == 0:
            raise ValueError(
                f"no training samples in {self.shards} (val_split={c.val_split}, "
                f"max_samples={c.max_samples}, pair_level={c.pair_level})"
            )

    def _loader(self, train: bool) -> ResumableLoader | None:
        c = self.cfg
        rank, world = self._rank_world()
        workers = c.num_workers
        if c.pair_level:
            ds = self.train_pairs if train else self.val_pairs
            if ds is None or len(ds) == 0:
                return None
            bs = min(c.batch_size, len(ds))

            sampler = SkipSampler(
                DistributedSampler(ds, world, rank, shuffle=train, seed=self.seed)
            )
            loader = _loader(ds, bs, 0 if len(ds) < 64 else workers, self.seed, sampler=sampler)

            def make(epoch: int, start: int) -> DataLoader:
                sampler.set_epoch(epoch)
                sampler.start = start * bs
                return loader

            per_rank = -(-len(ds) // world)
            return ResumableLoader(make, -(-per_rank // bs))

        n_clips = self.counts["train" if train else "val"]
        if n_clips == 0:
            return None
        pairs = c.pairs_per_clip if train else 1
        keep = SplitFilter(
            c.val_split, want_val=not train, allowed=self.allowed_train if train else None
        )
        transform = ScenePairs(c.offsets, pairs, keep)
        items_per_epoch = n_clips * pairs
        # Multi-GPU: each rank draws shards with replacement and yields a fixed number of pairs,
        # so ranks stay in step. One process: read every shard once per epoch. A rank's workers
        # share its stream (batch b from worker b mod workers): the pairs do not depend on the
        # number of workers, and a resume skips pairs without decoding them.
        resampled = train and world > 1
        epoch_size = -(-items_per_epoch // world) if resampled else None
        stream = ClipStream(
            self.shards,
            shuffle=c.shuffle_buffer if train else 0,
            seed=self.seed + (0 if train else 7919),
            resampled=resampled,
            epoch_size=epoch_size,
            transform=transform,
            rank=rank,
            world_size=world,
            batch_size=c.batch_size,
        )

        loader = _loader(stream, c.batch_size, workers, self.seed)

        def make(epoch: int, start: int) -> DataLoader:
            stream.set_position(epoch if train else 0, start * c.batch_size)
            return loader

        per_rank = -(-items_per_epoch // world) if epoch_size is None else epoch_size
        return ResumableLoader(make, max(1, -(-per_rank // c.batch_size)))

    def train_dataloader(self) -> ResumableLoader:
        loader = self._loader(train=True)
        assert loader is not None
        return loader

    def val_dataloader(self) -> ResumableLoader | list:
        return self._loader(train=False) or []
