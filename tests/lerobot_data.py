"""A small LeRobotDataset v3 folder written with pyarrow and PyAV (no ``lerobot`` package).

The layout follows ``lerobot/datasets/utils.py``, ``dataset_metadata.py`` and
``dataset_writer.py`` (codebase_version "v3.0"): ``meta/info.json``, ``meta/stats.json``,
``meta/tasks.parquet``, ``meta/episodes/chunk-000/file-XXX.parquet``,
``data/chunk-000/file-XXX.parquet`` (several episodes per file) and
``videos/<camera>/chunk-000/file-XXX.mp4`` (several episodes concatenated per file).

Every frame tells where it comes from: its top half is a solid grey :func:`frame_level` of the
frame's index in its episode, its bottom half a solid grey :func:`episode_level` of the
episode's index.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"


def frame_level(frame_index: int) -> int:
    """The grey level of the top half of frame ``frame_index`` of an episode (up to 17 frames)."""
    return 16 + 14 * frame_index


def episode_level(episode_index: int) -> int:
    """The grey level of the bottom half of every frame of episode ``episode_index`` (0..4)."""
    return 30 + 45 * episode_index


def episode_frames(episode_index: int, n: int, size: tuple[int, int]) -> np.ndarray:
    """(n, H, W, 3) uint8: the frames :func:`write_lerobot_v3` encodes for an episode."""
    h, w = size
    frames = np.empty((n, h, w, 3), np.uint8)
    frames[:, h // 2 :] = episode_level(episode_index)
    for i in range(n):
        frames[i, : h // 2] = frame_level(i)
    return frames


def _encode(path: Path, frames: np.ndarray, fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _, height, width, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "threads": "1"}
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _vectors(rows: np.ndarray, fixed: bool) -> pa.Array:
    """(T, D) float32 as a fixed-size list column (as datasets writes it) or a plain list."""
    values = pa.array(rows.reshape(-1), pa.float32())
    if fixed:
        return pa.FixedSizeListArray.from_arrays(values, rows.shape[1])
    offsets = pa.array(np.arange(0, rows.size + 1, rows.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def write_lerobot_v3(
    root: Path,
    episodes: Sequence[tuple[Any, ...]],
    fps: int = 10,
    action_dim: int = 7,
    state_dim: int = 8,
    camera: str = "observation.images.top",
    size: tuple[int, int] = (48, 64),
    episodes_per_video: int = 2,
    episodes_per_data_file: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Write a LeRobotDataset v3 folder at ``root``.

    ``episodes``: ``(task, length)`` or ``(task, length, video_frames)`` per episode, in
    episode order; ``video_frames < length`` encodes a video shorter than the episode's data
    (only for the last episode of a video file, so the next episodes keep their times).
    ``state_dim=0`` writes no ``observation.state``. Returns what was written: ``tasks``,
    ``lengths``, ``actions`` and ``state`` (lists of float32 arrays), ``video_files`` (per
    episode, relative to ``root``).
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    task_names = list(dict.fromkeys(e[0] for e in episodes))
    task_index = {t: i for i, t in enumerate(task_names)}
    tasks = [e[0] for e in episodes]
    lengths = [int(e[1]) for e in episodes]
    video_lengths = [int(e[2]) if len(e) > 2 else int(e[1]) for e in episodes]
    actions = [rng.normal(size=(n, action_dim)).astype(np.float32) for n in lengths]
    states = [rng.normal(size=(n, state_dim)).astype(np.float32) for n in lengths]

    # videos: episodes_per_video episodes concatenated per file
    meta_rows: list[dict[str, Any]] = []
    video_files = []
    for start in range(0, len(episodes), episodes_per_video):
        group = range(start, min(start + episodes_per_video, len(episodes)))
        file_index = start // episodes_per_video
        rel = VIDEO_PATH.format(video_key=camera, chunk_index=0, file_index=file_index)
        clock = 0.0
        for ep in group:
            if video_lengths[ep] != lengths[ep] and ep != group[-1]:
                raise ValueError("only the last episode of a video file may be cut short")
            duration = lengths[ep] / fps  # what the metadata claims, even for a cut video
            meta_rows.append(
                {
                    f"videos/{camera}/chunk_index": 0,
                    f"videos/{camera}/file_index": file_index,
                    f"videos/{camera}/from_timestamp": clock,
                    f"videos/{camera}/to_timestamp": clock + duration,
                }
            )
            clock += duration
            video_files.append(rel)
        frames = np.concatenate([episode_frames(ep, video_lengths[ep], size) for ep in group])
        _encode(root / rel, frames, fps)

    # data: episodes_per_data_file episodes per parquet file; the episodes metadata alike
    index = 0
    for start in range(0, len(episodes), episodes_per_data_file):
        group = range(start, min(start + episodes_per_data_file, len(episodes)))
        file_index = start // episodes_per_data_file
        columns: dict[str, list[Any]] = {
            k: [] for k in ("index", "episode_index", "frame_index", "timestamp", "task_index")
        }
        for ep in group:
            n = lengths[ep]
            meta_rows[ep].update(
                {
                    "episode_index": ep,
                    "tasks": [tasks[ep]],
                    "length": n,
                    "data/chunk_index": 0,
                    "data/file_index": file_index,
                    "dataset_from_index": index,
                    "dataset_to_index": index + n,
                    "meta/episodes/chunk_index": 0,
                    "meta/episodes/file_index": file_index,
                    "stats/action/mean": actions[ep].mean(0).tolist(),
                }
            )
            columns["index"] += range(index, index + n)
            columns["episode_index"] += [ep] * n
            columns["frame_index"] += range(n)
            columns["timestamp"] += (np.arange(n, dtype=np.float32) / np.float32(fps)).tolist()
            columns["task_index"] += [task_index[tasks[ep]]] * n
            index += n
        arrays: dict[str, pa.Array] = {
            "action": _vectors(np.concatenate([actions[ep] for ep in group]), fixed=True)
        }
        if state_dim:
            arrays["observation.state"] = _vectors(
                np.concatenate([states[ep] for ep in group]), fixed=False
            )
        arrays["timestamp"] = pa.array(columns.pop("timestamp"), pa.float32())
        arrays.update({k: pa.array(v, pa.int64()) for k, v in columns.items()})
        path = root / DATA_PATH.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(arrays), path)
        path = root / EPISODES_PATH.format(chunk_index=0, file_index=file_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([meta_rows[ep] for ep in group]), path)

    pq.write_table(
        pa.table(
            {
                "task_index": pa.array(range(len(task_names)), pa.int64()),
                "task": pa.array(task_names, pa.string()),
            }
        ),
        root / "meta" / "tasks.parquet",
    )
    h, w = size
    features: dict[str, Any] = {
        "action": {"dtype": "float32", "shape": [action_dim], "names": None},
    }
    if state_dim:
        features["observation.state"] = {"dtype": "float32", "shape": [state_dim], "names": None}
    features[camera] = {
        "dtype": "video",
        "shape": [h, w, 3],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": h,
            "video.width": w,
            "video.codec": "h264",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        },
    }
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        dtype = "float32" if name == "timestamp" else "int64"
        features[name] = {"dtype": dtype, "shape": [1], "names": None}
    info = {
        "codebase_version": "v3.0",
        "robot_type": "test_arm",
        "total_episodes": len(episodes),
        "total_frames": sum(lengths),
        "total_tasks": len(task_names),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    all_actions = np.concatenate(actions)
    stats = {"action": {"mean": all_actions.mean(0).tolist(), "std": all_actions.std(0).tolist()}}
    (root / "meta" / "stats.json").write_text(json.dumps(stats))
    return {
        "tasks": tasks,
        "lengths": lengths,
        "actions": actions,
        "state": states if state_dim else None,
        "video_files": video_files,
    }
