"""Stage 3: finetune a VLM with an action head on action-labelled episodes (PyTorch Lightning).

    python -m hlrp.low_level.train experiment=ft_demo init=results/foundation/model \\
        data.episodes=results/episodes/2/index.json output_dir=results/low_level/latent/n2

``init`` is where the policy starts (:meth:`hlrp.low_level.policy.VLAPolicy.create`):
``scratch`` (the VLM of ``foundation.model.backbone`` with no latent pretraining: the
baseline), stage 2's ``model/`` folder (latent pretraining) or another policy (the oracle's
pretraining on true actions, head included).

Writes into ``output_dir``: ``policy/`` (the saved policy, what evaluation loads),
``metrics.json``, ``config.yaml``, ``logs/metrics.csv`` (and ``wandb/``),
``plots/training.png`` and ``checkpoints/last.ckpt``: the full training state (weights,
optimizer, scheduler, loader position, RNG streams), written atomically every
``training.checkpoint_every_n_steps``. Running the same command again resumes a killed run
exactly, continues a finished one whose ``max_steps`` was raised, and otherwise trains anew
(the old run moves to ``previous/``), as stage 1 does (:mod:`hlrp.common.checkpoint`).
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, Dataset

from hlrp.common import checkpoint
from hlrp.common.cli import run
from hlrp.common.config import ConfigError, RootConfig, TrainingConfig, result_hash, to_yaml
from hlrp.common.io import file_sha256, write_json, write_text
from hlrp.common.lightning import (
    ResumableLoader,
    keep_previous_metrics,
    make_trainer,
    metric_series,
)
from hlrp.common.logging import get_logger
from hlrp.common.optim import lr_lambda
from hlrp.common.plots import finish_axis, save_png
from hlrp.foundation.export import META_FILE as FOUNDATION_META
from hlrp.foundation.export import adapt_backbone, resolve_backbone
from hlrp.low_level import TRAIN_RESULT_KEYS
from hlrp.low_level.episodes import EpisodeError, EpisodeSet, open_episodes
from hlrp.low_level.policy import (
    POLICY_FILE,
    BinTokenizer,
    Normalizer,
    PolicyMeta,
    VLAPolicy,
    append_bin_tokens,
    prompt_inputs,
)

log = get_logger("low_level.train")


# --------------------------------------------------------------------------------------
# data: (episode, t) -> frame t, instruction, state t, the chunk a[t : t + H] (masked past
# the episode's end)
# --------------------------------------------------------------------------------------
class ChunkDataset(Dataset):
    def __init__(self, episodes: EpisodeSet, meta: PolicyMeta):
        self.eps = [episodes.load(r) for r in episodes.episodes]  # frames memory-mapped
        self.index = [(e, t) for e, ep in enumerate(self.eps) for t in range(len(ep.actions))]
        self.H = meta.chunk
        self.norm = Normalizer(meta.normalization, meta.stats["action"])
        self.state_norm = (
            Normalizer("mean_std", meta.stats["state"]) if meta.state_dim > 0 else None
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e, t = self.index[i]
        ep = self.eps[e]
        T = len(ep.actions)
        rows = np.arange(t, t + self.H)
        mask = (rows < T).astype(np.float32)  # (H,)
        chunk = self.norm(ep.actions[np.minimum(rows, T - 1)])  # (H, D), last row repeated
        item = {
            "image": np.asarray(ep.frames[t]),
            "instruction": ep.instruction,
            "actions": chunk,
            "mask": mask,
        }
        if self.state_norm is not None and ep.state is not None:
            item["state"] = self.state_norm(ep.state[t])
        return item

    def all_actions(self) -> np.ndarray:
        """Every normalised action row (N, D): the bins head's edges come from these."""
        return np.concatenate([self.norm(ep.actions) for ep in self.eps])


class Collate:
    """Items -> the policy's batch (processor outputs, actions, mask, state, bin tokens)."""

    def __init__(self, policy: VLAPolicy):
        self.processor, self.family, self.meta = policy.processor, policy.family, policy.meta
        self.bins = BinTokenizer(self.meta.bin_edges) if self.meta.head == "bins" else None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = prompt_inputs(
            self.processor,
            self.family,
            self.meta,
            [it["image"] for it in items],
            [it["instruction"] for it in items],
        )
        actions = np.stack([it["actions"] for it in items])  # (B, H, D)
        batch["actions"] = torch.from_numpy(actions)
        batch["mask"] = torch.from_numpy(np.stack([it["mask"] for it in items]))
        if "state" in items[0]:
            batch["state"] = torch.from_numpy(np.stack([it["state"] for it in items]))
        if self.bins is not None:
            idx = torch.from_numpy(self.bins.encode(actions).reshape(len(items), -1))  # (B, H*D)
            append_bin_tokens(batch, self.meta.bin_token_ids, idx)
            batch["bin_idx"] = idx
        return batch


def make_loader(
    ds: ChunkDataset,
    collate: Collate,
    batch_size: int,
    workers: int,
    seed: int,
    rank: int,
    world: int,
) -> ResumableLoader:
    """Epochs of a seeded permutation (this rank's share), resumable at any batch."""
    per_rank = -(-len(ds) // world)
    bs = min(batch_size, per_rank)

    def make(epoch: int, start: int) -> DataLoader:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(ds), generator=g).tolist()
        order += order[: per_rank * world - len(order)]  # every rank the same count
        mine = order[rank::world]
        extra: dict[str, Any] = {}
        if workers > 0:
            extra = {"multiprocessing_context": mp.get_context("fork")}
        return DataLoader(
            ds,
            batch_size=bs,
            sampler=mine[start * bs :],
            num_workers=workers,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(seed),
            **extra,
        )

    return ResumableLoader(make, -(-per_rank // bs))


# --------------------------------------------------------------------------------------
# the Lightning module
# --------------------------------------------------------------------------------------
class PolicyModule(L.LightningModule):
    def __init__(self, policy: VLAPolicy, train_cfg: TrainingConfig, total_steps: int):
        super().__init__()
        self.policy = policy
        self.train_cfg = train_cfg
        self.total_steps = total_steps
        self._pending_rng: dict[str, Any] | None = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self._pending_rng is not None:  # resumed: continue the killed run's RNG streams
            checkpoint.set_rng_state(self._pending_rng)
            self._pending_rng = None
        loss, stats = self.policy.loss(batch)
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, batch_size=bs)
        for k, v in stats.items():
            self.log(f"train/{k}", v, on_step=True, on_epoch=False, batch_size=bs)
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=bs)
        return loss

    def configure_optimizers(self):
        o = self.train_cfg.optimizer
        if o.name != "adamw":
            raise ValueError(f"training.optimizer.name={o.name!r}: only adamw is supported")
        params = [p for p in self.policy.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.train_cfg, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, ckpt: dict[str, Any]) -> None:
        ckpt["rng_states"] = checkpoint.gather_rng_states()  # the flow head's noise

    def on_load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self._pending_rng = checkpoint.rng_state_for_rank(ckpt.get("rng_states"), rank)


# --------------------------------------------------------------------------------------
# building the policy
# --------------------------------------------------------------------------------------
def resume_hash(cfg: RootConfig, episodes_sha: str) -> str:
    """What a checkpoint must match to be resumed: the config less ``max_steps``, the
    episodes and the start (their files' sha256) and where the policy started."""
    import hashlib

    key = f"{result_hash(cfg, *TRAIN_RESULT_KEYS, resume=True)}/{episodes_sha}/{cfg.init}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build_policy(
    cfg: RootConfig, episodes: EpisodeSet, out: Path
) -> tuple[VLAPolicy, ChunkDataset]:
    m = cfg.low_level.model
    if not cfg.init:
        raise ConfigError(
            "finetuning needs init=scratch or init=FOLDER (stage 2's model/ or a policy/)"
        )
    if m.chunk < 1:
        raise ConfigError(f"model.chunk={m.chunk} must be at least 1")
    state_dim = episodes.state_dim if m.use_state else 0
    stats = {"action": episodes.stats["action"]}
    if state_dim:
        stats["state"] = episodes.stats["state"]
    marker = init_marker(cfg.init)
    if marker is not None and marker.name == POLICY_FILE:
        import json

        saved = json.loads(marker.read_text())
        same = (saved["head"], saved["normalization"], saved["state_dim"]) == (
            m.head,
            m.normalization,
            state_dim,
        )
        if same:  # its head works in its own normalised space: keep that space
            stats = saved["stats"]
    meta = PolicyMeta(
        head=m.head,
        chunk=m.chunk,
        action_dim=episodes.action_dim,
        state_dim=state_dim,
        family="",
        stats=stats,
        normalization=m.normalization,
        hidden=m.hidden,
        head_layers=m.head_layers,
        flow_steps=m.flow_steps,
        bins=m.bins,
        image_size=cfg.low_level.data.image_size,
        fps=episodes.fps,
        init=cfg.init,
        tasks=episodes.tasks,
    )
    # the dataset needs only the statistics: build it first, its actions give the bin edges
    ds = ChunkDataset(episodes, meta)
    backbone = None
    if cfg.init == "scratch":
        fm = cfg.foundation.model
        backbone = resolve_backbone(fm.backbone, out / "backbones", fm.image_size)
    policy = VLAPolicy.create(
        cfg.init,
        meta,
        backbone=backbone,
        dtype=m.dtype,
        attn_implementation=m.attn_implementation,
        train_actions=ds.all_actions() if m.head == "bins" else None,
    )
    policy.backbone = adapt_backbone(
        policy.backbone,
        freeze_vision=m.freeze_vision,
        lora_rank=m.lora_rank,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        gradient_checkpointing=m.gradient_checkpointing,
        train_token_ids=policy.meta.bin_token_ids,
        modules_to_save=("lm_head",) if m.head == "bins" else (),
    )
    return policy, ds


def init_marker(init: str | None) -> Path | None:
    """The file that makes ``init`` a start: stage 2's ``hlrp_foundation.json`` or a policy's
    ``hlrp_policy.json`` (None for ``scratch``)."""
    if not init or init == "scratch":
        return None
    for name in (FOUNDATION_META, POLICY_FILE):
        if (Path(init) / name).is_file():
            return Path(init) / name
    raise ConfigError(
        f"init={init}: not a foundation model (no {FOUNDATION_META}: rule train_foundation "
        f"writes results/foundation/model/) nor a policy (no {POLICY_FILE}), nor 'scratch'"
    )


def check_init(init: str | None, episodes: EpisodeSet) -> None:
    """Fail before any write when the start is missing or has another action space."""
    import json

    marker = init_marker(init)
    if marker is not None and marker.name == POLICY_FILE:
        saved = json.loads(marker.read_text())
        if int(saved["action_dim"]) != episodes.action_dim:
            raise ConfigError(
                f"init={init}: that policy outputs {saved['action_dim']}-D actions but the "
                f"episodes in {episodes.folder} have {episodes.action_dim}-D actions"
            )


def export_policy(module: PolicyModule, folder: Path, step: int) -> None:
    """``policy/`` written beside, then renamed into place (LoRA merged into the weights)."""
    import shutil

    policy = module.policy
    policy.meta.global_step = step
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    backbone = policy.backbone
    if hasattr(backbone, "merge_and_unload"):
        import copy

        policy.backbone = copy.deepcopy(backbone).merge_and_unload()
    try:
        policy.save(tmp)
    finally:
        policy.backbone = backbone
    checkpoint.commit_folder(tmp, folder, marker=POLICY_FILE)


def save_training_plot(metrics_csv: Path, out_png: Path) -> None:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = metric_series(metrics_csv.parent)
    keys = [k for k in ("train/loss", "train/bin_acc") if k in series]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(6 * max(1, len(keys)), 3.8))
    for ax, key in zip(np.atleast_1d(axes), keys):
        xs, ys = zip(*sorted(series[key]))
        ax.plot(xs, ys, "-", lw=1, label=key.split("/")[1])
        finish_axis(ax, key, key == "train/loss")
    save_png(fig, out_png)


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------
def train(cfg: RootConfig) -> dict[str, Any]:
    st = cfg.low_level
    if not cfg.output_dir or not st.data.episodes:
        raise ConfigError("finetuning needs data.episodes=INDEX.json and output_dir=DIR")
    episodes = open_episodes(st.data.episodes)  # a bad index fails here, before any write
    check_init(cfg.init, episodes)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    marker = init_marker(cfg.init)
    rhash = resume_hash(
        cfg,
        file_sha256(episodes.folder / "index.json")
        + (file_sha256(marker) if marker is not None else ""),  # a rebuilt start: anew
    )
    cl, t = st.cluster, st.training
    world = cl.devices * cl.num_nodes
    if t.max_steps <= 0:
        raise ConfigError("low_level.training.max_steps must be set (finetuning counts steps)")
    total_steps = t.max_steps
    plan = checkpoint.prepare_run(out, rhash, world, total_steps, keep=("backbones",))
    log.info("%s", plan.reason)
    if plan.resume:
        keep_previous_metrics(out / "logs")
    write_text(out / "config.yaml", to_yaml(cfg))

    policy, ds = build_policy(cfg, episodes, out)
    total = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    log.info(
        "policy: head %s, chunk %d x %d-D actions, state %d-D, %.1f M parameters (%.1f M "
        "training), init %s; %d episodes, %d samples, %d steps",
        policy.meta.head,
        policy.meta.chunk,
        policy.meta.action_dim,
        policy.meta.state_dim,
        total / 1e6,
        trainable / 1e6,
        cfg.init,
        len(episodes.episodes),
        len(ds),
        total_steps,
    )
    module = PolicyModule(policy, t, total_steps)

    trainer = make_trainer(
        out, cfg, "low_level", cl, t, total_steps, rhash, max_epochs=-1, limit_val_batches=0
    )
    loader = make_loader(
        ds,
        Collate(policy),
        st.data.batch_size,
        st.data.num_workers,
        cfg.seed,
        trainer.global_rank,
        trainer.world_size,
    )
    try:
        trainer.fit(module, train_dataloaders=loader, ckpt_path=plan.resume, weights_only=True)
    except SIGTERMException as e:
        log.error("terminated at step %d; the next run resumes", trainer.global_step)
        raise SystemExit(143) from e
    trainer.save_checkpoint(out / "checkpoints" / "last.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        export_policy(module, out / "policy", trainer.global_step)
        write_json(
            out / "metrics.json",
            {
                "global_step": trainer.global_step,
                "resume_hash": rhash,
                "init": cfg.init,
                "episodes": len(episodes.episodes),
                "samples": len(ds),
                "parameters": total,
                "trainable": trainable,
                **metrics,
            },
        )
        csv_path = out / "logs" / "metrics.csv"
        if csv_path.is_file():
            save_training_plot(csv_path, out / "plots" / "training.png")
        checkpoint.mark_finished(out, rhash, trainer.global_step)
        log.info("wrote %s (step %d)", out / "policy", trainer.global_step)
    return metrics


USAGE = """
usage: python -m hlrp.low_level.train experiment=NAME init=scratch|FOLDER
           data.episodes=INDEX.json output_dir=DIR [key=value ...]

Finetunes a policy (VLM + action head) on action-labelled episodes (python -m
hlrp.low_level.episodes). init=scratch starts from foundation.model.backbone without latent
pretraining; init=results/foundation/model from stage 2; init=.../policy from another policy.
Short keys: model.X, data.X, training.X, cluster.X, evaluation.X mean low_level.model.X...
"""


def main(argv: Sequence[str] | None = None) -> int:
    return run(
        train,
        argv,
        USAGE,
        stage="low_level",
        expected=(ConfigError, EpisodeError, FileNotFoundError),
    )


if __name__ == "__main__":
    raise SystemExit(main())
