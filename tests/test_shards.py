"""Shard writing (atomic, size-bounded) and the streaming reader's epoch semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import count_calls
from hlrp.data.shards import (
    ClipStream,
    ShardWriter,
    all_pairs,
    decode_frames,
    frame_pairs,
    iter_clips,
    make_sample,
    random_pairs,
    resolve_shards,
    write_index,
)


def _jpeg(value: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_clips(out, n_clips=12, frames=6, max_bytes=4000):
    out.mkdir(parents=True, exist_ok=True)
    with ShardWriter(out, max_bytes) as w:
        for i in range(n_clips):
            meta = {"num_frames": frames, "clip_index": i, "instruction": f"clip {i}"}
            jpegs = [_jpeg(10 * f) for f in range(frames)]
            w.write(make_sample(f"clip{i:03d}", meta, jpegs, np.full((frames, 2), i, np.float32)))
    shards = w.shards
    (out / "manifest.json").write_text(json.dumps({"shards": shards, "videos": []}))
    return shards


@pytest.fixture
def shard_dir(tmp_path):
    write_clips(tmp_path / "part-000")
    write_index(tmp_path / "index.json", [tmp_path / "part-000" / "manifest.json"])
    return tmp_path


def test_writer_rolls_over_and_leaves_no_temp_files(shard_dir):
    names = sorted(p.name for p in (shard_dir / "part-000").iterdir())
    assert "manifest.json" in names and len([n for n in names if n.endswith(".tar")]) > 2
    assert not [n for n in names if n.endswith(".tmp")]


def test_aborted_writer_hides_the_partial_shard(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, 1e9) as w:
        w.write(make_sample("a", {"num_frames": 1}, [_jpeg(1)], None))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_resolve_shards_accepts_index_folder_and_glob(shard_dir):
    by_index = resolve_shards(shard_dir / "index.json")
    assert by_index == resolve_shards(shard_dir / "part-000")
    assert by_index == resolve_shards(str(shard_dir / "part-000" / "*.tar"))
    with pytest.raises(FileNotFoundError, match="no shards"):
        resolve_shards(shard_dir / "nothing")


def test_sample_keys_and_lazy_frames(shard_dir):
    clips = list(iter_clips(shard_dir / "index.json"))
    assert [c["meta"]["clip_index"] for c in clips] == list(range(12))
    c = clips[3]
    assert {"__key__", "json", "0000.jpg", "0005.jpg", "actions.npy"} <= set(c)
    two = decode_frames(c, [1, 4])
    assert two.shape == (2, 8, 8, 3) and abs(int(two[1].mean()) - 40) <= 2


def keys_of(ds, workers):
    dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    return list(dl)


def key_only(sample, rng):
    return [sample["__key__"]]


@pytest.mark.parametrize("workers", [0, 2])
def test_one_epoch_reads_every_clip_once(shard_dir, workers):
    ds = ClipStream(shard_dir / "index.json", shuffle=5, seed=3, transform=key_only)
    keys = keys_of(ds, workers)
    assert sorted(keys) == [f"clip{i:03d}" for i in range(12)]


def test_epochs_reshuffle_reproducibly(shard_dir):
    ds = ClipStream(shard_dir / "index.json", shuffle=8, seed=3, transform=key_only)
    e0 = keys_of(ds, 2)
    ds.set_epoch(1)
    e1 = keys_of(ds, 2)
    ds.set_epoch(0)
    assert keys_of(ds, 2) == e0 and e1 != e0 and sorted(e1) == sorted(e0)


def test_ranks_split_the_shards(shard_dir, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        seen.append(keys_of(ClipStream(shard_dir / "index.json", transform=key_only), 0))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"clip{i:03d}" for i in range(12)]


def test_resampled_epochs_have_a_fixed_length(shard_dir):
    ds = ClipStream(shard_dir / "index.json", resampled=True, epoch_size=25, transform=key_only)
    assert len(keys_of(ds, 2)) == 50  # 25 per worker
    with pytest.raises(ValueError, match="epoch_size"):
        ClipStream(shard_dir / "index.json", resampled=True)


def test_frame_pairs_transform(shard_dir):
    ds = ClipStream(shard_dir / "index.json", transform=frame_pairs([1, 3], pairs_per_clip=2))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert batch["frames"].shape == (6, 2, 8, 8, 3)
    assert set(batch["offset"].tolist()) <= {1, 3}
    # frame values encode the frame index: the second frame is `offset` frames later
    diff = (
        batch["frames"][:, 1].float().mean((1, 2, 3))
        - batch["frames"][:, 0].float().mean((1, 2, 3))
    ) / 10
    assert torch.allclose(diff, batch["offset"].float(), atol=0.3)


def test_pair_enumeration():
    assert all_pairs(4, [1, 3]) == [(0, 1), (1, 2), (2, 3), (0, 3)]
    pairs = random_pairs(5, [2, 9], 10, np.random.default_rng(0))
    assert len(pairs) == 10 and all(u - t == 2 and t >= 0 and u < 5 for t, u in pairs)
    assert random_pairs(2, [5], 3, np.random.default_rng(0)) == []


def _pairs_keys(batches):
    return [(k, t) for b in batches for k, t in zip(b["key"], b["t"].tolist())]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_positions_without_decoding_and_shares_it_among_workers(
    shard_dir, workers, monkeypatch
):
    """With batch_size the workers share one stream (the same batches for any number of
    workers); set_position starts mid-epoch, planning the skipped pairs without decoding."""
    from hlrp.data import shards as shards_mod

    def make():
        return ClipStream(
            shard_dir / "index.json",
            shuffle=4,
            seed=3,
            batch_size=3,
            transform=frame_pairs([1, 3], pairs_per_clip=2),
        )

    def batches(ds, n_workers):
        return list(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=n_workers))

    ds = make()
    ds.set_epoch(1)
    reference = _pairs_keys(batches(ds, 0))
    assert len(reference) == 24
    ds = make()
    ds.set_epoch(1)
    assert _pairs_keys(batches(ds, workers)) == reference

    calls = count_calls(monkeypatch, shards_mod, "decode_frames")
    ds = make()
    ds.set_position(1, 15)
    assert (ds.epoch, ds.start) == (1, 15)
    got = _pairs_keys(batches(ds, workers))
    assert got == reference[15:]
    if workers == 0:  # (workers decode in their own processes)
        assert calls[0] == len(reference) - 15  # one decode per pair served, none skipped
