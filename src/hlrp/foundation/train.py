"""Stage 2 training: the latent-action VLA on the labelled shards, with Lightning Fabric.

    python -m hlrp.foundation.train experiment=vla_demo data.labels=results/labels/index.json \\
        laq_ckpt=results/laq/laq.ckpt output_dir=results/foundation

One explicit loop (Fabric: one device, DDP or FSDP over nodes x GPUs, bf16-mixed on GPUs):
gradient accumulation, gradient clipping, warmup + cosine, gradient checkpointing, an optional
frozen vision tower and LoRA adapters (peft) for single-GPU runs.

Outputs in ``output_dir``:

* ``model/``: the trained model (``save_pretrained`` + processor + ``hlrp_foundation.json``),
  what the report and stage 3 load (:mod:`hlrp.foundation.export`);
* ``checkpoints/last.ckpt``: the full state (model, optimizer, scheduler, each rank's stream
  position and RNG) as one file gathered to rank 0, written atomically by
  :mod:`hlrp.common.checkpoint`; under FSDP ``checkpoints/last/`` instead, a sharded folder
  (``torch.distributed.checkpoint``: each rank writes its own shards) put in place
  atomically. A killed run started again continues exactly; a finished one is moved to
  ``previous/`` (or continued when ``max_steps`` grew), as in stage 1;
* ``logs/metrics.csv`` (and ``wandb/``, offline by default), ``plots/training.png``,
  ``metrics.json``, ``config.yaml``.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hlrp.common import checkpoint
from hlrp.common.cli import run
from hlrp.common.config import RootConfig, result_hash, to_yaml
from hlrp.common.io import atomic_open, write_json, write_text
from hlrp.common.logging import get_logger
from hlrp.common.optim import lr_lambda, peak_flops, resolve_precision, training_flops_per_token
from hlrp.common.plots import finish_axis, save_png
from hlrp.foundation import TRAIN_RESULT_KEYS
from hlrp.foundation.data import Collator, LabelStream, batches, held_out, open_labels, prefetch
from hlrp.foundation.families import resolve_backbone
from hlrp.foundation.model import LatentActionVLA, adapt_backbone

log = get_logger("foundation.train")

CSV_FIELDS = [
    "step",
    "train/loss",
    "train/token_acc",
    "train/seq_acc",
    "lr",
    "tokens_per_s",
    "samples_per_s",
    "mfu",
    "val/loss",
    "val/token_acc",
    "val/seq_acc",
]


def resume_hash(cfg: RootConfig, labels_key: str) -> str:
    """What a checkpoint must match to be resumed: the result keys less ``max_steps`` and the
    labels it learns from."""
    return f"{result_hash(cfg, *TRAIN_RESULT_KEYS, resume=True)[:12]}-{labels_key[:8]}"


def decoder_layer_classes(model: torch.nn.Module) -> set[type]:
    """The classes FSDP wraps one by one: the backbone's ``_no_split_modules`` (its decoder
    and vision encoder layers)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(f"{type(model).__name__} names no layer classes to wrap with FSDP")
    return found


def make_strategy(name: str, backbone: torch.nn.Module, precision: str, world: int):
    """Fabric's strategy. ``fsdp``: FSDP2 (``fully_shard``) over all processes, each decoder
    and vision layer its own unit, then the root; bf16-mixed as FSDP2's mixed-precision policy
    (bf16 compute and gathers, fp32 master weights and gradient reduction). Works on GPUs
    (NCCL) and on CPU processes (gloo), which the tests use."""
    if name != "fsdp":
        return name
    from lightning.fabric.strategies import ModelParallelStrategy

    layers = tuple(decoder_layer_classes(backbone))

    def parallelize(model: torch.nn.Module, mesh) -> torch.nn.Module:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        dp = mesh["data_parallel"]
        mp = MixedPrecisionPolicy()
        if precision == "bf16-mixed":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for module in model.modules():
            if isinstance(module, layers):
                fully_shard(module, mesh=dp, mp_policy=mp)
        fully_shard(model, mesh=dp, mp_policy=mp)
        return model

    return ModelParallelStrategy(parallelize, data_parallel_size=world, tensor_parallel_size=1)


def prepare_model(vla: LatentActionVLA, cfg: RootConfig) -> dict[str, int]:
    """Freezing, LoRA and gradient checkpointing as the config asks; parameter counts."""
    m = cfg.foundation.model
    if m.lora_rank > 0 and cfg.foundation.cluster.strategy == "fsdp":
        raise ValueError("model.lora_rank > 0 is for single-GPU or DDP runs, not FSDP")
    vla.backbone = adapt_backbone(
        vla.backbone,
        freeze_vision=m.freeze_vision,
        lora_rank=m.lora_rank,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        gradient_checkpointing=m.gradient_checkpointing,
        train_token_ids=vla.meta.action_token_ids,
        modules_to_save=("lm_head",),
    )
    total = sum(p.numel() for p in vla.parameters())
    trainable = sum(p.numel() for p in vla.parameters() if p.requires_grad)
    return {"parameters": total, "trainable": trainable}


def flops_per_token(vla: LatentActionVLA, seq_len: int) -> float:
    text = vla.backbone.config.get_text_config()
    emb = vla.backbone.get_input_embeddings().weight.numel()
    n = sum(p.numel() for p in vla.parameters()) - emb
    return training_flops_per_token(n, text.num_hidden_layers, text.hidden_size, seq_len)


# --------------------------------------------------------------------------------------
# checkpoints: one file gathered to rank 0, or under FSDP a sharded folder
# --------------------------------------------------------------------------------------
def _state_dict_options(full: bool, **kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full, **kw)


def _wrapped(model):
    """The strategy's module (DDP / FSDP wrapper) under Fabric's: what the torch.distributed
    state-dict functions understand (they drop the wrappers' prefixes)."""
    return getattr(model, "_forward_module", model)


def checkpoint_path(out: Path, strategy: str) -> Path:
    """``checkpoints/last`` (a sharded folder) under FSDP, else ``checkpoints/last.ckpt``."""
    return out / "checkpoints" / ("last" if strategy == "fsdp" else "last.ckpt")


def save_training_state(fabric, path: Path, model, opt, sched, step, stream_state, rhash) -> None:
    """Everything a resumed run needs. A file gathered to rank 0 (one device, DDP), or under
    FSDP a sharded folder: each rank writes its own shards of the model and the optimizer
    with ``torch.distributed.checkpoint`` (no rank holds the full state), rank 0 adds the
    rest (:data:`hlrp.common.checkpoint.SHARDED_META`) and puts the folder in place."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    sharded = path.suffix != ".ckpt"
    distributed = fabric.world_size > 1
    msd, osd = get_state_dict(_wrapped(model), opt, options=_state_dict_options(not sharded))
    pos = torch.tensor(stream_state, dtype=torch.long, device=fabric.device)
    positions = fabric.all_gather(pos).reshape(-1, 2).cpu() if distributed else pos[None].cpu()
    rng = checkpoint.gather_rng_states()
    rest = {
        "scheduler": sched.state_dict(),
        "global_step": int(step),
        "stream_positions": positions,
        "rng_states": rng,
        checkpoint.META_KEY: checkpoint.stamp(rhash, fabric.world_size),
    }
    if not sharded:
        if fabric.global_rank == 0:
            checkpoint.save({"model": msd, "optimizer": osd, **rest}, path)
        fabric.barrier()
        return
    tmp = path.parent / f".{path.name}.tmp"
    if fabric.global_rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    fabric.barrier()
    dcp.save({"model": msd, "optimizer": osd}, checkpoint_id=str(tmp))
    fabric.barrier()
    if fabric.global_rank == 0:
        checkpoint.save(rest, tmp / checkpoint.SHARDED_META)
        checkpoint.commit_folder(tmp, path)
    fabric.barrier()


def load_training_state(fabric, path: str, model, opt, sched) -> tuple[int, tuple[int, int]]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    sharded = Path(path).is_dir()
    if sharded:
        msd, osd = get_state_dict(_wrapped(model), opt, options=_state_dict_options(False))
        state = {"model": msd, "optimizer": osd}
        dcp.load(state, checkpoint_id=str(path))  # into this rank's shards
        state.update(checkpoint.load(Path(path) / checkpoint.SHARDED_META))
    else:
        state = checkpoint.load(path)
    set_state_dict(
        _wrapped(model),
        opt,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=_state_dict_options(not sharded),
    )
    sched.load_state_dict(state["scheduler"])
    rng = checkpoint.rng_state_for_rank(state.get("rng_states"), fabric.global_rank)
    if rng:
        checkpoint.set_rng_state(rng)
    pos = state["stream_positions"][fabric.global_rank].tolist()
    return int(state["global_step"]), (int(pos[0]), int(pos[1]))


def export_model(fabric, vla: LatentActionVLA, model, folder: Path, step: int) -> None:
    """The trained model as ``save_pretrained`` files (LoRA merged), atomically (rank 0)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    sd = None
    # FSDP2 holds DTensors even on one device: gather them to plain tensors like DDP's ranks
    if fabric.world_size > 1 or any(isinstance(p, DTensor) for p in vla.parameters()):
        sd = get_model_state_dict(_wrapped(model), options=_state_dict_options(True))
    if fabric.global_rank == 0:
        vla.meta.global_step = int(step)
        backbone = vla.backbone
        if sd is not None:
            prefix = "backbone."
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
        if hasattr(backbone, "merge_and_unload"):  # LoRA: fold the adapters into the weights
            if sd is not None:
                backbone.load_state_dict(sd)
                sd = None
            vla.backbone = backbone.merge_and_unload()
        tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=folder.parent))
        try:
            vla.save(tmp, state_dict=sd)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            vla.backbone = backbone
    fabric.barrier()


# --------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------
class MetricsLog:
    """``logs/metrics.csv`` (a resumed run drops the rows past its checkpoint) and wandb."""

    def __init__(self, out: Path, cfg: RootConfig, rhash: str, resume_step: int, rank: int):
        self.rank = rank
        self.path = out / "logs" / "metrics.csv"
        self.wandb = None
        if rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if self.path.is_file() and resume_step > 0:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with atomic_open(self.path, "w") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        mode = cfg.foundation.cluster.wandb_mode
        if mode != "disabled":
            mode = os.environ.get("WANDB_MODE", mode)
        if mode != "disabled":
            try:
                import wandb

                self.wandb = wandb.init(
                    project="hlrp",
                    name=f"foundation-{cfg.name}",
                    dir=str(out),
                    mode=mode,
                    config=asdict(cfg),
                    **(
                        {"id": f"foundation-{rhash}", "resume": "allow"} if mode == "online" else {}
                    ),
                )
            except ImportError:
                log.warning("wandb is not installed: logging to CSV only")

    def write(self, step: int, values: dict[str, float]) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow({"step": step, **values})
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def save_training_plot(metrics_csv: Path, out_png: Path) -> None:
    """Loss, accuracy and throughput curves, for people rather than parsers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float]]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                if k != "step" and v not in ("", None):
                    series.setdefault(k, []).append((int(row["step"]), float(v)))
    panels = [
        (("train/loss", "val/loss"), "code cross-entropy", True),
        (("train/token_acc", "val/token_acc"), "per-token accuracy", False),
        (("train/seq_acc", "val/seq_acc"), "full-sequence accuracy", False),
        (("samples_per_s",), "samples / s", False),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for ax, (keys, title, logy) in zip(axes, panels):
        for key in keys:
            if key in series:
                xs, ys = zip(*sorted(series[key]))
                ax.plot(xs, ys, "o-" if key.startswith("val") else "-", markersize=3, label=key)
        finish_axis(ax, title, logy)
    save_png(fig, out_png)


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------
def build_fabric(cfg: RootConfig, backbone: torch.nn.Module):
    import lightning as L

    cl = cfg.foundation.cluster
    precision = resolve_precision(cfg.foundation.training.precision, cl.accelerator)
    return L.Fabric(
        accelerator=cl.accelerator,
        devices=cl.devices,
        num_nodes=cl.num_nodes,
        strategy=make_strategy(cl.strategy, backbone, precision, cl.devices * cl.num_nodes),
        # FSDP2 applies bf16 itself (its mixed-precision policy), without autocast
        precision="32-true" if cl.strategy == "fsdp" else precision,
    )


def install_stop_handlers() -> dict[str, Any]:
    """SIGTERM (scancel, a time limit) and SIGUSR1 (Slurm's warning before the limit) ask the
    loop to save a checkpoint after the current step and exit with 143."""
    import signal
    import threading

    state: dict[str, Any] = {"signal": None}
    if threading.current_thread() is threading.main_thread():

        def handler(signum, frame) -> None:
            state["signal"] = signal.Signals(signum).name

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, handler)
    return state


def stop_requested(fabric, state: dict[str, Any]) -> bool:
    """Whether any rank got a stop signal (all ranks must agree to save together)."""
    flag = torch.tensor([1.0 if state["signal"] else 0.0], device=fabric.device)
    if fabric.world_size > 1:
        flag = fabric.all_reduce(flag, reduce_op="max")
    if flag.item() and not state["signal"]:
        state["signal"] = "another rank's"
    return bool(flag.item())


@torch.no_grad()
def validate(fabric, model, val_batches) -> dict[str, float]:
    """Teacher-forced loss and accuracies on the held-out pairs (every rank its share)."""
    model.eval()
    sums = torch.zeros(4, device=fabric.device, dtype=torch.float64)
    for batch in val_batches:
        batch = {k: v.to(fabric.device) for k, v in batch.items()}
        loss, stats = model.loss(batch)
        n = batch["codes"].shape[0]
        sums += torch.tensor(
            [loss.item() * n, stats["token_acc"].item() * n, stats["seq_acc"].item() * n, n],
            device=fabric.device,
            dtype=torch.float64,
        )
    model.train()
    if fabric.world_size > 1:
        sums = fabric.all_reduce(sums, reduce_op="sum")
    n = max(1.0, float(sums[3]))
    return {"val/loss": sums[0] / n, "val/token_acc": sums[1] / n, "val/seq_acc": sums[2] / n}


def train(cfg: RootConfig) -> dict[str, Any]:
    st = cfg.foundation
    t, cl = st.training, st.cluster
    if not (cfg.output_dir and st.data.labels and cfg.laq_ckpt):
        raise ValueError(
            "train_foundation needs data.labels=PATH (labels index.json), laq_ckpt=PATH "
            "(the LAQ that made them) and output_dir=PATH"
        )
    if t.max_steps <= 0:
        raise ValueError("foundation.training.max_steps must be > 0 (the stream has no epochs)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels = open_labels(st.data.labels, cfg.laq_ckpt)
    rhash = resume_hash(cfg, labels.labels_key)
    world = cl.devices * cl.num_nodes
    total = t.max_steps

    plan = checkpoint.prepare_run(
        out,
        rhash,
        world,
        total,
        # either format: a run may switch between DDP and FSDP (same number of processes)
        candidates=("checkpoints/last.ckpt", "checkpoints/last"),
        keep=("backbones",),
    )
    log.info("%s", plan.reason)
    torch.manual_seed(cfg.seed)
    backbone = resolve_backbone(st.model.backbone, out / "backbones", st.model.image_size)
    vla = LatentActionVLA.from_backbone(
        backbone,
        labels.codebook_size,
        labels.code_seq_len,
        # frozen weights stay in model.dtype under mixed precision (fp32 compute: fp32);
        # the ones that train become fp32 master weights (prepare_model)
        dtype=(
            st.model.dtype if "16" in resolve_precision(t.precision, cl.accelerator) else "float32"
        ),
        attn_implementation=st.model.attn_implementation,
        laq_hash=labels.laq_hash,
        labels_key=labels.labels_key,
        max_text_tokens=st.model.max_text_tokens,
    )
    counts = prepare_model(vla, cfg)
    fabric = build_fabric(cfg, vla.backbone)
    fabric.launch()
    fabric.seed_everything(cfg.seed + fabric.global_rank, verbose=False)
    rank = fabric.global_rank
    if rank == 0:
        write_text(out / "config.yaml", to_yaml(cfg))
        log.info(
            "strategy %s, precision %s, on %s",
            cl.strategy,
            resolve_precision(t.precision, cl.accelerator),
            fabric.device,
        )
    log.info(
        "%s backbone %s: %.2f M parameters (%.2f M trainable), vocabulary %d x %d, %d steps, "
        "rank %d of %d",
        vla.family.name,
        st.model.backbone,
        counts["parameters"] / 1e6,
        counts["trainable"] / 1e6,
        labels.codebook_size,
        labels.code_seq_len,
        total,
        rank,
        fabric.world_size,
    )

    model = fabric.setup_module(vla)
    model.mark_forward_method("loss")  # DDP / FSDP hooks and autocast wrap loss() too
    params = [p for p in model.parameters() if p.requires_grad]
    o = t.optimizer
    opt = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )
    opt = fabric.setup_optimizers(opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t, total))

    step, stream_state = 0, (0, 0)
    if plan.resume:
        step, stream_state = load_training_state(fabric, plan.resume, model, opt, sched)
        log.info("resumed at step %d (stream segment %d, pair %d)", step, *stream_state)

    collate = Collator.for_model(vla, append_codes=True)
    stream = LabelStream(labels.shards, rank, cfg.seed, st.data.val_split, st.data.mix_shards)
    train_iter = prefetch(
        batches(stream, collate, st.data.batch_size, stream_state, st.data.num_workers)
    )
    val_pairs = held_out(labels.shards, st.data.val_split, st.data.max_val_pairs)
    share = len(val_pairs) // fabric.world_size
    mine = val_pairs[rank * share : (rank + 1) * share]
    bs = st.data.batch_size
    val_batches = [collate(mine[i : i + bs]) for i in range(0, len(mine), bs)]
    if t.validation.every_n_steps > 0 and not val_batches:
        log.warning("no held-out pairs (data.val_split=%s): no validation", st.data.val_split)

    mlog = MetricsLog(out, cfg, rhash, step, rank)
    peak = peak_flops(fabric.device) if fabric.device.type == "cuda" else None
    kill_at = int(os.environ.get("HLRP_FAULT_KILL_AT_STEP", "-1"))
    last_ckpt = checkpoint_path(out, cl.strategy)
    interactive = sys.stderr.isatty() and rank == 0
    bar = None
    if interactive:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=step, desc="train_foundation", unit="step")
    stop = install_stop_handlers()
    window = {"loss": 0.0, "token_acc": 0.0, "seq_acc": 0.0, "n": 0, "tokens": 0, "samples": 0}
    t_window = time.perf_counter()
    t_start, start_step = t_window, step
    model.train()
    last: dict[str, float] = {}
    try:
        while step < total:
            if step >= kill_at >= 0:
                import signal

                log.warning("HLRP_FAULT_KILL_AT_STEP=%d: killing myself", kill_at)
                os.kill(os.getpid(), signal.SIGKILL)
            for micro in range(t.accumulate_grad_batches):
                batch, stream_state = next(train_iter)
                batch = {k: v.to(fabric.device) for k, v in batch.items()}
                last_micro = micro == t.accumulate_grad_batches - 1
                with fabric.no_backward_sync(
                    model, enabled=not last_micro and fabric.world_size > 1
                ):
                    loss, stats = model.loss(batch)
                    fabric.backward(loss / t.accumulate_grad_batches)
                window["loss"] += loss.item()
                window["token_acc"] += stats["token_acc"].item()
                window["seq_acc"] += stats["seq_acc"].item()
                window["n"] += 1
                window["tokens"] += int(batch["attention_mask"].sum())
                window["samples"] += batch["codes"].shape[0]
            if t.grad_clip:
                fabric.clip_gradients(model, opt, max_norm=t.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            if bar is not None:
                bar.update(1)

            if step % t.log_every_n_steps == 0 or step == total:
                dt = time.perf_counter() - t_window
                w = torch.tensor(
                    [window[k] for k in ("loss", "token_acc", "seq_acc", "n", "tokens", "samples")],
                    dtype=torch.float64,
                    device=fabric.device,
                )
                if fabric.world_size > 1:
                    w = fabric.all_reduce(w, reduce_op="sum")
                n = max(1.0, float(w[3]))
                tokens_s, samples_s = float(w[4]) / dt, float(w[5]) / dt
                seq_len = float(w[4]) / max(1.0, float(w[5]))
                mfu = (
                    tokens_s * flops_per_token(vla, int(seq_len)) / (peak * fabric.world_size)
                    if peak
                    else float("nan")
                )
                last = {
                    "train/loss": float(w[0]) / n,
                    "train/token_acc": float(w[1]) / n,
                    "train/seq_acc": float(w[2]) / n,
                    "lr": sched.get_last_lr()[0],
                    "tokens_per_s": tokens_s,
                    "samples_per_s": samples_s,
                    "mfu": mfu,
                }
                if rank == 0:
                    rate = (step - start_step) / max(1e-9, time.perf_counter() - t_start)
                    eta = (total - step) / max(rate, 1e-9) / 60
                    log.info(
                        "step %d/%d | loss %.4f | token acc %.3f | seq acc %.3f | %.0f tok/s | "
                        "%.1f samples/s | MFU %s | ETA %.1f min",
                        step,
                        total,
                        last["train/loss"],
                        last["train/token_acc"],
                        last["train/seq_acc"],
                        tokens_s,
                        samples_s,
                        "n/a" if math.isnan(mfu) else f"{100 * mfu:.1f}%",
                        eta,
                    )
                mlog.write(step, last)
                window = dict.fromkeys(window, 0)
                t_window = time.perf_counter()

            every = t.validation.every_n_steps
            if val_batches and every > 0 and (step % every == 0 or step == total):
                v = {k: float(x) for k, x in validate(fabric, model, val_batches).items()}
                last.update(v)
                mlog.write(step, v)
                if rank == 0:
                    log.info(
                        "step %d: held-out loss %.4f | token acc %.3f | seq acc %.3f",
                        step,
                        v["val/loss"],
                        v["val/token_acc"],
                        v["val/seq_acc"],
                    )
            stopping = stop_requested(fabric, stop)
            if step % t.checkpoint_every_n_steps == 0 or step == total or stopping:
                save_training_state(fabric, last_ckpt, model, opt, sched, step, stream_state, rhash)
            if stopping:
                log.error(
                    "signal %s: saved step %d to %s; the next run resumes from there",
                    stop["signal"],
                    step,
                    last_ckpt,
                )
                raise SystemExit(143)
    finally:  # no data thread may outlive the loop (see data.prefetch)
        train_iter.close()
    if bar is not None:
        bar.close()

    export_model(fabric, vla, model, out / "model", step)
    mlog.close()
    if rank == 0:
        summary = {"global_step": step, "resume_hash": rhash, **counts, **last}
        write_json(out / "metrics.json", summary)
        save_training_plot(mlog.path, out / "plots" / "training.png")
        checkpoint.mark_finished(out, rhash, step)
        log.info("wrote %s (step %d)", out / "model", step)
    return last


USAGE = """
usage: python -m hlrp.foundation.train experiment=NAME data.labels=LABELS/index.json
                                       laq_ckpt=LAQ.ckpt output_dir=DIR [key=value ...]

Trains the foundation VLA to predict the latent action codes of the labelled shards. Running
the same command again resumes an unfinished run from output_dir/checkpoints/last.ckpt
(FSDP: the sharded folder output_dir/checkpoints/last/),
continues a finished one whose max_steps was raised, and otherwise trains anew (the finished
run moves to output_dir/previous/). Short keys: data.X, model.X, training.X, cluster.X mean
foundation.data.X ...
"""


def main(argv: Sequence[str] | None = None) -> int:
    def _main(cfg: RootConfig) -> int:
        train(cfg)
        return 0

    return run(_main, argv, USAGE, stage="foundation")


if __name__ == "__main__":
    raise SystemExit(main())
