"""Meta-World tasks for closed-loop evaluation, rendered exactly as the demo corpus was.

:class:`SimTask` reuses the demo's renderer (:mod:`hlrp.sim.demo_videos`: camera, resolution,
no shadows, the upright image) so a policy sees at evaluation what its training frames
showed. One policy action is one frame: it is repeated for ``demo.steps_per_frame``
simulator steps, then the next frame is rendered. Episode ``k`` is task variation ``k`` of
the MT1 benchmark built with ``seed`` (its object and goal positions come from that seed);
use an evaluation seed the corpus never used (the demo uses ``demo.seed``).

One environment (and GL context) at a time per process: close a task before opening the next
(:meth:`SimTask.close`), see the note on black frames in :mod:`hlrp.sim.demo_videos`.
"""

from __future__ import annotations

import gc
from dataclasses import replace

import numpy as np

from hlrp.common.config import ConfigError, DemoConfig
from hlrp.sim.demo_videos import _check_not_black, _TaskRenderer, episode_seed
from hlrp.sim.instructions import INSTRUCTIONS, instruction_for


class SimTask:
    """One Meta-World v3 task: ``reset(k)`` then ``step(action)`` until ``done``."""

    def __init__(self, task: str, demo: DemoConfig, seed: int):
        if task not in INSTRUCTIONS:
            raise ConfigError(
                f"evaluation task {task!r} is not a Meta-World v3 task with a scripted expert; "
                f"known: {', '.join(sorted(INSTRUCTIONS))}"
            )
        self.task, self.seed = task, seed
        self.instruction = instruction_for(task)
        self.cfg = replace(demo, seed=seed)
        self._r = _TaskRenderer(task, self.cfg)
        self.env = self._r.env
        self.steps_per_frame = demo.steps_per_frame
        self.max_steps = self._r.max_steps
        self.low, self.high = self.env.action_space.low, self.env.action_space.high
        self.steps = 0
        self.success = False

    def reset(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Start episode ``k`` (its own task variation and seed): frame (S, S, 3), obs."""
        tasks = self._r.mt1.train_tasks
        self.env.set_task(tasks[k % len(tasks)])
        obs, _ = self.env.reset(seed=episode_seed(self.seed, self.task, k))
        self.steps, self.success = 0, False
        self.obs = np.asarray(obs, dtype=np.float32)
        frame = self._r.render()
        _check_not_black(frame[None], self.task, f"evaluation episode {k}")
        return frame, self.obs

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """Apply ``action`` for one frame (``steps_per_frame`` simulator steps, clipped to the
        action space); the next frame, the observation, and whether the task is solved."""
        a = np.clip(np.asarray(action, dtype=np.float64), self.low, self.high)
        for _ in range(self.steps_per_frame):
            obs, _r, _term, _trunc, info = self.env.step(a)
            self.steps += 1
            if info["success"]:
                self.success = True
            if self.success or self.steps >= self.max_steps:
                break
        self.obs = np.asarray(obs, dtype=np.float32)
        return self._r.render(), self.obs, self.success

    @property
    def done(self) -> bool:
        return self.success or self.steps >= self.max_steps

    def close(self) -> None:
        self.env.close()
        del self._r, self.env
        gc.collect()  # the GL context goes before the next task's is made
