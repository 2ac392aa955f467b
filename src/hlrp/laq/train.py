"""Stage 1: train the latent action quantizer with PyTorch Lightning.

    python -m hlrp.laq.train experiment=laq_debug data.shards=results/shards/index.json \\
        output_dir=results/laq [key=value ...]

Writes into ``output_dir``:

* ``laq.ckpt``: the trained model (``model_config``, ``state_dict``, ``global_step``,
  ``resume_hash``), what labelling, the report and stage 2 load
  (:func:`hlrp.laq.export.load_laq`);
* ``config.yaml``: the resolved config of the run;
* ``checkpoints/last.ckpt``: full training state (model, optimizer, scheduler, step, loader
  position, RNG states of every rank), written atomically every
  ``training.checkpoint_every_n_steps`` and at the end. Running the same command again
  resumes an unfinished run (after a kill, a Slurm time limit or a requeue) exactly where it
  stopped, continues a finished run when ``max_steps`` was raised, and otherwise trains anew,
  moving the finished run to ``previous/run-NNN/`` (see :mod:`hlrp.common.checkpoint`);
* ``logs/metrics.csv`` (and ``wandb/``, offline by default), ``samples/*.png`` grids of
  frame t | frame t+k | reconstruction | error, ``plots/training.png``, ``metrics.json``.

Metrics: reconstruction MSE and PSNR, PSNR of the copy-frame-t baseline, code perplexity,
fraction of the codebook in use, learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hlrp.common import checkpoint
from hlrp.common.cli import run
from hlrp.common.config import LAQModelConfig, RootConfig, TrainingConfig, result_hash, to_yaml
from hlrp.common.io import atomic_open, write_json, write_text
from hlrp.common.lightning import (
    keep_previous_metrics,
    make_trainer,
    metric_series,
    validation_schedule,
)
from hlrp.common.logging import get_logger
from hlrp.common.metrics import psnr
from hlrp.common.optim import lr_lambda
from hlrp.common.plots import finish_axis, save_png
from hlrp.laq import TRAIN_RESULT_KEYS
from hlrp.laq.data import LAQDataModule
from hlrp.laq.export import export_laq
from hlrp.laq.model import LAQ, maybe_compile, to_model_input

log = get_logger("laq.train")


def code_restart_due(step: int) -> int:
    """LAPA's dead-code restart schedule: every 10 steps to 100, 100 to 1k, 500 to 5k, then off.

    Returns the number of batches since the previous restart when one is due at ``step``,
    else 0.
    """
    for until, every in ((100, 10), (1000, 100), (5000, 500)):
        if step <= until:
            return every if step > 0 and step % every == 0 else 0
    return 0


class LAQModule(L.LightningModule):
    """LAQ + its optimisation: reconstruction of frame t+k from frame t and latent codes."""

    def __init__(self, model_cfg: LAQModelConfig, train_cfg: TrainingConfig, total_steps: int):
        super().__init__()
        self.model_cfg = model_cfg
        self.train_cfg = train_cfg
        self.total_steps = total_steps
        self.model = maybe_compile(LAQ(model_cfg), model_cfg)
        self._pending_rng: dict[str, Any] | None = None

    def forward(self, frames: torch.Tensor):
        return self.model(frames)

    def _inputs(self, batch: dict[str, Any]) -> torch.Tensor:
        return to_model_input(batch["frames"], self.model_cfg.image_size)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self._pending_rng is not None:  # resumed: continue the RNG streams of the killed run
            checkpoint.set_rng_state(self._pending_rng)
            self._pending_rng = None
        # Dead-code restarts after every N-th optimizer step, done here at the start of the next
        # step (not in on_train_batch_end, which runs after the checkpoint callback): a
        # checkpoint written at step N then resumes into exactly the same restart.
        every = code_restart_due(self.global_step)
        if every:
            replaced = self.model.replace_unused_codebooks(every)
            self.log("train/codes_restarted", float(replaced), on_step=True, batch_size=1)
        x = self._inputs(batch)  # (B, 2, C, S, S)
        out = self.model(x)
        bs = x.shape[0]
        self.log_dict(
            {
                "train/loss": out.total_loss,
                "train/mse": out.loss,
                "train/psnr": psnr(out.loss.detach()),
                "train/perplexity": out.perplexity,
                "train/codebook_used": out.used_fraction,
            },
            on_step=True,
            on_epoch=False,
            prog_bar=False,
            batch_size=bs,
        )
        self.log("loss", out.total_loss.detach(), prog_bar=True, logger=False, batch_size=bs)
        return out.total_loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = self._inputs(batch)
        out = self.model(x)
        baseline = torch.nn.functional.mse_loss(x[:, 0], x[:, 1])  # copy frame t
        bs = x.shape[0]
        self.log_dict(
            {
                "val/mse": out.loss,
                "val/psnr": psnr(out.loss),
                "val/psnr_copy_baseline": psnr(baseline),
                "val/perplexity": out.perplexity,
                "val/codebook_used": out.used_fraction,
            },
            on_step=False,
            on_epoch=True,
            batch_size=bs,
            sync_dist=True,
        )

    def configure_optimizers(self):
        o = self.train_cfg.optimizer
        if o.name != "adamw":
            raise ValueError(f"training.optimizer.name={o.name!r}: only adamw is supported")
        opt = torch.optim.AdamW(
            self.model.parameters(),
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.train_cfg, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- exact resume: RNG streams travel with the checkpoint -------------------------
    def on_save_checkpoint(self, ckpt: dict[str, Any]) -> None:
        # every rank has its own RNG streams (NSVQ noise): gather them, rank 0 writes the file
        ckpt["rng_states"] = checkpoint.gather_rng_states()

    def on_load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        # applied right before the next training step, after loaders have started (which
        # draws from the global RNG and would otherwise shift every later random number)
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self._pending_rng = checkpoint.rng_state_for_rank(ckpt.get("rng_states"), rank)


class ReconstructionGrids(Callback):
    """Every N steps, save frame t | frame t+k | reconstruction | |error| for a fixed batch."""

    def __init__(self, out_dir: Path, every: int, num: int, train_too: bool):
        self.out_dir, self.every, self.num, self.train_too = out_dir, every, num, train_too
        self._val_batch: dict[str, Any] | None = None
        self._train_batch: dict[str, Any] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._train_batch is None:
            self._train_batch = {k: v[: self.num] for k, v in batch.items()}
        step = trainer.global_step
        if trainer.is_global_zero and self.every > 0 and step % self.every == 0:
            if self.train_too:
                self.save(trainer, pl_module, self._train_batch, "train", step)
            if self._val_batch is not None:
                self.save(trainer, pl_module, self._val_batch, "val", step)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._val_batch is None:
            self._val_batch = {k: v[: self.num] for k, v in batch.items()}

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            batch = self._val_batch or self._train_batch
            if batch is not None:
                self.save(trainer, pl_module, batch, "final", trainer.global_step)

    @torch.no_grad()
    def save(self, trainer, pl_module: LAQModule, batch, split: str, step: int) -> None:
        import torchvision

        was_training = pl_module.training
        pl_module.eval()
        x = pl_module._inputs({"frames": batch["frames"].to(pl_module.device)})
        recon = pl_module.model(x).recon.float().clamp(0, 1)
        err = (recon - x[:, 1]).abs().mean(1, keepdim=True).expand_as(recon).clamp(0, 1) * 4
        rows = torch.stack([x[:, 0], x[:, 1], recon, err.clamp(0, 1)], dim=1)  # (B, 4, C, S, S)
        grid = torchvision.utils.make_grid(
            rows.flatten(0, 1).cpu(), nrow=4, padding=2, pad_value=1.0
        )
        path = self.out_dir / "samples" / f"{split}_step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as f:
            torchvision.utils.save_image(grid, f, format="png")
        for lg in trainer.loggers:
            if lg.__class__.__name__ == "WandbLogger":
                lg.log_image(key=f"samples/{split}", images=[str(path)], step=step)
        if was_training:
            pl_module.train()


def resume_hash(cfg: RootConfig) -> str:
    """What a checkpoint must match to be resumed: :data:`hlrp.laq.TRAIN_RESULT_KEYS` less
    ``max_steps``/``epochs`` (:func:`hlrp.common.config.result_hash`)."""
    return result_hash(cfg, *TRAIN_RESULT_KEYS, resume=True)


def save_training_plot(metrics_csv: Path, out_png: Path) -> None:
    """Loss / PSNR / codebook-use curves from the CSV logs (every attempt of a resumed run),
    for people rather than parsers."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = metric_series(metrics_csv.parent)
    panels = [
        ("train/mse", "val/mse", "MSE (log)", True),
        ("train/psnr", "val/psnr", "PSNR dB", False),
        ("train/perplexity", "val/perplexity", "code perplexity", False),
        ("train/codebook_used", "val/codebook_used", "codebook used", False),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, (tr, va, title, logy) in zip(axes, panels):
        for key, style in ((tr, "-"), (va, "o-")):
            if key in series:
                xs, ys = zip(*sorted(series[key]))
                ax.plot(xs, ys, style, label=key.split("/")[0], markersize=3)
        if title.startswith("PSNR") and "val/psnr_copy_baseline" in series:
            xs, ys = zip(*sorted(series["val/psnr_copy_baseline"]))
            ax.plot(xs, ys, "k--", label="copy frame t")
        finish_axis(ax, title, logy)
    save_png(fig, out_png)


def train(cfg: RootConfig) -> dict[str, Any]:
    stage = cfg.laq
    if not cfg.output_dir or not stage.data.shards:
        raise ValueError("train_laq needs data.shards=PATH (index.json) and output_dir=PATH")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    rhash = resume_hash(cfg)

    cl, t = stage.cluster, stage.training
    world = cl.devices * cl.num_nodes
    dm = LAQDataModule(stage.data, stage.data.shards, seed=cfg.seed, world_size=world)
    dm.setup("fit")
    steps_per_epoch = max(1, len(dm.train_dataloader()) // max(1, t.accumulate_grad_batches))
    total_steps = steps_per_epoch * t.epochs
    if t.max_steps > 0:
        total_steps = min(total_steps, t.max_steps)
    plan = checkpoint.prepare_run(
        out, rhash, world, total_steps, candidates=("checkpoints/last.ckpt", "hpc_ckpt_*.ckpt")
    )
    log.info("%s", plan.reason)
    if plan.resume:
        keep_previous_metrics(out / "logs")
    write_text(out / "config.yaml", to_yaml(cfg))
    module = LAQModule(stage.model, t, total_steps)
    log.info(
        "LAQ with %.2f M parameters, %d training steps",
        module.model.num_params() / 1e6,
        total_steps,
    )

    grids = ReconstructionGrids(
        out,
        t.validation.visualize_every_n_steps,
        t.validation.num_visualize,
        t.validation.visualize_train,
    )
    trainer = make_trainer(
        out,
        cfg,
        "laq",
        cl,
        t,
        total_steps,
        rhash,
        [grids],
        max_epochs=t.epochs,
        **validation_schedule(t.validation.every_n_steps),
    )
    env = getattr(trainer.strategy, "cluster_environment", None)
    log.info(
        "rank %d of %d, %s x %d node(s), cluster environment %s",
        trainer.global_rank,
        trainer.world_size,
        cl.devices,
        cl.num_nodes,
        type(env).__name__,
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=plan.resume, weights_only=True)
    except SIGTERMException as e:  # scancel, a time limit: fail, so the job is retried/resumed
        log.error(
            "terminated at step %d; the next run resumes from the last checkpoint",
            trainer.global_step,
        )
        raise SystemExit(143) from e
    # the final state, so a later run with a larger max_steps continues from here (all ranks)
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if t.validation.every_n_steps > 0 and dm.val_dataloader():  # final validation, all ranks
        final = trainer.validate(module, datamodule=dm, verbose=False)
        metrics.update({k: float(v) for k, v in final[0].items()})
    if trainer.is_global_zero:
        export_laq(out / "laq.ckpt", module.model, rhash, trainer.global_step)
        write_json(
            out / "metrics.json",
            {"global_step": trainer.global_step, "resume_hash": rhash, **metrics},
        )
        csv_path = out / "logs" / "metrics.csv"
        if csv_path.is_file():
            save_training_plot(csv_path, out / "plots" / "training.png")
        checkpoint.mark_finished(out, rhash, trainer.global_step)
        log.info("wrote %s (step %d)", out / "laq.ckpt", trainer.global_step)
    return metrics


USAGE = """
usage: python -m hlrp.laq.train experiment=NAME data.shards=INDEX.json output_dir=DIR [key=value ...]

Trains the latent action quantizer on preprocess shards. Running the same command again
resumes an unfinished run from output_dir/checkpoints/last.ckpt, continues a finished one
whose max_steps was raised, and otherwise trains anew (the finished run moves to
output_dir/previous/). Short keys: data.X, model.X, training.X, cluster.X mean laq.data.X...
Overfitting one pair (a debugging recipe):
  experiment=laq_debug data.pair_level=true data.max_samples=1 data.val_split=0.0 \\
  training.epochs=1000 training.validation.visualize_train=true
"""


def main(argv: Sequence[str] | None = None) -> int:
    def _main(cfg: RootConfig) -> int:
        train(cfg)
        return 0

    return run(_main, argv, USAGE, stage="laq")


if __name__ == "__main__":
    raise SystemExit(main())
