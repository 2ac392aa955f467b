"""Render the embedded demo corpus: Meta-World expert episodes as ordinary mp4 videos.

``python -m hlrp.sim.demo_videos output_dir=PATH [demo.tasks=[drawer-open-v3,door-open-v3]]
[demo.episodes_per_task=2] [demo.resolution=64] [demo.seed=0] [workers=2]``

For every task in ``demo.tasks`` and every episode ``k < demo.episodes_per_task`` the scripted
expert policy of Meta-World (``metaworld.policies.ENV_POLICY_MAP``) runs until it solves the
task (then ``demo.steps_after_success`` more simulator steps) or until ``demo.max_steps``.
With ``demo.action_noise`` > 0 the expert's actions get Gaussian exploration noise
(:class:`ActionNoise`: independent per step, or correlated over ``demo.action_noise_steps``
steps, optionally not on the gripper); the recorded actions are the noisy ones the simulator
executed. A frame is rendered every ``demo.steps_per_frame`` simulator steps. Outputs under
``output_dir``:

``videos/{episode_id}.mp4``
    H.264 (libx264, yuv420p, ``demo.crf``), ``demo.resolution`` pixels square, at
    ``1 / (env.dt * steps_per_frame)`` fps (env.dt = 12.5 ms: 40 fps for 2 steps per frame).
    Ordinary video files: the rest of the pipeline treats them exactly like a user's videos.
``videos/metadata.csv``
    One row per video: ``file,episode_id,task,instruction,fps,num_frames`` (``file`` is the
    basename). Written last, so its presence means the corpus is complete.
``ground_truth/{episode_id}.npz``
    Kept apart from the videos (the video pipeline never sees them). ``actions`` float32
    (T, steps_per_frame * 4): the env actions executed between frame t and frame t + 1,
    flattened (frame t is rendered before them); ``success`` bool (T,): the env's success flag
    after frame t's actions; ``state`` float32 (T, obs_dim): the observation at frame t;
    ``frame_step`` int64 (T,): the simulator step index of frame t.
``ground_truth/episodes.csv``
    One row per episode: ``episode_id,task,success,num_frames,seed``.

Episode ids are ``f"{task}_ep{k:03d}"`` (:func:`episode_ids`); the Snakemake workflow
enumerates the expected outputs with the same naming. Episode ``k`` uses Meta-World train
task ``k`` (its own object and goal positions) and a seed derived from ``(demo.seed, task, k)``
with a stable hash: the same config gives identical actions, states and video bytes.

Every file is written atomically (a temporary file beside it, then a rename). Each task is
rendered in a fresh ``spawn``-ed process: in one process, an environment whose offscreen
renderer was created while an older environment was still alive renders black frames once
the older one is garbage collected (its ``MjrContext`` frees GL objects in the new context).
Episodes whose frames are (nearly) all black raise a :class:`RuntimeError` all the same.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import queue as queue_module
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hlrp.common.cli import run
from hlrp.common.config import ConfigError, DemoConfig, RootConfig
from hlrp.common.io import atomic_open, stable_bucket, write_text
from hlrp.common.logging import get_logger
from hlrp.sim.instructions import INSTRUCTIONS, instruction_for

log = get_logger("sim.demo_videos")  # not __name__: that is __main__ under python -m

VIDEO_DIR = "videos"
GROUND_TRUTH_DIR = "ground_truth"
METADATA_FILE = "metadata.csv"
EPISODES_FILE = "episodes.csv"
METADATA_COLUMNS = ("file", "episode_id", "task", "instruction", "fps", "num_frames")
EPISODES_COLUMNS = ("episode_id", "task", "success", "num_frames", "seed")

#: A frame whose mean pixel value (0..255) is below this counts as black.
BLACK_FRAME_MEAN = 2.0
#: An episode with more than this fraction of black frames is a rendering failure.
MAX_BLACK_FRACTION = 0.9

USAGE = """
python -m hlrp.sim.demo_videos output_dir=PATH [demo.tasks=[drawer-open-v3,door-open-v3]]
    [demo.episodes_per_task=2] [demo.resolution=64] [demo.seed=0] [workers=2]

Renders Meta-World expert episodes as mp4 videos (output_dir/videos/, with metadata.csv)
and their ground truth (output_dir/ground_truth/: actions, states, success flags).
workers=0 uses every CPU this process may use; each task renders in its own process.
"""


# --------------------------------------------------------------------------------------
# naming, seeds, validation (cheap: no MuJoCo import)
# --------------------------------------------------------------------------------------
def episode_ids(tasks: Sequence[str], episodes_per_task: int) -> list[str]:
    """File stems of all episodes, task by task: ``f"{task}_ep{k:03d}"``."""
    return [f"{task}_ep{k:03d}" for task in tasks for k in range(episodes_per_task)]


def episode_seed(seed: int, task: str, k: int) -> int:
    """The seed of episode ``k`` of ``task``: a stable hash of ``(seed, task, k)`` in [0, 2^31)."""
    return stable_bucket(f"hlrp.sim.demo/{seed}/{task}/{k}", 2**31)


def validate(cfg: DemoConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value of ``cfg``."""
    unknown = [t for t in cfg.tasks if t not in INSTRUCTIONS]
    if unknown:
        raise ConfigError(
            f"demo.tasks: unknown Meta-World task(s) {unknown}; "
            f"known tasks: {', '.join(sorted(INSTRUCTIONS))}"
        )
    if not cfg.tasks:
        raise ConfigError("demo.tasks is empty: name at least one Meta-World task")
    duplicates = sorted({t for t in cfg.tasks if cfg.tasks.count(t) > 1})
    if duplicates:
        raise ConfigError(f"demo.tasks lists {duplicates} more than once")
    if cfg.episodes_per_task < 1:
        raise ConfigError(f"demo.episodes_per_task={cfg.episodes_per_task} must be at least 1")
    if cfg.resolution < 16 or cfg.resolution % 2:
        raise ConfigError(
            f"demo.resolution={cfg.resolution} must be an even number of at least 16 pixels"
        )
    if cfg.steps_per_frame < 1:
        raise ConfigError(f"demo.steps_per_frame={cfg.steps_per_frame} must be at least 1")
    if cfg.max_steps < cfg.steps_per_frame:
        raise ConfigError(
            f"demo.max_steps={cfg.max_steps} must be at least "
            f"demo.steps_per_frame={cfg.steps_per_frame}"
        )
    if cfg.steps_after_success < 0:
        raise ConfigError(f"demo.steps_after_success={cfg.steps_after_success} must be >= 0")
    if cfg.action_noise < 0:
        raise ConfigError(f"demo.action_noise={cfg.action_noise} must be >= 0")
    if cfg.action_noise_steps < 0:
        raise ConfigError(f"demo.action_noise_steps={cfg.action_noise_steps} must be >= 0")
    if not 0 <= cfg.crf <= 51:
        raise ConfigError(f"demo.crf={cfg.crf} must be in [0, 51]")


def _resolve_workers(workers: int, num_tasks: int) -> int:
    """Worker processes to start: ``workers`` (0: all usable CPUs), at most one per task."""
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, min(workers, num_tasks))


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
def write_mp4(path: Path, frames: np.ndarray, fps: float, crf: int = 18) -> None:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as an H.264 mp4 at ``fps``, atomically.

    One encoder thread and bit-exact muxing make the bytes a function of the frames alone.
    """
    import av

    _, height, width, _ = frames.shape
    with atomic_open(path, "wb") as f, av.open(f, mode="w", format="mp4") as container:
        container.flags |= av.container.Flags.bitexact.value
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "threads": "1"}
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


# --------------------------------------------------------------------------------------
# simulation (runs in the worker processes)
# --------------------------------------------------------------------------------------
@dataclass
class Episode:
    """One rendered expert episode: T frames and what happened between them."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    actions: np.ndarray  # (T, steps_per_frame * action_dim) float32
    success: np.ndarray  # (T,) bool
    state: np.ndarray  # (T, obs_dim) float32
    frame_step: np.ndarray  # (T,) int64
    solved_at_step: int | None  # first simulator step with success, None if never


_PROGRESS: Any = None  # the worker's end of the progress queue (set by _init_worker)


def _init_worker(progress: Any) -> None:
    """Worker process setup: headless rendering, quiet policies, the progress queue."""
    global _PROGRESS
    _PROGRESS = progress
    os.environ.setdefault("MUJOCO_GL", "egl")
    # the scripted policies warn about gains that the env's action clipping takes care of
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")


class _TaskRenderer:
    """One Meta-World environment (and its GL context) that renders every episode of a task."""

    def __init__(self, task: str, cfg: DemoConfig) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        import metaworld
        import mujoco
        from metaworld.policies import ENV_POLICY_MAP

        self.task, self.cfg = task, cfg
        self.mt1 = metaworld.MT1(task, seed=cfg.seed)
        res = cfg.resolution
        self.env = self.mt1.train_classes[task](
            render_mode="rgb_array", camera_name=cfg.camera, width=res, height=res
        )
        self.policy = ENV_POLICY_MAP[task]()
        base = self.env.unwrapped
        model = base.model
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cfg.camera)
        if cam_id < 0:
            cameras = [model.camera(i).name for i in range(model.ncam)]
            raise ConfigError(f"demo.camera={cfg.camera!r} is not a camera of {task}: {cameras}")
        # no shadows, no reflections, no multisampling: ~10x faster offscreen rendering
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        self.env.set_task(self.mt1.train_tasks[0])
        self.env.reset(seed=0)
        self.env.render()  # creates the offscreen viewer with the settings above
        scene_flags = base.mujoco_renderer.viewer.scn.flags
        scene_flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        scene_flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        # Meta-World's "corner" camera is rolled by 180 degrees (its up axis points down):
        # rotating the image, not flipping it, gives the upright and unmirrored view.
        up_axis = base.data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        self.rotate = bool(up_axis[2] < 0)
        self.dt = float(base.dt)
        self.fps = 1.0 / (self.dt * cfg.steps_per_frame)
        self.max_steps = min(cfg.max_steps, int(base.max_path_length))

    def render(self) -> np.ndarray:
        image = self.env.render()
        return np.ascontiguousarray(image[::-1, ::-1] if self.rotate else image)

    def episode(self, k: int, seed: int) -> Episode:
        """Run the expert on train task ``k``, rendering every ``steps_per_frame`` steps."""
        cfg, env = self.cfg, self.env
        spf = cfg.steps_per_frame
        rng = np.random.default_rng(seed)
        low, high = env.action_space.low, env.action_space.high
        env.set_task(self.mt1.train_tasks[k % len(self.mt1.train_tasks)])
        obs, _ = env.reset(seed=seed)
        noise = ActionNoise(cfg, len(low), rng)
        frames, actions, success, states, frame_steps = [], [], [], [], []
        step, solved_at, flag = 0, None, False
        while step + spf <= self.max_steps and (
            solved_at is None or step < solved_at + cfg.steps_after_success
        ):
            frames.append(self.render())
            states.append(np.asarray(obs, dtype=np.float32))
            frame_steps.append(step)
            chunk = []
            for _ in range(spf):
                action = np.asarray(self.policy.get_action(obs), dtype=np.float64)
                if noise.std > 0:
                    action = action + noise.step()
                action = np.clip(action, low, high)
                obs, _reward, _terminated, _truncated, info = env.step(action)
                step += 1
                chunk.append(action)
                flag = bool(info["success"])
                if flag and solved_at is None:
                    solved_at = step
            actions.append(np.concatenate(chunk))
            success.append(flag)
        return Episode(
            frames=np.stack(frames),
            actions=np.stack(actions).astype(np.float32),
            success=np.asarray(success, dtype=bool),
            state=np.stack(states),
            frame_step=np.asarray(frame_steps, dtype=np.int64),
            solved_at_step=solved_at,
        )


class ActionNoise:
    """Exploration noise on the expert's actions: Gaussian, optionally correlated in time.

    An AR(1) process per action dim, ``n_s = rho * n_{s-1} + sqrt(1 - rho^2) * std * e_s`` with
    ``rho = exp(-1 / demo.action_noise_steps)`` (0 steps: independent draws) and stationary std
    ``demo.action_noise``, so every step's noise has the same spread whatever its correlation.
    Independent per-step noise averages out over the steps between two frames; correlated
    noise moves the hand in a way the frames show and the scene does not predict. Without
    ``demo.action_noise_gripper`` the last dim (Meta-World's grab effort) gets none.
    """

    def __init__(self, cfg: DemoConfig, dim: int, rng: np.random.Generator) -> None:
        self.std, self.rng = float(cfg.action_noise), rng
        self.rho = float(np.exp(-1.0 / cfg.action_noise_steps)) if cfg.action_noise_steps else 0.0
        self.mask = np.ones(dim)
        if not cfg.action_noise_gripper:
            self.mask[-1] = 0.0
        self.value = np.zeros(dim)
        if self.std > 0 and self.rho:  # start from the stationary distribution
            self.value = rng.normal(0.0, self.std, size=dim)

    def step(self) -> np.ndarray:
        """The noise of the next simulator step, shape (dim,)."""
        if self.std <= 0:
            return self.value
        if self.rho:
            fresh = self.rng.normal(0.0, self.std, size=self.value.shape)
            self.value = self.rho * self.value + np.sqrt(1.0 - self.rho**2) * fresh
            return self.value * self.mask
        self.value = self.rng.normal(0.0, self.std, size=self.value.shape)
        return self.value * self.mask


def _check_not_black(frames: np.ndarray, task: str, episode_id: str) -> None:
    """Raise if (nearly) all frames are black: the renderer lost its GL context."""
    means = frames.reshape(len(frames), -1).mean(axis=1)
    black = float(np.mean(means < BLACK_FRAME_MEAN))
    if black > MAX_BLACK_FRACTION:
        raise RuntimeError(
            f"task {task}, episode {episode_id}: {black:.0%} of {len(frames)} rendered frames are "
            "black; offscreen rendering failed (two environments with renderers in one process?)"
        )


def _render_task(cfg: DemoConfig, task: str, output_dir: str) -> list[dict[str, Any]]:
    """Worker: render every episode of ``task`` and write its video and ground truth."""
    out = Path(output_dir)
    renderer = _TaskRenderer(task, cfg)
    instruction = instruction_for(task)
    records = []
    for k, episode_id in enumerate(episode_ids([task], cfg.episodes_per_task)):
        start = time.perf_counter()
        seed = episode_seed(cfg.seed, task, k)
        ep = renderer.episode(k, seed)
        _check_not_black(ep.frames, task, episode_id)
        video = out / VIDEO_DIR / f"{episode_id}.mp4"
        write_mp4(video, ep.frames, renderer.fps, cfg.crf)
        ground_truth = out / GROUND_TRUTH_DIR / f"{episode_id}.npz"
        with atomic_open(ground_truth, "wb") as f:
            np.savez_compressed(
                f,
                actions=ep.actions,
                success=ep.success,
                state=ep.state,
                frame_step=ep.frame_step,
            )
        records.append(
            {
                "file": video.name,
                "episode_id": episode_id,
                "task": task,
                "instruction": instruction,
                "fps": round(renderer.fps, 6),
                "num_frames": len(ep.frames),
                "success": ep.solved_at_step is not None,
                "seed": seed,
                "episode_index": k,
                "solved_at_step": ep.solved_at_step,
                "video": str(video),
                "ground_truth": str(ground_truth),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        if _PROGRESS is not None:
            _PROGRESS.put(episode_id)
    renderer.env.close()
    return records


# --------------------------------------------------------------------------------------
# orchestration
# --------------------------------------------------------------------------------------
def _drain(progress: Any) -> int:
    """Count (and discard) the progress messages waiting in the queue."""
    count = 0
    while True:
        try:
            progress.get_nowait()
        except queue_module.Empty:
            return count
        count += 1


def _log_task(task: str, records: list[dict[str, Any]]) -> None:
    solved = sum(r["success"] for r in records)
    frames = [r["num_frames"] for r in records]
    seconds = sum(r["seconds"] for r in records)
    log.info(
        "%s: %d/%d episodes solved, %.0f frames per episode (%d-%d), %.1f s rendering",
        task,
        solved,
        len(records),
        float(np.mean(frames)),
        min(frames),
        max(frames),
        seconds,
    )


def generate(cfg: DemoConfig, output_dir: Path, workers: int) -> list[dict[str, Any]]:
    """Render the demo corpus described by ``cfg`` into ``output_dir``.

    Each task runs in its own spawned process (``workers`` at a time; 0: all usable CPUs).
    Returns one record per episode, in :func:`episode_ids` order, with the metadata columns
    plus ``success``, ``seed``, ``episode_index``, ``solved_at_step``, ``video``,
    ``ground_truth`` (paths) and ``seconds`` (time spent rendering and writing it).
    """
    validate(cfg)
    output_dir = Path(output_dir)
    ids = episode_ids(cfg.tasks, cfg.episodes_per_task)
    num_workers = _resolve_workers(workers, len(cfg.tasks))
    (output_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    (output_dir / GROUND_TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    # the tables of an earlier run would claim a corpus that this run is about to overwrite
    (output_dir / VIDEO_DIR / METADATA_FILE).unlink(missing_ok=True)
    (output_dir / GROUND_TRUTH_DIR / EPISODES_FILE).unlink(missing_ok=True)
    log.info(
        "rendering %d tasks x %d episodes at %d px into %s with %d worker(s)",
        len(cfg.tasks),
        cfg.episodes_per_task,
        cfg.resolution,
        output_dir,
        num_workers,
    )
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    progress = context.Queue()
    by_task: dict[str, list[dict[str, Any]]] = {}
    with (
        ProcessPoolExecutor(
            max_workers=num_workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(progress,),
            max_tasks_per_child=1,  # a fresh process (and GL context) for every task
        ) as pool,
        tqdm(total=len(ids), desc="demo episodes", unit="episode") as bar,
    ):
        futures: dict[Future, str] = {
            pool.submit(_render_task, cfg, task, str(output_dir)): task for task in cfg.tasks
        }
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                if finished := _drain(progress):
                    bar.update(finished)
                for future in done:
                    task = futures[future]
                    by_task[task] = future.result()
                    _log_task(task, by_task[task])
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        bar.update(len(ids) - bar.n)  # progress messages still in flight
    progress.close()

    records = [r for task in cfg.tasks for r in by_task[task]]
    assert [r["episode_id"] for r in records] == ids
    _write_csv(output_dir / GROUND_TRUTH_DIR / EPISODES_FILE, EPISODES_COLUMNS, records)
    _write_csv(output_dir / VIDEO_DIR / METADATA_FILE, METADATA_COLUMNS, records)  # last
    failed = [r["episode_id"] for r in records if not r["success"]]
    if failed:
        log.warning("the expert did not solve %d episode(s): %s", len(failed), failed)
    log.info(
        "wrote %d videos (%d frames) to %s in %.1f s",
        len(records),
        sum(r["num_frames"] for r in records),
        output_dir / VIDEO_DIR,
        time.perf_counter() - start,
    )
    return records


def _main(cfg: RootConfig) -> int:
    if not cfg.output_dir:
        print("error: output_dir=PATH is required", file=sys.stderr)
        return 2
    try:
        generate(cfg.demo, Path(cfg.output_dir), cfg.workers)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``hlrp-demo-videos``); returns the exit code."""
    return run(_main, argv, USAGE, stage="laq")


if __name__ == "__main__":
    raise SystemExit(main())
