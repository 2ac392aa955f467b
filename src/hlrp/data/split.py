"""The train / held-out split of a corpus, by whole videos: one function every stage uses."""

from __future__ import annotations

from hlrp.common.io import stable_bucket

VAL_BUCKETS = 1_000_000


def is_val_video(vid: str, val_split: float) -> bool:
    """Deterministic video-level split: the same videos are held out on every run and in
    every stage (a stable hash of the video id, so no list has to travel between stages)."""
    return stable_bucket(vid, VAL_BUCKETS) < val_split * VAL_BUCKETS
