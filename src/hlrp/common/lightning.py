"""Lightning pieces both Lightning stages use (stage 1's LAQ and stage 3's policies).

Atomic checkpoint files, exact-resume loaders, CSV + wandb loggers, plain-text progress for
log files, the resume stamp every checkpoint carries, the fault injection of the resume
tests (``HLRP_FAULT_KILL_AT_STEP``), the Trainer both stages build from their config, and
the logged metrics of a run read back across the attempts of a resumed run.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from hlrp.common import checkpoint
from hlrp.common.logging import get_logger
from hlrp.common.optim import resolve_precision

log = get_logger("train")


class ResumableLoader:
    """An epoch-aware loader Lightning can checkpoint mid-epoch.

    ``make(epoch, start)`` returns the DataLoader of ``epoch`` positioned at batch ``start``:
    the batches it yields must be exactly those of an uninterrupted epoch from ``start`` on,
    and it must reach that position without building the batches before it. Every iteration
    is a new epoch (Lightning starts one iteration per epoch and may stop it after ``length``
    batches). ``state_dict`` records the epoch and how many of its batches were handed out;
    after ``load_state_dict`` the next iteration continues that epoch from there.
    """

    def __init__(self, make: Callable[[int, int], DataLoader], length: int | None):
        self.make = make
        self.length = length
        self.epoch = 0
        self.served = 0  # batches of this epoch handed out (including those before a resume)
        self._started = False
        self._resume: tuple[int, int] | None = None

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("length unknown")
        return self.length

    def __iter__(self) -> Iterator[Any]:
        if self._resume is not None:
            self.epoch, start = self._resume
            self._resume = None
        else:
            self.epoch += int(self._started)
            start = 0
        self._started = True
        self.served = start
        for batch in self.make(self.epoch, start):
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "served": self.served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, served = int(state["epoch"]), int(state["served"])
        if self.length is not None and served >= self.length:  # saved after an epoch's last batch
            epoch, served = epoch + 1, 0
        self._resume = (epoch, served)
        self._started = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O through :mod:`hlrp.common.checkpoint`: atomic, fsynced
    writes; ``weights_only`` reads."""

    def save_checkpoint(self, checkpoint_dict, path, storage_options=None) -> None:
        checkpoint.save(checkpoint_dict, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return checkpoint.load(path, map_location=map_location or "cpu")


class LogProgress(Callback):
    """Progress as plain log lines (for Snakemake and Slurm log files, where bars are noise)."""

    def __init__(self, every: int, total: int):
        self.every, self.total = max(1, every), total
        self._t0: float | None = None
        self._step0 = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        step = trainer.global_step
        if self._t0 is None:
            self._t0, self._step0 = time.perf_counter(), step
            return
        if step % self.every or not trainer.is_global_zero:
            return
        rate = (step - self._step0) / max(1e-9, time.perf_counter() - self._t0)
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        loss = trainer.callback_metrics.get("loss")
        log.info(
            "step %d/%d  loss %.5f  %.2f steps/s  eta %.0f min",
            step,
            self.total,
            float(loss) if loss is not None else float("nan"),
            rate,
            eta / 60,
        )


def validation_schedule(every_n_steps: int) -> dict[str, Any]:
    """Trainer arguments: validate every N optimizer steps (across epochs), or never if N <= 0."""
    if every_n_steps > 0:
        return {"val_check_interval": every_n_steps, "check_val_every_n_epoch": None}
    return {"limit_val_batches": 0}


def make_loggers(out: Path, cfg: Any, name: str, wandb_mode: str, run_hash: str) -> list:
    """CSV always; wandb unless disabled (``cluster.wandb_mode=disabled`` wins over the
    environment, else ``WANDB_MODE`` wins over the config). Online runs resume their wandb run
    after a restart; offline runs start a new offline run per attempt (an offline run cannot
    be reopened), which ``wandb sync`` uploads side by side."""
    loggers: list = [CSVLogger(str(out), name="logs", version="")]
    mode = wandb_mode
    if mode != "disabled":
        mode = os.environ.get("WANDB_MODE", mode)
    if mode == "disabled":
        return loggers
    try:
        import wandb  # noqa: F401 - Lightning's WandbLogger needs the package itself
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:
        log.warning("wandb is not installed: logging to CSV only")
        return loggers
    os.environ["WANDB_MODE"] = mode
    resume = {"id": f"{name}-{run_hash}", "resume": "allow"} if mode == "online" else {}
    loggers.append(
        WandbLogger(
            project="hlrp",
            name=f"{name}-{cfg.name}",
            save_dir=str(out),
            config=asdict(cfg),
            **resume,
        )
    )
    return loggers


class KillAtStep(Callback):
    """Fault injection for resume tests: ``HLRP_FAULT_KILL_AT_STEP=N`` SIGKILLs this process
    at the start of the first batch after optimizer step N (after step N's checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            import signal

            log.warning("HLRP_FAULT_KILL_AT_STEP=%d: killing myself", self.step)
            os.kill(os.getpid(), signal.SIGKILL)


class StampConfig(Callback):
    """Store the resume hash and the world size in every checkpoint (checked before resuming)."""

    def __init__(self, rhash: str, world_size: int):
        self.meta = checkpoint.stamp(rhash, world_size)

    def on_save_checkpoint(self, trainer, pl_module, ckpt) -> None:
        ckpt[checkpoint.META_KEY] = self.meta


def keep_previous_metrics(log_dir: Path) -> None:
    """Lightning's CSV logger starts metrics.csv afresh: keep the killed run's rows aside."""
    current = log_dir / "metrics.csv"
    if current.is_file():
        n = len(list(log_dir.glob("metrics.attempt*.csv")))
        os.replace(current, log_dir / f"metrics.attempt{n + 1}.csv")


def metric_series(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged value of a run by key, as sorted (step, value): ``metrics.attempt*.csv``
    (the killed attempts of a resumed run, :func:`keep_previous_metrics`) in order, then
    ``metrics.csv``; empty and non-finite values are skipped, a later attempt wins at a step."""
    attempts = sorted(
        log_dir.glob("metrics.attempt*.csv"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0)
    )
    series: dict[str, dict[int, float]] = {}
    for path in [*attempts, log_dir / "metrics.csv"]:
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                step = row.get("step")
                if not step:
                    continue
                for key, value in row.items():
                    if key == "step" or value in ("", None):
                        continue
                    try:
                        v = float(value)
                    except ValueError:
                        continue
                    if math.isfinite(v):
                        series.setdefault(key, {})[int(float(step))] = v
    return {k: sorted(v.items()) for k, v in series.items()}


def make_trainer(
    out: Path,
    cfg: Any,
    name: str,
    cluster: Any,
    training: Any,
    total_steps: int,
    rhash: str,
    callbacks: Sequence[Callback] = (),
    **schedule: Any,
):
    """The Lightning Trainer of a stage: ``cluster`` / ``training`` (ClusterConfig,
    TrainingConfig), checkpoints every ``training.checkpoint_every_n_steps`` into
    ``out/checkpoints`` (atomic, stamped with ``rhash``), learning rate logged, CSV and wandb
    loggers, plain progress lines when stderr is not a terminal, the fault injection of the
    resume tests, and no requeueing by Lightning under Slurm (Snakemake or the sbatch template
    resubmits; the rerun resumes from ``checkpoints/last.ckpt``). ``callbacks`` are added;
    ``schedule`` holds the stage's epoch and validation arguments."""
    import lightning as L
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    t = training
    world = cluster.devices * cluster.num_nodes
    all_callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=str(out / "checkpoints"),
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=t.checkpoint_every_n_steps,
            save_last=True,
            save_top_k=1,
        ),
        StampConfig(rhash, world),
        LearningRateMonitor(logging_interval="step"),
        *callbacks,
    ]
    if os.environ.get("HLRP_FAULT_KILL_AT_STEP"):
        all_callbacks.append(KillAtStep(int(os.environ["HLRP_FAULT_KILL_AT_STEP"])))
    interactive = sys.stderr.isatty()
    if not interactive:
        all_callbacks.append(LogProgress(t.log_every_n_steps, total_steps))
    return L.Trainer(
        default_root_dir=str(out),
        accelerator=cluster.accelerator,
        devices=cluster.devices,
        num_nodes=cluster.num_nodes,
        strategy=cluster.strategy,
        precision=resolve_precision(t.precision, cluster.accelerator),
        max_steps=total_steps,
        gradient_clip_val=t.grad_clip or None,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=0,
        callbacks=all_callbacks,
        logger=make_loggers(out, cfg, name, cluster.wandb_mode, rhash),
        plugins=[
            AtomicCheckpointIO(),
            *([SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []),
        ],
        enable_progress_bar=interactive,
        enable_model_summary=interactive,
        use_distributed_sampler=False,
        **schedule,
    )
