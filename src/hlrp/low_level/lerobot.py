"""Read a LeRobotDataset v3 folder into action-labelled :class:`~hlrp.low_level.episodes.Episode` s.

LeRobotDataset v3 (``codebase_version`` "v3.0", the format of Hugging Face ``lerobot`` 0.4
and later) is read with pyarrow and the project's video decoders, without the ``lerobot``
package. The layout (as ``lerobot/datasets/utils.py``, ``dataset_metadata.py`` and
``dataset_writer.py`` write it)::

    meta/info.json
        codebase_version, fps, features {name: {dtype, shape, names}} (dtype "video" for
        cameras such as ``observation.images.top``), ``data_path`` and ``video_path``
        templates: ``data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet`` and
        ``videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4``.
    meta/tasks.parquet
        one row per task: ``task_index`` and the task string (pandas writes the string as
        the index named ``task``, which is stored as a column ``task``).
    meta/episodes/chunk-XXX/file-XXX.parquet
        one row per episode: ``episode_index``, ``tasks`` (list of strings), ``length``,
        ``data/chunk_index``, ``data/file_index``, ``dataset_from_index``,
        ``dataset_to_index`` and, per camera, ``videos/<key>/chunk_index``,
        ``videos/<key>/file_index``, ``videos/<key>/from_timestamp`` and
        ``videos/<key>/to_timestamp`` (plus ``stats/...`` columns, not read here).
    data/chunk-XXX/file-XXX.parquet
        many episodes concatenated, one row per frame: ``index``, ``episode_index``,
        ``frame_index``, ``timestamp`` (seconds from the episode's start), ``task_index``,
        ``action`` and ``observation.state`` (fixed-size lists of float32), ...
    videos/<key>/chunk-XXX/file-XXX.mp4
        several episodes concatenated; an episode starts at its ``from_timestamp``.

A data row with timestamp ``ts`` shows the video frame nearest to ``from_timestamp + ts``
(what ``lerobot`` decodes, there within a tolerance of 1e-4 s; here the nearest frame within
half a frame period). Every video file is decoded once for all the episodes it holds, and
frames are resized and centre-cropped exactly as preprocessing does
(:func:`hlrp.data.video.fit_frame`).

An episode that cannot be used (a video shorter than the episode, a decoding failure, data
rows that disagree with the metadata, NaN actions) is returned in ``skipped`` with the reason.
A folder that is not a usable dataset raises :class:`~hlrp.low_level.episodes.EpisodeError`
naming the file, before any frame is decoded.

Caveats:

* Only codebase version v3.0. v2.x datasets (``meta/episodes.jsonl``, one file per episode)
  must be converted first (``python -m lerobot.scripts.convert_dataset_v21_to_v30``).
* Only cameras stored as video (dtype "video"). Image features (dtype "image": PNG bytes
  inside the data parquet files) are not supported.
* One camera per episode set (``camera``; default: the first video feature of
  ``info.json``). An episode with several tasks is labelled with its first one.
* Video timestamps are taken relative to each file's first frame.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hlrp.common.logging import get_logger
from hlrp.low_level.episodes import Episode, EpisodeError

log = get_logger("low_level.lerobot")

SUPPORTED_VERSIONS = ("v3.0",)
INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
ACTION = "action"
STATE = "observation.state"


@dataclass
class _EpisodeMeta:
    """One row of ``meta/episodes``: where an episode's data and video are."""

    index: int
    task: str | None
    length: int
    data_file: Path
    video_file: Path
    from_timestamp: float
    to_timestamp: float


@dataclass
class _EpisodeRows:
    """An episode's rows of its data file, in frame order."""

    timestamps: np.ndarray  # (T,) float64, seconds from the episode's start
    actions: np.ndarray  # (T, D) float32
    state: np.ndarray | None  # (T, P) float32


# --------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------
def load_info(root: Path) -> dict[str, Any]:
    """``meta/info.json`` of the dataset folder ``root``, checked for a supported version."""
    if not root.is_dir():
        raise EpisodeError(f"{root}: no such folder (expected a LeRobotDataset v3 folder)")
    path = root / INFO_PATH
    if not path.is_file():
        raise EpisodeError(
            f"{path}: missing; a LeRobotDataset folder has meta/info.json "
            "(is this the dataset's root folder?)"
        )
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EpisodeError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(info, dict) or not isinstance(info.get("features"), dict):
        raise EpisodeError(f"{path}: no 'features' mapping; not a LeRobotDataset info.json")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        hint = (
            " (convert it with python -m lerobot.scripts.convert_dataset_v21_to_v30)"
            if str(version).startswith("v2")
            else ""
        )
        raise EpisodeError(
            f"{path}: codebase_version {version!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_VERSIONS)}{hint}"
        )
    try:
        if float(info.get("fps", 0)) <= 0:
            raise ValueError
    except (TypeError, ValueError):
        raise EpisodeError(f"{path}: fps {info.get('fps')!r} is not a positive number") from None
    return info


def video_keys(info: dict[str, Any]) -> list[str]:
    """The camera features stored as video, in ``info.json`` order."""
    return [k for k, ft in info["features"].items() if ft.get("dtype") == "video"]


def pick_camera(info: dict[str, Any], camera: str | None, info_path: Path) -> str:
    """``camera``, checked against the dataset's video features, or the first of them."""
    features = info["features"]
    keys = video_keys(info)
    if camera is not None and features.get(camera, {}).get("dtype") == "image":
        raise EpisodeError(
            f"{info_path}: camera {camera!r} is an image feature (PNG frames stored in the "
            "data parquet files), which is not supported; only video features are"
            + (f" (video features: {', '.join(keys)})" if keys else "")
        )
    if not keys:
        images = [k for k, ft in features.items() if ft.get("dtype") == "image"]
        found = ", ".join(f"{k} ({ft.get('dtype')})" for k, ft in features.items())
        raise EpisodeError(
            f"{info_path}: no video feature (dtype 'video'); features found: {found}"
            + (
                f". Image features ({', '.join(images)}: PNG in parquet) are not supported"
                if images
                else ""
            )
        )
    if camera is None:
        log.info("camera %s (video features: %s)", keys[0], ", ".join(keys))
        return keys[0]
    if camera not in keys:
        raise EpisodeError(
            f"{info_path}: camera {camera!r} is not a video feature of this dataset; "
            f"cameras: {', '.join(keys)}"
        )
    return camera


def _parquet_columns(path: Path) -> list[str]:
    try:
        return list(pq.ParquetFile(path).schema_arrow.names)
    except (OSError, pa.ArrowException) as e:
        raise EpisodeError(f"{path}: not a readable parquet file ({e})") from e


def _read_parquet(path: Path, columns: Sequence[str], **kwargs: Any) -> pa.Table:
    if not path.is_file():
        raise EpisodeError(f"{path}: missing parquet file")
    present = _parquet_columns(path)
    missing = [c for c in columns if c not in present]
    if missing:
        raise EpisodeError(f"{path}: no column(s) {', '.join(missing)}; columns: {present}")
    try:
        return pq.read_table(path, columns=list(columns), **kwargs)
    except (OSError, pa.ArrowException) as e:
        raise EpisodeError(f"{path}: not a readable parquet file ({e})") from e


def episode_table(root: Path, info: dict[str, Any], camera: str) -> list[_EpisodeMeta]:
    """Every episode of ``meta/episodes/*/*.parquet``, by episode index."""
    folder = root / EPISODES_DIR
    paths = sorted(folder.glob("*/*.parquet"))
    if not paths:
        raise EpisodeError(f"{folder}: no parquet file (meta/episodes/chunk-XXX/file-XXX.parquet)")
    data_path = info.get("data_path") or DEFAULT_DATA_PATH
    video_path = info.get("video_path") or DEFAULT_VIDEO_PATH
    video = f"videos/{camera}/"
    needed = [
        "episode_index",
        "length",
        "data/chunk_index",
        "data/file_index",
        video + "chunk_index",
        video + "file_index",
        video + "from_timestamp",
        video + "to_timestamp",
    ]
    out: list[_EpisodeMeta] = []
    for path in paths:
        has_tasks = "tasks" in _parquet_columns(path)
        table = _read_parquet(path, needed + (["tasks"] if has_tasks else []))
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        for i in range(table.num_rows):
            tasks = cols["tasks"][i] if has_tasks else None
            out.append(
                _EpisodeMeta(
                    index=int(cols["episode_index"][i]),
                    task=str(tasks[0]) if tasks else None,
                    length=int(cols["length"][i]),
                    data_file=root
                    / data_path.format(
                        chunk_index=int(cols["data/chunk_index"][i]),
                        file_index=int(cols["data/file_index"][i]),
                    ),
                    video_file=root
                    / video_path.format(
                        video_key=camera,
                        chunk_index=int(cols[video + "chunk_index"][i]),
                        file_index=int(cols[video + "file_index"][i]),
                    ),
                    from_timestamp=float(cols[video + "from_timestamp"][i]),
                    to_timestamp=float(cols[video + "to_timestamp"][i]),
                )
            )
    out.sort(key=lambda m: m.index)
    counts = Counter(m.index for m in out)
    duplicates = sorted(i for i, c in counts.items() if c > 1)
    if duplicates:
        raise EpisodeError(f"{folder}: episode index(es) {duplicates[:10]} listed more than once")
    return out


def load_tasks(root: Path) -> dict[int, str]:
    """``meta/tasks.parquet`` as task_index -> task string."""
    path = root / TASKS_PATH
    if not path.is_file():
        raise EpisodeError(f"{path}: missing parquet file (needed for the task strings)")
    columns = _parquet_columns(path)
    # pandas stores the index (the task string) as a column named after it, "task"
    name = next((c for c in ("task", "__index_level_0__") if c in columns), None)
    if name is None:
        raise EpisodeError(f"{path}: no task string column ('task'); columns: {columns}")
    table = _read_parquet(path, ["task_index", name])
    return dict(
        zip(
            (int(i) for i in table.column("task_index").to_pylist()),
            (str(t) for t in table.column(name).to_pylist()),
            strict=True,
        )
    )


# --------------------------------------------------------------------------------------
# data rows
# --------------------------------------------------------------------------------------
def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _matrix(column: pa.ChunkedArray, rows: int, what: str) -> np.ndarray:
    """A column of equal-length number lists (or of numbers) as (rows, D) float32."""
    arr = column.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):  # datasets' Array2D and friends
        arr = arr.storage
    if arr.null_count:
        raise ValueError(f"{what} has {arr.null_count} empty row(s)")
    while _is_list(arr.type):
        if not pa.types.is_fixed_size_list(arr.type):
            lengths = pc.unique(pc.list_value_length(arr)).to_pylist()
            if len(lengths) > 1:
                raise ValueError(f"{what} rows have different lengths {sorted(lengths)}")
        arr = arr.flatten()
    if not (pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type)):
        raise ValueError(f"{what} holds {arr.type} values, expected numbers")
    values = arr.to_numpy(zero_copy_only=False).astype(np.float32)
    if rows == 0 or values.size % rows:
        raise ValueError(f"{what}: {values.size} values do not split into {rows} rows")
    return values.reshape(rows, -1)


def read_rows(
    data_file: Path, episodes: Sequence[int], with_state: bool
) -> dict[int, _EpisodeRows | str]:
    """The rows of ``episodes`` in ``data_file``: per episode its rows, or why they are unusable."""
    columns = ["episode_index", "frame_index", "timestamp", ACTION]
    if with_state:
        columns.append(STATE)
    table = _read_parquet(data_file, columns, filters=[("episode_index", "in", list(episodes))])
    ep_col = table.column("episode_index").to_numpy()
    out: dict[int, _EpisodeRows | str] = {}
    for ep in episodes:
        part = table.filter(pa.array(ep_col == ep))
        if part.num_rows == 0:
            out[ep] = f"{data_file}: no rows of episode {ep}"
            continue
        part = part.sort_by("frame_index")
        try:
            out[ep] = _EpisodeRows(
                timestamps=part.column("timestamp").to_numpy().astype(np.float64),
                actions=_matrix(part.column(ACTION), part.num_rows, ACTION),
                state=_matrix(part.column(STATE), part.num_rows, STATE) if with_state else None,
            )
        except (ValueError, pa.ArrowException) as e:
            out[ep] = f"{data_file}: episode {ep}: {e}"
    return out


# --------------------------------------------------------------------------------------
# frames
# --------------------------------------------------------------------------------------
def nearest_frames(
    video_ts: np.ndarray, targets: np.ndarray, fps: float
) -> tuple[np.ndarray | None, str]:
    """Indices of the video frames nearest to ``targets`` (seconds), or None and the reason
    when a target has no frame within half a frame period (``1 / (2 fps)``)."""
    n = len(video_ts)
    right = np.clip(np.searchsorted(video_ts, targets), 0, n - 1)
    left = np.clip(right - 1, 0, n - 1)
    idx = np.where(
        np.abs(video_ts[left] - targets) <= np.abs(video_ts[right] - targets), left, right
    )
    err = np.abs(video_ts[idx] - targets)
    bad = np.flatnonzero(err > 0.5 / fps + 1e-6)
    if len(bad) == 0:
        return idx, ""
    t = float(targets[bad[0]])
    if t > video_ts[-1]:
        return None, (
            f"the video is shorter than the episode: it holds {len(targets) - len(bad)} of the "
            f"episode's {len(targets)} frames (the file's {n} frames end at "
            f"{video_ts[-1]:.3f} s, the episode needs {float(targets.max()):.3f} s)"
        )
    return None, f"no video frame within half a frame period of {t:.3f} s"


def _decode_file(
    video: Path,
    jobs: dict[int, np.ndarray],
    resolution: int,
    decoders: Sequence[str],
    fps: float,
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Decode ``video`` once: for each episode (index -> frame times in the file) its frames
    (T, S, S, 3), or the reason it has none."""
    from hlrp.data.video import VideoError, fit_frame, open_decoder, probe

    frames: dict[int, np.ndarray] = {}
    reasons: dict[int, str] = {}
    try:
        dec = open_decoder(probe(video), resolution, decoders)
    except (VideoError, OSError) as e:
        return frames, {ep: f"{video}: {e}" for ep in jobs}
    try:
        ts = np.asarray(dec.timestamps(), dtype=np.float64)
        ts = ts - ts[0]
        picks: dict[int, np.ndarray] = {}
        for ep, targets in jobs.items():
            idx, why = nearest_frames(ts, targets, fps)
            if idx is None:
                reasons[ep] = f"{video}: {why}"
            else:
                picks[ep] = idx
        wanted = sorted({int(i) for idx in picks.values() for i in idx})
        decoded: dict[int, np.ndarray] = {}
        if wanted:
            for i, frame in zip(wanted, dec.frames(wanted), strict=True):
                decoded[i] = fit_frame(frame, resolution)
        for ep, idx in picks.items():
            frames[ep] = np.stack([decoded[int(i)] for i in idx])
    except VideoError as e:
        reasons.update({ep: f"{video}: {e}" for ep in jobs if ep not in reasons})
        frames.clear()
    except ValueError as e:  # zip(strict=True): the decoder returned fewer frames
        reasons.update({ep: f"{video}: decoding stopped early ({e})" for ep in jobs})
        frames.clear()
    finally:
        dec.close()
    return frames, reasons


# --------------------------------------------------------------------------------------
# the reader
# --------------------------------------------------------------------------------------
def _select(metas: list[_EpisodeMeta], episodes_per_task: int) -> list[_EpisodeMeta]:
    if episodes_per_task <= 0:
        return metas
    count: dict[str, int] = {}
    out = []
    for m in metas:
        assert m.task is not None
        if count.get(m.task, 0) < episodes_per_task:
            out.append(m)
            count[m.task] = count.get(m.task, 0) + 1
    return out


def _fill_tasks_from_data(root: Path, metas: list[_EpisodeMeta]) -> None:
    """Episodes metadata without a ``tasks`` column: the task of an episode's first data row."""
    tasks = load_tasks(root)
    by_file: dict[Path, list[_EpisodeMeta]] = {}
    for m in metas:
        by_file.setdefault(m.data_file, []).append(m)
    for path, group in by_file.items():
        table = _read_parquet(path, ["episode_index", "frame_index", "task_index"])
        first: dict[int, int] = {}
        for ep, fi, ti in zip(
            table.column("episode_index").to_pylist(),
            table.column("frame_index").to_pylist(),
            table.column("task_index").to_pylist(),
            strict=True,
        ):
            if ep not in first or fi == 0:
                first[ep] = ti
        for m in group:
            if m.index not in first:
                raise EpisodeError(f"{path}: no rows of episode {m.index}")
            if first[m.index] not in tasks:
                raise EpisodeError(
                    f"{root / TASKS_PATH}: no task with task_index {first[m.index]} "
                    f"(episode {m.index})"
                )
            m.task = tasks[first[m.index]]


def read_lerobot(
    folder: str | os.PathLike,
    resolution: int,
    episodes_per_task: int = 0,
    decoders: Sequence[str] = ("decord", "pyav"),
    camera: str | None = None,
) -> tuple[list[Episode], list[dict[str, str]]]:
    """Episodes of a LeRobotDataset v3 folder, frames resized+centre-cropped to resolution.

    ``episodes_per_task > 0`` keeps the first that many episodes (by episode index) of each
    task; 0 keeps all. ``camera`` names a video feature (default: the first in info.json).
    Returns the episodes (by episode index) and the skipped ones as
    ``{"input": episode id, "reason": ...}``. Raises :class:`EpisodeError` for a folder that
    is not a usable dataset, before decoding anything.
    """
    root = Path(folder)
    info = load_info(root)
    info_path = root / INFO_PATH
    camera = pick_camera(info, camera, info_path)
    features = info["features"]
    if ACTION not in features:
        raise EpisodeError(
            f"{info_path}: no {ACTION!r} feature; features: {', '.join(features)} "
            "(only action-labelled datasets can be used)"
        )
    with_state = STATE in features
    fps = float(info["fps"])
    name = Path(os.path.abspath(root)).name

    metas = episode_table(root, info, camera)
    if any(m.task is None for m in metas):
        _fill_tasks_from_data(root, metas)
    selected = _select(metas, episodes_per_task)
    for path in sorted({m.data_file for m in selected} | {m.video_file for m in selected}):
        if not path.is_file():
            raise EpisodeError(f"{path}: missing (listed in {root / EPISODES_DIR})")
    log.info(
        "%s: %d of %d episodes (%d tasks), camera %s, %s fps",
        root,
        len(selected),
        len(metas),
        len({m.task for m in selected}),
        camera,
        info["fps"],
    )

    rows: dict[int, _EpisodeRows | str] = {}
    by_data: dict[Path, list[int]] = {}
    for m in selected:
        by_data.setdefault(m.data_file, []).append(m.index)
    for path, eps in by_data.items():
        rows.update(read_rows(path, eps, with_state))

    skipped: dict[int, str] = {}
    by_video: dict[Path, dict[int, np.ndarray]] = {}
    for m in selected:
        r = rows[m.index]
        if isinstance(r, str):
            skipped[m.index] = r
        elif len(r.timestamps) != m.length:
            skipped[m.index] = (
                f"{m.data_file}: {len(r.timestamps)} data rows but the episode's length is "
                f"{m.length} in {root / EPISODES_DIR}"
            )
        elif m.from_timestamp + r.timestamps[-1] > m.to_timestamp + 0.5 / fps:
            skipped[m.index] = (
                f"{m.video_file}: the episode's frames run to "
                f"{m.from_timestamp + r.timestamps[-1]:.3f} s, past its to_timestamp "
                f"{m.to_timestamp:.3f} s"
            )
        else:
            by_video.setdefault(m.video_file, {})[m.index] = m.from_timestamp + r.timestamps

    episodes: dict[int, Episode] = {}
    meta_of = {m.index: m for m in selected}
    for video, jobs in by_video.items():
        frames, reasons = _decode_file(video, jobs, resolution, decoders, fps)
        skipped.update(reasons)
        for ep, f in frames.items():
            r, m = rows[ep], meta_of[ep]
            assert isinstance(r, _EpisodeRows) and m.task is not None
            try:
                episodes[ep] = Episode(
                    episode_id=f"{name}_ep{ep:06d}",
                    task=m.task,
                    instruction=m.task,
                    frames=f,
                    actions=r.actions,
                    state=r.state,
                    fps=fps,
                    source=str(video),
                )
            except EpisodeError as e:
                skipped[ep] = str(e)
    skipped_rows = [
        {"input": f"{name}_ep{ep:06d}", "reason": reason} for ep, reason in sorted(skipped.items())
    ]
    for row in skipped_rows:
        log.warning("skipped %s: %s", row["input"], row["reason"])
    return [episodes[ep] for ep in sorted(episodes)], skipped_rows
