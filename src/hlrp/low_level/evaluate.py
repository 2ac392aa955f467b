"""Closed-loop evaluation of a finetuned policy in Meta-World, headless.

    python -m hlrp.low_level.evaluate experiment=ft_demo policy_dir=results/low_level/latent/n2/policy \\
        output_dir=results/evaluation/latent/n2 [evaluation.tasks=[button-press-topdown-v3]]

For every task (``evaluation.tasks``; empty: the tasks the policy was finetuned on) and
episode ``k < evaluation.episodes_per_task`` the environment is reset to task variation
``k`` of Meta-World's MT1 benchmark built with ``evaluation.seed`` (object and goal positions
the demo corpus, built with ``demo.seed``, never had; Meta-World v3 draws them from the
benchmark's seed, not from the seed given to ``reset``). Each step renders the frame at the demo's camera and resolution, resizes it as
preprocessing does, and asks the policy for a chunk of H actions given the frame, the
instruction and the hand's state; the chunk is executed (``evaluation.execute`` of its
actions, 0: all) before the next query, or, with ``evaluation.temporal_ensemble=m``, the
policy is queried every frame and the overlapping predictions for the current frame are
averaged with weights ``exp(-m * i)`` (i = 0 for the oldest: ACT, Zhao et al. 2023). An
episode succeeds when the environment reports success within ``evaluation.max_steps``
simulator steps. Deterministic for a seed (the flow head's noise has its own generator).

Writes ``output_dir/results.json`` (per task: successes, rate, 95 % Wilson interval, episode
lengths; overall; policy latency per query and per action; simulator steps per second),
``rollouts.csv`` (one row per episode) and ``videos/{task}_ep{k}.mp4`` for the first
``evaluation.videos_per_task`` episodes of each task.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hlrp.common.cli import run
from hlrp.common.config import ConfigError, RootConfig
from hlrp.common.io import write_json, write_text
from hlrp.common.logging import get_logger
from hlrp.common.metrics import wilson_interval
from hlrp.data.video import fit_frame
from hlrp.low_level.episodes import demo_state
from hlrp.low_level.policy import VLAPolicy

log = get_logger("low_level.evaluate")


class ChunkExecutor:
    """Which action to take at each frame from the chunks a policy predicts.

    Without ensembling: query, execute ``execute`` actions of the chunk, query again. With
    ``temporal_ensemble=m``: query every frame and average, for the current frame, every
    earlier chunk's prediction of it with weights exp(-m * i), i = 0 for the oldest.
    """

    def __init__(self, chunk: int, execute: int = 0, temporal_ensemble: float | None = None):
        self.chunk = chunk
        self.execute = min(chunk, execute) if execute > 0 else chunk
        self.m = temporal_ensemble
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self.queue: list[np.ndarray] = []
        self.history: list[tuple[int, np.ndarray]] = []  # (time predicted, (H, D) chunk)

    def needs_query(self) -> bool:
        return self.m is not None or not self.queue

    def add(self, chunk: np.ndarray) -> None:
        if self.m is None:
            self.queue = list(chunk[: self.execute])
        else:
            self.history.append((self.t, chunk))
            self.history = [(t0, c) for t0, c in self.history if self.t - t0 < self.chunk]

    def next(self) -> np.ndarray:
        if self.m is None:
            action = self.queue.pop(0)
        else:
            preds = np.stack([c[self.t - t0] for t0, c in self.history])  # oldest first
            w = np.exp(-self.m * np.arange(len(preds)))
            action = (w[:, None] * preds).sum(0) / w.sum()
        self.t += 1
        return action


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def rollout(
    policy: VLAPolicy,
    sim: Any,
    k: int,
    executor: ChunkExecutor,
    generator: torch.Generator,
    keep_frames: bool,
) -> dict[str, Any]:
    """One episode; its success, length and the policy's query times."""
    frame, obs = sim.reset(k)
    executor.reset()
    size = policy.meta.image_size
    frames = [frame] if keep_frames else []
    latencies: list[float] = []
    actions = 0
    use_state = policy.meta.state_dim > 0
    while not sim.done:
        if executor.needs_query():
            image = fit_frame(frame, size)
            state = demo_state(obs)[None] if use_state else None
            t0 = time.perf_counter()
            chunk = policy.predict([image], [sim.instruction], state, generator=generator)[0]
            latencies.append(time.perf_counter() - t0)
            executor.add(chunk)
        frame, obs, _ = sim.step(executor.next())
        actions += 1
        if keep_frames:
            frames.append(frame)
    return {
        "success": bool(sim.success),
        "sim_steps": int(sim.steps),
        "actions": actions,
        "latencies": latencies,
        "frames": np.stack(frames) if keep_frames else None,
    }


def evaluate(cfg: RootConfig) -> dict[str, Any]:
    ev = cfg.low_level.evaluation
    if not cfg.policy_dir or not cfg.output_dir:
        raise ConfigError("evaluation needs policy_dir=FOLDER (a finetuned policy) and output_dir")
    from hlrp.sim.demo_videos import write_mp4
    from hlrp.sim.rollout import SimTask

    out = Path(cfg.output_dir)
    device = resolve_device(ev.device)
    policy = VLAPolicy.load(cfg.policy_dir).to(device).eval()
    meta = policy.meta
    if meta.action_dim != 4:
        raise ConfigError(
            f"{cfg.policy_dir}: the policy outputs {meta.action_dim}-D actions; Meta-World takes "
            "4-D end-effector deltas (dx, dy, dz, gripper)"
        )
    if ev.episodes_per_task < 1:
        raise ConfigError(f"evaluation.episodes_per_task={ev.episodes_per_task} must be >= 1")
    tasks = list(ev.tasks) or list(meta.tasks)
    if not tasks:
        raise ConfigError("evaluation.tasks is empty and the policy names no tasks")
    demo = replace(cfg.demo, max_steps=ev.max_steps)
    torch.manual_seed(ev.seed)
    generator = torch.Generator().manual_seed(ev.seed)
    executor = ChunkExecutor(meta.chunk, ev.execute, ev.temporal_ensemble)
    log.info(
        "evaluating %s on %d task(s) x %d episodes (seed %d, %s, chunk %d, executing %s)",
        cfg.policy_dir,
        len(tasks),
        ev.episodes_per_task,
        ev.seed,
        device,
        meta.chunk,
        (
            f"ensemble m={ev.temporal_ensemble}"
            if ev.temporal_ensemble is not None
            else f"{executor.execute} per query"
        ),
    )
    rows: list[dict[str, Any]] = []
    per_task: dict[str, Any] = {}
    latencies: list[float] = []
    start = time.perf_counter()
    sim_steps = 0
    from tqdm import tqdm

    bar = tqdm(total=len(tasks) * ev.episodes_per_task, desc="rollouts", unit="episode")
    for task in tasks:
        sim = SimTask(task, demo, ev.seed)
        successes, lengths = 0, []
        try:
            for k in range(ev.episodes_per_task):
                keep = k < ev.videos_per_task
                r = rollout(policy, sim, k, executor, generator, keep)
                successes += r["success"]
                lengths.append(r["sim_steps"])
                latencies += r["latencies"]
                sim_steps += r["sim_steps"]
                rows.append(
                    {
                        "task": task,
                        "episode": k,
                        "success": r["success"],
                        "sim_steps": r["sim_steps"],
                        "actions": r["actions"],
                        "queries": len(r["latencies"]),
                    }
                )
                if keep:
                    fps = 1.0 / (sim._r.dt * demo.steps_per_frame)
                    write_mp4(out / "videos" / f"{task}_ep{k:03d}.mp4", r["frames"], fps)
                bar.update(1)
        finally:
            sim.close()
        n = ev.episodes_per_task
        lo, hi = wilson_interval(successes, n)
        per_task[task] = {
            "episodes": n,
            "successes": successes,
            "success_rate": successes / n,
            "ci95": [lo, hi],
            "lengths": lengths,
            "mean_length": float(np.mean(lengths)),
        }
        log.info("%s: %d/%d solved (95%% CI %.2f-%.2f)", task, successes, n, lo, hi)
    bar.close()
    wall = time.perf_counter() - start
    total_s = sum(t["successes"] for t in per_task.values())
    total_n = sum(t["episodes"] for t in per_task.values())
    lat = np.asarray(latencies) * 1000
    actions = sum(r["actions"] for r in rows)
    result = {
        "policy": str(cfg.policy_dir),
        "init": meta.init,
        "head": meta.head,
        "seed": ev.seed,
        "device": str(device),
        "tasks": per_task,
        "overall": {
            "episodes": total_n,
            "successes": total_s,
            "success_rate": total_s / total_n,
            "ci95": list(wilson_interval(total_s, total_n)),
        },
        "latency_ms": {
            "per_query_mean": float(lat.mean()),
            "per_query_p50": float(np.percentile(lat, 50)),
            "per_query_p95": float(np.percentile(lat, 95)),
            "per_action": float(lat.sum() / max(1, actions)),
        },
        "sim_steps": sim_steps,
        "sim_steps_per_s": sim_steps / wall,
        "wall_s": wall,
        "evaluation": asdict(ev),
    }
    buf = io.StringIO()
    w = csv.DictWriter(buf, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text(out / "rollouts.csv", buf.getvalue())
    write_json(out / "results.json", result)  # last: its presence means a complete evaluation
    log.info(
        "overall %d/%d (%.0f%%), %.1f ms per query, %.0f simulator steps/s; wrote %s",
        total_s,
        total_n,
        100 * total_s / total_n,
        result["latency_ms"]["per_query_mean"],
        result["sim_steps_per_s"],
        out / "results.json",
    )
    return result


USAGE = """
usage: python -m hlrp.low_level.evaluate experiment=NAME policy_dir=POLICY output_dir=DIR
           [evaluation.tasks=[button-press-topdown-v3]] [evaluation.episodes_per_task=N]

Rolls the policy out in Meta-World (headless, MUJOCO_GL=egl) on seeds the demo never used;
writes results.json (success per task with 95 % Wilson intervals), rollouts.csv, videos/.
"""


def main(argv: Sequence[str] | None = None) -> int:
    return run(evaluate, argv, USAGE, stage="low_level", expected=(ConfigError, FileNotFoundError))


if __name__ == "__main__":
    raise SystemExit(main())
