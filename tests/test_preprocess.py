"""Videos -> shards: bad inputs, manifests, metadata, actions, chunking, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hlrp.common.config import load
from hlrp.data import preprocess as P
from hlrp.data.shards import decode_actions, decode_frames, iter_clips
from videos import moving_square, write_video


def cfg(*overrides):
    return load(
        ["data.preprocess.resolution=32", "data.preprocess.fps=10", "data.offsets=[2]", *overrides]
    )


def run(input_dir, out, *overrides, workers=2, **kw):
    c = cfg(*overrides)
    return P.preprocess(input_dir, out, c.data.preprocess, c.data.offsets, workers=workers, **kw)


def test_every_bad_input_is_processed_or_skipped_with_a_reason(bad_corpus, tmp_path):
    root, cases = bad_corpus
    manifest = run(root, tmp_path / "out")
    by_file = {v["file"]: v for v in manifest["videos"]}
    assert len(by_file) == len(cases)
    for name, (path, expected) in cases.items():
        rec = by_file[path.relative_to(root).as_posix()]
        assert rec["status"] == expected, (name, rec)
        if expected == "skipped":
            assert rec["reason"] and "\n" not in rec["reason"], name
        else:
            assert rec["clips"] >= 1 and rec["frames"] >= 3, (name, rec)
    # the good files' clips are all in the shards, readable, at the configured size
    clips = list(iter_clips(tmp_path / "out"))
    assert len(clips) == manifest["totals"]["clips"]
    assert sum(c["meta"]["num_frames"] for c in clips) == manifest["totals"]["frames"]
    for c in clips:
        frames = decode_frames(c)
        assert frames.shape == (c["meta"]["num_frames"], 32, 32, 3)
    sources = {c["meta"]["source"] for c in clips}
    assert "my vidéo 東京 (1).mp4" in sources
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_specific_reasons(bad_corpus, tmp_path):
    root, cases = bad_corpus
    files = [cases[k][0] for k in ("zero_byte", "one_frame", "static", "zero_frame", "corrupt")]
    manifest = run(root, tmp_path / "out", videos=files, workers=1)
    reasons = {Path(v["file"]).stem: v["reason"] for v in manifest["videos"]}
    assert reasons["zero"] == "empty file (0 bytes)"
    assert reasons["one"].startswith("too short: 1 frame")
    assert "static" in reasons["static"]
    assert "no video stream" in reasons["zero_frame"]
    assert "not a readable video" in reasons["corrupt"]


def test_odd_inputs_keep_time_and_orientation(bad_corpus, tmp_path):
    root, cases = bad_corpus
    names = ("vfr", "fps60", "rotated", "truncated", "large_4k")
    manifest = run(root, tmp_path / "out", videos=[cases[k][0] for k in names])
    rec = {Path(v["file"]).stem: v for v in manifest["videos"]}
    assert rec["fps60"]["source_frames"] == 120 and rec["fps60"]["frames"] == 20  # 2 s at 10 fps
    assert rec["rotated"]["rotation"] == 90 and rec["rotated"]["size"] == [64, 128]
    assert "decoding stopped early" in rec["truncated"]["note"]
    assert rec["large_4k"]["size"] == [3840, 2160]
    # VFR: 49 gaps of 33 or 80 ms -> 2.37 s -> 24 frames at 10 fps
    assert rec["vfr"]["frames"] == 24


def test_metadata_and_actions_travel_with_clips(small_corpus, tmp_path):
    manifest = run(small_corpus / "videos", tmp_path / "out", actions_dir=small_corpus / "actions")
    assert manifest["totals"]["ok"] == 4
    clips = {c["meta"]["source"]: c for c in iter_clips(tmp_path / "out")}
    c = clips["sub/clip_1.mp4"]
    meta = c["meta"]
    assert meta["instruction"] == "move the square 1" and meta["episode_id"] == "ep1"
    assert meta["fps"] == 10 and meta["num_frames"] == 20 and meta["has_actions"]
    actions = decode_actions(c)
    # actions are the source-frame rows picked by the 30 -> 10 fps resampling
    assert actions.shape == (20, 2)
    assert actions[:, 0].tolist() == meta["source_frames"] == list(range(0, 60, 3))
    assert np.all(actions[:, 1] == 1)


def test_long_scenes_split_and_scene_cuts(tmp_path):
    a = moving_square(30, 96, 64, seed=0, background=20)
    b = moving_square(30, 96, 64, seed=1, background=120)  # a hard cut to a brighter scene
    write_video(tmp_path / "v" / "cut.mp4", a + b, fps=10)
    manifest = run(tmp_path / "v", tmp_path / "out", "data.preprocess.max_clip_frames=20")
    rec = manifest["videos"][0]
    assert rec["scenes"] == 2
    clips = list(iter_clips(tmp_path / "out"))
    assert [c["meta"]["num_frames"] for c in clips] == [20, 10, 20, 10]
    assert [c["meta"]["start_s"] for c in clips] == [0.0, 2.0, 3.0, 5.0]


def test_shards_roll_over_at_the_size_limit(small_corpus, tmp_path):
    manifest = run(small_corpus / "videos", tmp_path / "out", "data.preprocess.shard_size_mb=0.01")
    assert manifest["totals"]["shards"] == 4
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == [
        f"shard-{i:06d}.tar" for i in range(4)
    ]
    assert sum(s["samples"] for s in manifest["shards"]) == 4


def test_rerun_replaces_previous_output(small_corpus, tmp_path):
    out = tmp_path / "out"
    run(small_corpus / "videos", out, "data.preprocess.shard_size_mb=0.01")
    manifest = run(small_corpus / "videos", out)
    assert [p.name for p in out.glob("*.tar")] == ["shard-000000.tar"]
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_a_crashing_decoder_does_not_stop_the_run(small_corpus, tmp_path, monkeypatch):
    real = P.process_video

    def crashy(job, cfg, min_frames):
        if job.rel == "clip_2.mp4":
            os._exit(139)  # what a segfault in a native decoder looks like to the pool
        return real(job, cfg, min_frames)

    monkeypatch.setattr(P, "process_video", crashy)
    manifest = run(small_corpus / "videos", tmp_path / "out", workers=2)
    status = {v["file"]: v["status"] for v in manifest["videos"]}
    assert status.pop("clip_2.mp4") == "failed"
    assert set(status.values()) == {"ok"}
    assert manifest["totals"]["clips"] == 3


def test_chunks_partition_the_corpus(small_corpus, tmp_path):
    videos = small_corpus / "videos"
    seen = []
    for chunk in range(3):
        out = tmp_path / f"part-{chunk}"
        rc = P.main(
            [
                f"input_dir={videos}",
                f"output_dir={out}",
                f"chunk={chunk}",
                "num_chunks=3",
                "data.preprocess.resolution=32",
                "workers=1",
            ]
        )
        assert rc == 0
        files = [v["file"] for v in json.loads((out / "manifest.json").read_text())["videos"]]
        assert all(P.chunk_of(f, 3) == chunk for f in files)
        seen += files
    assert sorted(seen) == ["clip_0.mp4", "clip_2.mp4", "sub/clip_1.mp4", "sub/clip_3.mp4"]


def test_cli_requires_paths(capsys):
    assert P.main(["input_dir=/nonexistent"]) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        P.main(["input_dir=/nonexistent", "output_dir=/tmp/x"])
