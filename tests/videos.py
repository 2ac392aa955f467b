"""Synthetic videos for tests: moving patterns, odd containers and deliberately broken files."""

from __future__ import annotations

import fractions
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np


def moving_square(
    n: int, width: int, height: int, seed: int = 0, background: int = 60
) -> list[np.ndarray]:
    """A textured background with a bright square sliding across it (clearly not static)."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8) + background
    side = max(4, min(width, height) // 4)
    frames = []
    for i in range(n):
        f = bg.copy()
        x = int((width - side) * (i / max(1, n - 1)))
        y = (height - side) // 2
        f[y : y + side, x : x + side] = (250, 200, 30)
        frames.append(f)
    return frames


def write_video(
    path: Path,
    frames: list[np.ndarray],
    fps: float = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    pts: list[int] | None = None,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode ``frames`` with PyAV. ``pts`` (in 1/1000 s) makes a variable-frame-rate file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = fractions.Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w", options=container_options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        h, w = frames[0].shape[:2] if frames else (64, 64)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if options:
            s.options = options
        if pts is not None:
            s.time_base = fractions.Fraction(1, 1000)
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            if pts is not None:
                vf.pts, vf.time_base = pts[i], fractions.Fraction(1, 1000)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def rotate(src: Path, dst: Path, degrees: int) -> Path:
    """Copy ``src`` with a display-matrix rotation (no re-encoding)."""
    subprocess.run(
        [
            ffmpeg(),
            "-v",
            "error",
            "-y",
            "-display_rotation",
            str(degrees),
            "-i",
            str(src),
            "-c",
            "copy",
            str(dst),
        ],
        check=True,
    )
    return dst


def bad_input_corpus(root: Path) -> dict[str, tuple[Path, str]]:
    """Every awkward input the preprocessor must handle.

    Returns name -> (path, expectation) where expectation is ``ok`` (clips written) or
    ``skipped`` (reason recorded).
    """
    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, tuple[Path, str]] = {}

    def add(name: str, expect: str, make: Callable[[Path], Path | None], fname: str) -> None:
        p = root / fname
        make(p)
        cases[name] = (p, expect)

    add("normal", "ok", lambda p: write_video(p, moving_square(60, 96, 64)), "normal.mp4")
    add("zero_byte", "skipped", lambda p: p.write_bytes(b""), "zero.mp4")
    add("non_video", "skipped", lambda p: p.write_text("this is not a video\n" * 50), "notes.mp4")
    add(
        "corrupt",
        "skipped",
        lambda p: p.write_bytes(np.random.default_rng(0).bytes(20000)),
        "corrupt.avi",
    )

    def truncated(p: Path) -> None:
        full = root / "_full_for_truncation.mp4"
        rng = np.random.default_rng(3)  # per-frame noise: every frame costs many bytes
        frames = [
            f + rng.integers(0, 30, f.shape, dtype=np.uint8)
            for f in moving_square(90, 160, 120, seed=3)
        ]
        write_video(full, frames, container_options={"movflags": "faststart"})
        data = full.read_bytes()
        p.write_bytes(data[: int(len(data) * 0.6)])
        full.unlink()

    add("truncated", "ok", truncated, "truncated.mp4")

    def truncated_header(p: Path) -> None:
        full = root / "_full_for_truncation2.mp4"
        write_video(full, moving_square(60, 96, 64, seed=4))  # moov atom at the end
        data = full.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        full.unlink()

    add("truncated_no_index", "skipped", truncated_header, "truncated_no_index.mp4")

    def zero_frame(p: Path) -> None:  # a valid container whose video has no frames
        subprocess.run(
            [
                ffmpeg(),
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=64x48:rate=30",
                "-frames:v",
                "0",
                "-c:v",
                "libx264",
                str(p),
            ],
            check=True,
        )

    add("zero_frame", "skipped", zero_frame, "zero_frame.mp4")
    add("one_frame", "skipped", lambda p: write_video(p, moving_square(1, 96, 64)), "one.mp4")
    add(
        "static",
        "skipped",
        lambda p: write_video(p, [moving_square(1, 96, 64)[0]] * 60),
        "static.mp4",
    )
    add(
        "odd_size",
        "ok",
        lambda p: write_video(p, moving_square(45, 97, 131, seed=1), pix_fmt="yuv444p"),
        "odd_97x131.mp4",
    )

    def rotated(p: Path) -> None:
        src = write_video(root / "_unrotated.mp4", moving_square(45, 128, 64, seed=2))
        rotate(src, p, 90)
        src.unlink()

    add("rotated", "ok", rotated, "rotated.mp4")
    vfr_pts = np.cumsum([0] + [33 if i % 3 else 80 for i in range(1, 50)]).tolist()
    add(
        "vfr",
        "ok",
        lambda p: write_video(p, moving_square(50, 96, 64, seed=5), pts=vfr_pts),
        "vfr.mp4",
    )
    add(
        "fps60",
        "ok",
        lambda p: write_video(p, moving_square(120, 96, 64, seed=6), fps=60),
        "fps60.mp4",
    )
    add(
        "large_4k",
        "ok",
        lambda p: write_video(
            p, moving_square(12, 3840, 2160, seed=7), fps=6, options={"preset": "ultrafast"}
        ),
        "large_4k.mp4",
    )
    add(
        "vp9_webm",
        "ok",
        lambda p: write_video(
            p,
            moving_square(40, 96, 64, seed=8),
            codec="libvpx-vp9",
            options={"deadline": "realtime", "cpu-used": "8"},
        ),
        "clip.webm",
    )
    add(
        "mpeg4",
        "ok",
        lambda p: write_video(p, moving_square(40, 96, 64, seed=9), codec="mpeg4"),
        "mpeg4.mp4",
    )
    add(
        "mjpeg_avi",
        "ok",
        lambda p: write_video(
            p, moving_square(40, 96, 64, seed=10), codec="mjpeg", pix_fmt="yuvj420p"
        ),
        "motion.avi",
    )
    add(
        "spaces_unicode",
        "ok",
        lambda p: write_video(p, moving_square(40, 96, 64, seed=11)),
        "my vidéo 東京 (1).mp4",
    )
    return cases


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
