"""Action-labelled episodes: what stage 3 learns from, in one format whatever the source.

    python -m hlrp.low_level.episodes output_dir=results/episodes/few \\
        low_level.data.source=demo low_level.data.episodes_per_task=2 \\
        input_dir=results/demo            # the demo corpus (videos/ and ground_truth/)
    python -m hlrp.low_level.episodes output_dir=results/episodes/mine \\
        low_level.data.source=/data/my_lerobot_dataset      # a LeRobotDataset v3 folder

Sources:

``demo``
    The demo corpus of :mod:`hlrp.sim.demo_videos`: each video is decoded with the project's
    decoders (:mod:`hlrp.data.video`, the same resize and centre crop as preprocessing) and
    paired with its ground-truth actions. The first ``episodes_per_task`` episodes of each
    task that the expert solved and that are not held out (``laq.data.val_split``, the split
    every stage uses) are labelled; everything else stays action-free. A frame's action is
    the ``steps_per_frame`` simulator commands (4-D end-effector deltas) executed between it
    and the next frame, averaged: one 4-D command that the evaluation repeats for as many
    simulator steps. The state is the hand position and gripper opening (4-D).
a folder
    A LeRobotDataset v3 (``meta/info.json``, ``data/*.parquet``, ``videos/...mp4``) read by
    :mod:`hlrp.low_level.lerobot`: its frames go through the same decoders, its actions, state
    and task strings travel with them.

Output (``output_dir``): per episode ``{episode_id}.frames.npy`` (uint8 (T, S, S, 3),
uncompressed so training memory-maps it) and ``{episode_id}.npz`` (``actions`` float32
(T, D), optional ``state`` float32 (T, P)); and ``index.json`` (episodes
with task, instruction, length and file; the action and state dimensions; the statistics
both normalisations need; skipped inputs with the reason). Every file is written
atomically, ``index.json`` last.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hlrp.common.cli import run
from hlrp.common.config import ConfigError, RootConfig
from hlrp.common.io import atomic_open, write_json
from hlrp.common.logging import get_logger
from hlrp.data.split import is_val_video

log = get_logger("low_level.episodes")

INDEX_FILE = "index.json"
FORMAT = "hlrp-episodes-1"


class EpisodeError(ValueError):
    """An episode source cannot be read: the message names the file and the reason."""


@dataclass
class Episode:
    """One action-labelled episode. Row t of ``actions`` is what the robot did at frame t."""

    episode_id: str
    task: str
    instruction: str
    frames: np.ndarray  # (T, S, S, 3) uint8
    actions: np.ndarray  # (T, D) float32
    state: np.ndarray | None = None  # (T, P) float32, proprioception at frame t
    fps: float = 0.0
    source: str = ""  # where it came from (a file), for messages

    def __post_init__(self) -> None:
        T = len(self.frames)
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise EpisodeError(
                f"{self.source or self.episode_id}: frames must be uint8 (T, H, W, 3), "
                f"got {self.frames.dtype} {self.frames.shape}"
            )
        if self.actions.ndim != 2 or len(self.actions) != T:
            raise EpisodeError(
                f"{self.source or self.episode_id}: actions must be (T={T}, D), "
                f"got {self.actions.shape}"
            )
        if self.state is not None and (self.state.ndim != 2 or len(self.state) != T):
            raise EpisodeError(
                f"{self.source or self.episode_id}: state must be (T={T}, P), "
                f"got {self.state.shape}"
            )
        if not np.isfinite(self.actions).all():
            raise EpisodeError(f"{self.source or self.episode_id}: actions hold NaN or inf")


@dataclass
class EpisodeSet:
    """A folder written by :func:`write_episodes`."""

    folder: Path
    episodes: list[dict[str, Any]]  # index rows: episode_id, task, instruction, length, file
    action_dim: int
    state_dim: int
    stats: dict[str, dict[str, list[float]]]  # "action" / "state" -> mean, std, q01, q99, min, max
    fps: float
    skipped: list[dict[str, str]] = field(default_factory=list)

    def load(self, row: dict[str, Any], mmap: bool = True) -> Episode:
        """Episode ``row``; its frames memory-mapped (read from disk as they are used)."""
        frames = np.load(self.folder / row["frames"], mmap_mode="r" if mmap else None)
        with np.load(self.folder / row["file"]) as z:
            return Episode(
                row["episode_id"],
                row["task"],
                row["instruction"],
                frames,
                z["actions"],
                z["state"] if "state" in z.files else None,
                self.fps,
                str(self.folder / row["file"]),
            )

    def __iter__(self) -> Iterator[Episode]:
        return (self.load(r) for r in self.episodes)

    @property
    def tasks(self) -> list[str]:
        return sorted({r["task"] for r in self.episodes})


def statistics(arrays: Sequence[np.ndarray]) -> dict[str, list[float]]:
    """Per-dimension mean, std, 1st/99th percentiles, min and max over all rows."""
    x = np.concatenate([np.asarray(a, dtype=np.float64) for a in arrays])
    return {
        "mean": x.mean(0).tolist(),
        "std": x.std(0).tolist(),
        "q01": np.quantile(x, 0.01, axis=0).tolist(),
        "q99": np.quantile(x, 0.99, axis=0).tolist(),
        "min": x.min(0).tolist(),
        "max": x.max(0).tolist(),
        "count": [float(len(x))],
    }


def write_episodes(
    episodes: Iterable[Episode], out: str | os.PathLike, skipped: Sequence[dict[str, str]] = ()
) -> EpisodeSet:
    """Write ``episodes`` and their index into ``out`` (atomically, the index last)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / INDEX_FILE).unlink(missing_ok=True)  # a stale index would claim the old set
    rows, actions, states, fps = [], [], [], set()
    dims: set[int] = set()
    sdims: set[int] = set()
    for ep in episodes:
        dims.add(ep.actions.shape[1])
        sdims.add(0 if ep.state is None else ep.state.shape[1])
        if len(dims) > 1 or len(sdims) > 1:
            raise EpisodeError(
                f"{ep.source or ep.episode_id}: action dimension {ep.actions.shape[1]} / state "
                f"dimension {0 if ep.state is None else ep.state.shape[1]} differ from the "
                "episodes before it; one episode set has one action and one state dimension"
            )
        name, frames = f"{ep.episode_id}.npz", f"{ep.episode_id}.frames.npy"
        arrays = {"actions": ep.actions.astype(np.float32)}
        if ep.state is not None:
            arrays["state"] = ep.state.astype(np.float32)
        with atomic_open(out / frames, "wb") as f:
            np.save(f, np.ascontiguousarray(ep.frames))
        with atomic_open(out / name, "wb") as f:
            np.savez(f, **arrays)
        rows.append(
            {
                "episode_id": ep.episode_id,
                "task": ep.task,
                "instruction": ep.instruction,
                "length": len(ep.frames),
                "file": name,
                "frames": frames,
            }
        )
        actions.append(ep.actions)
        if ep.state is not None:
            states.append(ep.state)
        fps.add(round(float(ep.fps), 6))
    if not rows:
        reasons = "; ".join(f"{s['input']}: {s['reason']}" for s in list(skipped)[:5])
        raise EpisodeError(f"no episode to write into {out}" + (f" ({reasons})" if reasons else ""))
    stats = {"action": statistics(actions)}
    if states:
        stats["state"] = statistics(states)
    index = {
        "format": FORMAT,
        "action_dim": dims.pop(),
        "state_dim": sdims.pop(),
        "fps": max(fps),
        "stats": stats,
        "episodes": rows,
        "skipped": list(skipped),
    }
    write_json(out / INDEX_FILE, index)
    log.info(
        "wrote %d episodes (%d frames, %d tasks, action dim %d) to %s; %d skipped",
        len(rows),
        sum(r["length"] for r in rows),
        len({r["task"] for r in rows}),
        index["action_dim"],
        out,
        len(skipped),
    )
    return open_episodes(out / INDEX_FILE)


def open_episodes(path: str | os.PathLike) -> EpisodeSet:
    """The episode set whose ``index.json`` (or folder) is ``path``."""
    path = Path(path)
    index = path / INDEX_FILE if path.is_dir() else path
    if not index.is_file():
        raise EpisodeError(
            f"{index}: no episode index (make one with python -m hlrp.low_level.episodes)"
        )
    meta = json.loads(index.read_text())
    if meta.get("format") != FORMAT:
        raise EpisodeError(f"{index}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return EpisodeSet(
        index.parent,
        meta["episodes"],
        int(meta["action_dim"]),
        int(meta["state_dim"]),
        meta["stats"],
        float(meta["fps"]),
        meta.get("skipped", []),
    )


# --------------------------------------------------------------------------------------
# the demo corpus
# --------------------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise EpisodeError(f"{path}: missing (is this the folder rule demo_videos wrote?)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def demo_frame_actions(actions: np.ndarray, action_dim: int = 4) -> np.ndarray:
    """(T, steps_per_frame * action_dim) simulator commands -> (T, action_dim): their mean."""
    T, width = actions.shape
    if width % action_dim:
        raise EpisodeError(f"demo actions of width {width} are not steps x {action_dim}")
    return actions.reshape(T, width // action_dim, action_dim).mean(1).astype(np.float32)


#: Meta-World's observation starts with the hand position (3) and the gripper opening (1):
#: the robot's proprioception. The rest (object and goal positions) is not a robot's state.
DEMO_STATE_DIM = 4


def demo_state(obs: np.ndarray) -> np.ndarray:
    """(T, 39) Meta-World observations -> (T, 4) proprioception (hand xyz, gripper)."""
    return np.asarray(obs, dtype=np.float32)[..., :DEMO_STATE_DIM]


def decode_video(path: Path, resolution: int, decoders: Sequence[str]) -> tuple[np.ndarray, float]:
    """Every frame of ``path`` (T, S, S, 3) uint8, resized and centre-cropped as preprocessing
    does, and the video's frame rate."""
    from hlrp.data.video import VideoError, fit_frame, open_decoder, probe

    try:
        info = probe(path)
        dec = open_decoder(info, resolution, decoders)
        try:
            n = len(dec.timestamps())
            frames = [fit_frame(f, resolution) for f in dec.frames(range(n))]
        finally:
            dec.close()
    except VideoError as e:
        raise EpisodeError(f"{path}: {e}") from e
    return np.stack(frames), float(info.fps)


def demo_episodes(
    demo_dir: str | os.PathLike,
    episodes_per_task: int,
    resolution: int,
    val_split: float,
    decoders: Sequence[str] = ("decord", "pyav"),
    tasks: Sequence[str] | None = None,
) -> tuple[list[Episode], list[dict[str, str]]]:
    """The labelled episodes of the demo corpus (``episodes_per_task`` <= 0: every one)."""
    demo_dir = Path(demo_dir)
    meta = {r["episode_id"]: r for r in _read_csv(demo_dir / "videos" / "metadata.csv")}
    rows = _read_csv(demo_dir / "ground_truth" / "episodes.csv")
    picked: dict[str, int] = {}
    episodes, skipped = [], []
    for row in rows:
        eid, task = row["episode_id"], row["task"]
        if tasks and task not in tasks:
            continue
        if episodes_per_task > 0 and picked.get(task, 0) >= episodes_per_task:
            continue
        video = demo_dir / "videos" / meta[eid]["file"]
        if is_val_video(Path(meta[eid]["file"]).stem, val_split):
            continue  # held out by every stage: never labelled
        if row["success"].lower() != "true":
            skipped.append({"input": str(video), "reason": "the expert did not solve it"})
            continue
        frames, fps = decode_video(video, resolution, decoders)
        with np.load(demo_dir / "ground_truth" / f"{eid}.npz") as z:
            actions, state = z["actions"], z["state"]
        if len(frames) != len(actions):
            skipped.append(
                {
                    "input": str(video),
                    "reason": f"{len(frames)} frames but {len(actions)} action rows",
                }
            )
            continue
        episodes.append(
            Episode(
                eid,
                task,
                meta[eid]["instruction"],
                frames,
                demo_frame_actions(actions),
                demo_state(state),
                fps,
                str(video),
            )
        )
        picked[task] = picked.get(task, 0) + 1
    short = [t for t in sorted({r["task"] for r in rows}) if picked.get(t, 0) < episodes_per_task]
    if short and episodes_per_task > 0 and (not tasks or set(short) & set(tasks)):
        log.warning(
            "fewer than %d labelled episodes for %s (held out or unsolved)",
            episodes_per_task,
            short,
        )
    return episodes, skipped


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
USAGE = """
usage: python -m hlrp.low_level.episodes output_dir=DIR data.source=demo input_dir=DEMO_DIR
           [data.episodes_per_task=N] [key=value ...]
       python -m hlrp.low_level.episodes output_dir=DIR data.source=/path/to/lerobot_dataset

Writes the action-labelled episodes stage 3 learns from (one .npz per episode and index.json).
data.episodes_per_task=0 takes every labelled episode (the oracle's pretraining set).
"""


def build(cfg: RootConfig) -> EpisodeSet:
    d = cfg.low_level.data
    if not cfg.output_dir or not d.source:
        raise ConfigError("episodes need output_dir=DIR and data.source=demo|LEROBOT_FOLDER")
    resolution = cfg.low_level.data.image_size
    decoders = cfg.data.preprocess.decoders
    if d.source == "demo":
        if not cfg.input_dir:
            raise ConfigError("data.source=demo needs input_dir=DEMO_DIR (rule demo_videos)")
        episodes, skipped = demo_episodes(
            cfg.input_dir, d.episodes_per_task, resolution, cfg.laq.data.val_split, decoders
        )
    else:
        from hlrp.low_level.lerobot import read_lerobot

        episodes, skipped = read_lerobot(
            d.source, resolution, d.episodes_per_task, decoders, camera=d.camera
        )
    return write_episodes(episodes, cfg.output_dir, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build, argv, USAGE, stage="low_level", expected=(ConfigError, EpisodeError))


if __name__ == "__main__":
    # through the imported module, so its EpisodeError is the one hlrp.low_level.lerobot raises
    from hlrp.low_level.episodes import main as _module_main

    raise SystemExit(_module_main())
