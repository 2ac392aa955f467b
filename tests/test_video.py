"""Decoding backends, timestamp resampling, resizing and scene cuts."""

from __future__ import annotations

import numpy as np
import pytest

from hlrp.data.preprocess import split_scenes
from hlrp.data.video import (
    VideoError,
    fit_frame,
    open_decoder,
    probe,
    resample_indices,
)
from videos import moving_square, rotate, write_video


def test_resample_drops_frames_of_faster_sources():
    ts = np.arange(120) / 60  # 2 s at 60 fps
    idx = resample_indices(ts, fps=10)
    assert idx.tolist() == list(range(0, 120, 6))


def test_resample_repeats_frames_of_slower_sources():
    ts = np.arange(10) / 5  # 2 s at 5 fps
    idx = resample_indices(ts, fps=10)
    assert len(idx) == 19 and idx[:4].tolist() == [0, 0, 1, 1]


def test_resample_follows_variable_frame_rate():
    ts = np.array([0.0, 0.05, 0.5, 0.55, 1.0])  # a long gap between 0.05 and 0.5
    idx = resample_indices(ts, fps=10)
    assert idx.tolist() == [0, 1, 1, 1, 1, 2, 3, 3, 3, 3, 4]


def test_resample_caps_duration():
    assert len(resample_indices(np.arange(300) / 30, fps=10, max_duration_s=2.0)) == 21


@pytest.mark.parametrize("h, w", [(131, 97), (64, 96), (2160, 3840), (64, 64)])
def test_fit_frame_resizes_and_center_crops(h, w):
    frame = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    out = fit_frame(frame, 48)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8


def test_split_scenes_at_cuts():
    diffs = np.array([1.0, 2.0, 90.0, 1.0, 1.0, 80.0])
    assert split_scenes(diffs, threshold=40) == [(0, 3), (3, 6), (6, 7)]
    assert split_scenes(np.zeros(0), threshold=40) == [(0, 1)]


@pytest.fixture(scope="module")
def square_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("v") / "square.mp4"
    return write_video(path, moving_square(30, 128, 64), fps=30)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_backends_agree(square_video, backend):
    info = probe(square_video)
    assert (info.width, info.height, info.rotation) == (128, 64, 0)
    assert info.fps == pytest.approx(30)
    dec = open_decoder(info, 32, [backend])
    ts = dec.timestamps()
    assert len(ts) == 30 and ts[1] == pytest.approx(1 / 30, abs=1e-3)
    frames = list(dec.frames([0, 10, 29]))
    dec.close()
    assert len(frames) == 3
    # both backends scale while decoding to a shorter side of 32: (32, 64)
    assert frames[0].shape == (32, 64, 3)
    ref = np.asarray(moving_square(30, 128, 64)[10])
    small = fit_frame(ref, 32).astype(float)
    assert np.abs(fit_frame(frames[1], 32).astype(float) - small).mean() < 12


def test_backend_fallback_order(square_video):
    info = probe(square_video)
    dec = open_decoder(info, 32, ["torchcodec", "pyav"])
    assert dec.name in ("torchcodec", "pyav")
    dec.close()


def test_no_backend_reports_every_reason(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(VideoError, match="not a readable video"):
        probe(bad)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_is_applied(tmp_path, backend, degrees):
    frames = moving_square(20, 128, 64)
    src = write_video(tmp_path / "wide.mp4", frames, fps=30)
    rot = rotate(src, tmp_path / "rot.mp4", degrees)
    info = probe(rot)
    assert info.rotation == degrees
    dec = open_decoder(info, 64, [backend])
    got = list(dec.frames([0, 19]))
    dec.close()
    plain = open_decoder(probe(src), 64, [backend])  # the same bitstream without rotation
    expected = [np.rot90(f, k=degrees // 90) for f in plain.frames([0, 19])]
    plain.close()
    for g, e in zip(got, expected):
        assert g.shape == e.shape  # portrait for 90 and 270
        assert np.abs(g.astype(float) - e).mean() < 0.5
