"""Video probing and decoding with interchangeable backends (decord, PyAV, torchcodec).

Every backend gives the same two things:

* ``timestamps()``: the presentation time (seconds) of every frame, in display order.
  Frames are later picked by time, not by index, so variable-frame-rate video resamples
  correctly.
* ``frames(indices)``: the frames at sorted display indices as ``(H, W, 3)`` uint8 RGB, with the
  container's rotation applied and the shorter side already close to the requested size
  when the backend can scale while decoding (decord does this inside FFmpeg, which is much
  cheaper than decoding 4K frames and resizing them afterwards).

Backends are tried in the configured order; a file that none can read is reported with the
reason of each.
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class VideoError(Exception):
    """A video cannot be used; the message is the one-line reason recorded in the manifest."""


@dataclass
class VideoInfo:
    """What the container says about a video (PyAV demuxer, no decoding)."""

    path: str
    size_bytes: int
    codec: str
    width: int  # coded width, before rotation
    height: int
    rotation: int  # degrees counter-clockwise to display upright (0, 90, 180, 270)
    fps: float  # average frame rate
    duration_s: float | None
    num_frames: int | None  # from the container header; may be missing or wrong

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as displayed, after rotation."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read container metadata. Raises :class:`VideoError` with a one-line reason."""
    import av

    path = str(path)
    size = os.path.getsize(path)
    if size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as e:  # noqa: BLE001 - any demuxer error means "not a usable video"
        raise VideoError(f"not a readable video container ({_one_line(e)})") from e
    with container:
        if not container.streams.video:
            raise VideoError("no video stream in file")
        stream = container.streams.video[0]
        cc = stream.codec_context
        if not cc.width or not cc.height:
            raise VideoError(f"video stream has no frame size (codec {cc.name})")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        rotation = _first_frame_rotation(container)
        return VideoInfo(
            path=path,
            size_bytes=size,
            codec=cc.name,
            width=cc.width,
            height=cc.height,
            rotation=rotation,
            fps=fps,
            duration_s=duration,
            num_frames=stream.frames or None,
        )


def _first_frame_rotation(container) -> int:
    """Display rotation (degrees counter-clockwise) from the first decoded frame (PyAV)."""
    try:
        for frame in container.decode(video=0):
            return int(round(getattr(frame, "rotation", 0) or 0)) % 360
    except Exception:  # noqa: BLE001 - undecodable streams are reported by the decoder
        return 0
    return 0


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(w, h) with the shorter side equal to ``short_side`` and the aspect ratio kept."""
    scale = short_side / min(width, height)
    return max(short_side, round(width * scale)), max(short_side, round(height * scale))


# --------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------
class Decoder(abc.ABC):
    """A backend opened on one file. Subclasses implement ``timestamps`` and ``frames``."""

    name = "base"

    def __init__(self, info: VideoInfo, short_side: int):
        self.info = info
        self.short_side = short_side

    @abc.abstractmethod
    def timestamps(self) -> np.ndarray:
        """Display time in seconds of every frame, ascending."""

    @abc.abstractmethod
    def frames(self, indices: Sequence[int], chunk: int = 64) -> Iterator[np.ndarray]:
        """RGB frames (H, W, 3) uint8 at the sorted display ``indices``, upright."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds a file open
        """Release the file."""


class DecordDecoder(Decoder):
    """decord: fast random access; scales inside FFmpeg; applies the rotation itself."""

    name = "decord"

    def __init__(self, info: VideoInfo, short_side: int):
        super().__init__(info, short_side)
        import decord

        self._decord = decord
        self._scaled: tuple[int, int] | None = None  # (h, w) decord scales to, if any
        kwargs = {}
        # decord applies the display rotation itself, but not when it scales (it then returns
        # unrotated or 4-channel frames): rotated videos are decoded at full size.
        if info.rotation == 0 and min(info.width, info.height) > short_side:
            w, h = scaled_size(info.width, info.height, short_side)
            kwargs, self._scaled = {"width": w, "height": h}, (h, w)
        self.vr = self._open(decord, kwargs)

    def _unscaled(self) -> None:
        """Reopen without in-decoder scaling, which decord rejects for some small sizes
        (e.g. 48x32) only when the first frame is decoded."""
        self.vr = self._open(self._decord, {})
        self._scaled = None

    def _open(self, decord, kwargs):
        try:
            vr = decord.VideoReader(self.info.path, ctx=decord.cpu(0), num_threads=1, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise VideoError(f"decord cannot open the file ({_one_line(e)})") from e
        if len(vr) == 0:
            raise VideoError("no decodable frames")
        return vr

    def timestamps(self) -> np.ndarray:
        n = len(self.vr)
        try:
            ts = self.vr.get_frame_timestamp(np.arange(n))[:, 0].astype(np.float64)
        except Exception:  # noqa: BLE001 - fall back to a constant rate
            fps = self.vr.get_avg_fps() or self.info.fps or 30.0
            ts = np.arange(n) / fps
        return ts

    def frames(self, indices: Sequence[int], chunk: int = 64) -> Iterator[np.ndarray]:
        for start in range(0, len(indices), chunk):
            batch = list(indices[start : start + chunk])
            arr = self._batch(batch, first=start == 0)
            yield from arr

    def _batch(self, batch: list[int], first: bool) -> np.ndarray:
        try:
            arr = self.vr.get_batch(batch).asnumpy()
        except Exception as e:  # noqa: BLE001
            if not (first and self._scaled):
                raise VideoError(f"decord failed at frame {batch[0]} ({_one_line(e)})") from e
            arr = None
        if first and self._scaled and (arr is None or arr.shape[1:] != (*self._scaled, 3)):
            self._unscaled()
            return self._batch(batch, first=False)
        if arr.shape[-1] != 3:
            raise VideoError(f"decord returned frames of shape {arr.shape[1:]}")
        return arr

    def close(self) -> None:
        del self.vr


class PyAVDecoder(Decoder):
    """PyAV: sequential decoding, the most tolerant of odd containers and codecs."""

    name = "pyav"

    def __init__(self, info: VideoInfo, short_side: int):
        super().__init__(info, short_side)
        import av

        self._av = av
        try:
            self.container = av.open(info.path, metadata_errors="ignore")
        except Exception as e:  # noqa: BLE001
            raise VideoError(f"PyAV cannot open the file ({_one_line(e)})") from e
        self._ts: np.ndarray | None = None

    def timestamps(self) -> np.ndarray:
        if self._ts is None:
            pts = []
            try:
                demuxer = self._av.open(self.info.path, metadata_errors="ignore")
            except Exception as e:  # noqa: BLE001
                raise VideoError(f"PyAV cannot open the file ({_one_line(e)})") from e
            with demuxer:
                stream = demuxer.streams.video[0]
                pts = self._packet_times(demuxer, stream)
            if not pts:
                raise VideoError("no decodable frames")
            ts = np.sort(np.asarray(pts))
            self._ts = ts - ts[0]
        return self._ts

    @staticmethod
    def _packet_times(demuxer, stream) -> list[float]:
        pts: list[float] = []
        try:
            for packet in demuxer.demux(stream):
                if packet.pts is not None and packet.size > 0:
                    pts.append(float(packet.pts * stream.time_base))
        except Exception as e:  # noqa: BLE001 - truncated file: keep what was readable
            if not pts:
                raise VideoError(f"PyAV cannot read packets ({_one_line(e)})") from e
        return pts

    def frames(self, indices: Sequence[int], chunk: int = 64) -> Iterator[np.ndarray]:
        wanted = iter(indices)
        target = next(wanted, None)
        k = int(self.info.rotation // 90)
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"
        i = -1
        try:
            for frame in self.container.decode(stream):
                i += 1
                while target is not None and target == i:
                    w, h = frame.width, frame.height
                    if min(w, h) > self.short_side:
                        w, h = scaled_size(w, h, self.short_side)
                        frame_arr = frame.to_ndarray(format="rgb24", width=w, height=h)
                    else:
                        frame_arr = frame.to_ndarray(format="rgb24")
                    yield np.rot90(frame_arr, k=k) if k else frame_arr
                    target = next(wanted, None)
                if target is None:
                    return
        except self._av.error.FFmpegError as e:
            raise VideoError(f"PyAV failed at frame {i + 1} ({_one_line(e)})") from e
        if target is not None:
            raise VideoError(f"stream ended at frame {i + 1}, before frame {target}")

    def close(self) -> None:
        self.container.close()


class TorchCodecDecoder(Decoder):
    """torchcodec (needs the system's FFmpeg libraries)."""

    name = "torchcodec"

    def __init__(self, info: VideoInfo, short_side: int):
        super().__init__(info, short_side)
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as e:  # noqa: BLE001 - missing FFmpeg libraries raise OSError/RuntimeError
            raise VideoError(f"torchcodec is not usable here ({_one_line(e)})") from e
        try:
            self.dec = VideoDecoder(info.path, dimension_order="NHWC", seek_mode="exact")
        except Exception as e:  # noqa: BLE001
            raise VideoError(f"torchcodec cannot open the file ({_one_line(e)})") from e

    def timestamps(self) -> np.ndarray:
        n = len(self.dec)
        if n == 0:
            raise VideoError("no decodable frames")
        batch = self.dec.get_frames_at(list(range(n)))
        return batch.pts_seconds.numpy().astype(np.float64)

    def frames(self, indices: Sequence[int], chunk: int = 64) -> Iterator[np.ndarray]:
        k = int(self.info.rotation // 90)
        for start in range(0, len(indices), chunk):
            arr = self.dec.get_frames_at(list(indices[start : start + chunk])).data.numpy()
            for frame in arr:
                yield np.rot90(frame, k=k) if k else frame


BACKENDS: dict[str, type[Decoder]] = {
    "decord": DecordDecoder,
    "pyav": PyAVDecoder,
    "torchcodec": TorchCodecDecoder,
}


def open_decoder(info: VideoInfo, short_side: int, order: Sequence[str]) -> Decoder:
    """The first backend in ``order`` that opens the file and lists its frames."""
    errors = []
    for name in order:
        if name not in BACKENDS:
            raise ValueError(f"unknown decoder {name!r}; choose from {sorted(BACKENDS)}")
        try:
            dec = BACKENDS[name](info, short_side)
            dec.timestamps()  # force the frame listing now, so a failure falls through
            return dec
        except ImportError as e:
            errors.append(f"{name}: not installed ({e.name})")
        except VideoError as e:
            errors.append(f"{name}: {e}")
    raise VideoError("; ".join(errors))


def resample_indices(
    timestamps: np.ndarray, fps: float, max_duration_s: float | None = None
) -> np.ndarray:
    """Source frame indices that sample the video at ``fps`` (nearest earlier frame).

    ``timestamps`` are display times in seconds. A target time t_j = j / fps takes the last
    source frame shown at or before t_j: frames are dropped when the source is faster
    and repeated when it is slower, so one output step is always 1/fps seconds.
    """
    ts = np.asarray(timestamps, dtype=np.float64)
    ts = ts - ts[0]
    end = ts[-1] if max_duration_s is None else min(ts[-1], max_duration_s)
    n_out = int(math.floor(end * fps + 1e-6)) + 1
    targets = np.arange(n_out) / fps
    idx = np.searchsorted(ts, targets + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(ts) - 1)


def fit_frame(frame: np.ndarray, resolution: int) -> np.ndarray:
    """Resize the shorter side to ``resolution`` (antialiased) and center-crop a square."""
    from PIL import Image

    h, w = frame.shape[:2]
    if min(h, w) != resolution:
        nw, nh = scaled_size(w, h, resolution)
        frame = np.asarray(Image.fromarray(frame).resize((nw, nh), Image.BILINEAR, reducing_gap=3))
        h, w = nh, nw
    top, left = (h - resolution) // 2, (w - resolution) // 2
    return np.ascontiguousarray(frame[top : top + resolution, left : left + resolution])


def relative_name(input_dir: str | os.PathLike, path: str | os.PathLike) -> str:
    """A video's name in the dataset: its path relative to ``input_dir``, POSIX style.

    The one rule for symbolic links: a link is named by the LINK's path, never by its target,
    whether it points inside or outside ``input_dir`` (the name is computed from the path as
    listed, without resolving it). Chunking, the metadata.csv lookup, ``video_id`` and the
    manifest all take the name from here. Relative paths (both) are taken from the current
    folder, as :func:`list_videos` returns them. Raises ``ValueError`` for a path that is not under ``input_dir``.
    """
    root = os.path.abspath(input_dir)
    full = os.path.abspath(path)
    rel = os.path.relpath(full, root)
    if _outside(rel):
        # the same folder reached through another spelling (a linked parent folder): compare
        # the real parent folders, still never resolving the file itself
        parent = os.path.realpath(os.path.dirname(full))
        rel = os.path.relpath(os.path.join(parent, os.path.basename(full)), os.path.realpath(root))
        if _outside(rel):
            raise ValueError(f"{os.fspath(path)!r} is not under the input folder {root}")
    return Path(rel).as_posix()


def _outside(rel: str) -> bool:
    return rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep)


def list_videos(root: str | os.PathLike, extensions: Sequence[str]) -> list[Path]:
    """All files under ``root`` whose suffix is a video extension, sorted, hidden files skipped.

    Paths are ``root``-based and never resolved: a symlinked video is listed under its link
    path (see :func:`relative_name`), a dangling link too (preprocessing records it as
    skipped). Links to folders are not followed (they could loop).
    """
    exts = {e.lower() for e in extensions}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and Path(name).suffix.lower() in exts:
                out.append(Path(dirpath) / name)
    return sorted(out)
