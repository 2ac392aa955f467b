"""Videos -> shards: bad inputs, manifests, metadata, actions, chunking, atomicity."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from hlrp.common.config import load
from hlrp.data import preprocess as P
from hlrp.data.shards import decode_actions, decode_frames, iter_clips
from hlrp.data.video import list_videos, relative_name
from videos import moving_square, write_video


def cfg(*overrides):
    return load(
        [
            "data.preprocess.resolution=32",
            "data.preprocess.fps=10",
            "data.preprocess.min_clip_frames=3",
            *overrides,
        ]
    )


def run(input_dir, out, *overrides, workers=2, **kw):
    c = cfg(*overrides)
    return P.preprocess(input_dir, out, c.data.preprocess, workers=workers, **kw)


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


# --------------------------------------------------------------------------------------
# symlinks and input lists: one name per video, wherever it is computed
# --------------------------------------------------------------------------------------
@pytest.fixture
def link_corpus(tmp_path):
    """A folder with a real video, a link to it, a link to a video outside, a dangling link."""
    root = tmp_path / "videos"
    write_video(root / "real.mp4", moving_square(30, 96, 64, seed=1), fps=10)
    write_video(tmp_path / "elsewhere" / "far.mp4", moving_square(30, 96, 64, seed=2), fps=10)
    (root / "links").mkdir()
    (root / "links" / "outside link.mp4").symlink_to(tmp_path / "elsewhere" / "far.mp4")
    (root / "links" / "inside.mp4").symlink_to(Path("..") / "real.mp4")
    (root / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    names = ["dangling.mp4", "links/inside.mp4", "links/outside link.mp4", "real.mp4"]
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["file", "instruction"])
        w.writeheader()
        w.writerows({"file": n, "instruction": f"do {n}"} for n in names)
    return root, names


def test_symlinks_keep_their_link_name_everywhere(link_corpus, tmp_path):
    root, names = link_corpus
    listed = list_videos(root, [".mp4"])
    assert [relative_name(root, p) for p in listed] == names
    manifest = run(root, tmp_path / "out")
    by_file = {v["file"]: v for v in manifest["videos"]}
    assert sorted(by_file) == names
    assert by_file["dangling.mp4"]["status"] == "skipped"
    assert by_file["dangling.mp4"]["reason"].startswith("dangling symlink")
    assert str(tmp_path / "gone.mp4") in by_file["dangling.mp4"]["reason"]
    for name in names[1:]:
        assert by_file[name]["status"] == "ok", by_file[name]
    clips = {c["meta"]["source"]: c["meta"] for c in iter_clips(tmp_path / "out")}
    assert sorted(clips) == names[1:]  # the inside link is a video of its own name
    for name, meta in clips.items():
        assert meta["video_id"] == P.video_id(name)
        assert meta["instruction"] == f"do {name}"

    # the CLI's chunks agree with chunk_of on the same names, the dangling link included
    seen = []
    for chunk in range(3):
        out = tmp_path / f"part-{chunk}"
        args = [f"input_dir={root}", f"output_dir={out}", f"chunk={chunk}", "num_chunks=3"]
        assert P.main([*args, "data.preprocess.resolution=32", "workers=1"]) == 0
        for v in json.loads((out / "manifest.json").read_text())["videos"]:
            assert P.chunk_of(v["file"], 3) == chunk
            seen.append(v["file"])
    assert sorted(seen) == names


def test_relative_name_never_resolves_the_file(link_corpus, tmp_path):
    root, _ = link_corpus
    link = root / "links" / "outside link.mp4"
    assert relative_name(root, link) == "links/outside link.mp4"
    # the folder given through a linked path: still the link's own name
    (tmp_path / "alias").symlink_to(root)
    assert relative_name(tmp_path / "alias", link) == "links/outside link.mp4"
    assert relative_name(root, tmp_path / "alias" / "real.mp4") == "real.mp4"
    with pytest.raises(ValueError, match="not under the input folder"):
        relative_name(root, tmp_path / "elsewhere" / "far.mp4")


def test_input_list_processes_exactly_the_listed_files(small_corpus, tmp_path):
    videos = small_corpus / "videos"
    odd = 'it\'s $HOME, a=b "q" 東京.mp4'  # quotes, $, comma, =, non-ASCII, spaces
    shutil.copy(videos / "clip_2.mp4", videos / odd)
    listed = ["sub/clip_3.mp4", odd, "missing.mp4", "clip_0.mp4"]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(listed) + "\n\n", encoding="utf-8")
    assert P.read_input_list(lst) == listed
    out = tmp_path / "out"
    args = [f"input_dir={videos}", f"input_list={lst}", f"output_dir={out}", "workers=1"]
    assert P.main([*args, "data.preprocess.resolution=32"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    by_file = {v["file"]: v for v in manifest["videos"]}
    assert list(by_file) == listed  # exactly the list, in its order
    assert by_file["missing.mp4"]["status"] == "skipped"
    assert by_file["missing.mp4"]["reason"] == "file does not exist"
    assert [by_file[n]["status"] for n in listed if n != "missing.mp4"] == ["ok"] * 3
    metas = {c["meta"]["source"]: c["meta"] for c in iter_clips(out)}
    assert metas["sub/clip_3.mp4"]["instruction"] == "move the square 3"
    assert metas[odd]["video_id"] == P.video_id(odd) and metas[odd]["instruction"] == ""


def test_input_list_outside_the_folder_is_skipped(small_corpus, tmp_path):
    videos = small_corpus / "videos"
    stray = tmp_path / "stray.mp4"
    shutil.copy(videos / "clip_0.mp4", stray)
    c = cfg()
    manifest = P.preprocess(
        videos, tmp_path / "out", c.data.preprocess, videos=[stray, "clip_0.mp4"]
    )
    status = [(v["file"], v["status"], v.get("reason", "")) for v in manifest["videos"]]
    assert status[1] == ("clip_0.mp4", "ok", "")
    assert status[0][:2] == (str(stray), "skipped") and "not under the input folder" in status[0][2]
