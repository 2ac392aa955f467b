"""The LAQ quality report: gathering pairs, inference, the report dict, the command line.

    python -m hlrp.laq.report laq_ckpt=results/laq/laq.ckpt data.shards=results/shards/index.json \\
        output_dir=results/laq_report [experiment=NAME] [laq_report.max_clips=64 ...]

Two failure modes users of LAPA report are invisible in the training loss: codes that collapse
(the VLA then predicts the same code sequence almost always) and decoders that predict frame
t+k from frame t's content while ignoring the codes. This report measures both on held-out
clips (videos of the ``data.val_split``; all clips, flagged ``heldout: false``, when there are
none), and whether the codes predict ground-truth actions where clips have them.
:func:`hlrp.laq.gate.check_gate` turns its numbers into the pass/fail verdict that
``hlrp.laq.label`` enforces (every check and its threshold: :mod:`hlrp.laq.gate`).

Other modules: :mod:`hlrp.laq.report_stats` (the sections' statistics), :mod:`hlrp.laq.gate`
(the gate), :mod:`hlrp.common.probes` (linear probes, NMI), :mod:`hlrp.laq.report_figures`
(figures), :mod:`hlrp.laq.report_html` (the HTML page, from ``templates/report.html.j2``).

Pairs. The shards are read once, in a seeded random order. Held-out clips (up to
``max_clips``) give ``pairs_per_clip`` distinct random pairs (t, t+k) each (all of a clip's
pairs when it has no more), k from ``data.offsets``;
clips of training videos (up to ``train_max_clips``) give ``train_pairs_per_clip`` pairs each,
which are encoded in batches as they are read (only their features are kept), to fit the action
probes on. Pairs are drawn with a generator seeded by (seed, clip key): the same clip always
gives the same pairs.

Contents of ``report.json`` (and of the dict :func:`build_report` returns):

* ``reconstruction``: PSNR of LAQ's prediction of frame t+k (clamped to [0, 1]) and of the
  copy-frame-t baseline, and their difference. ``*_db`` values are the PSNR of the mean MSE
  over all pairs (as training's ``val/psnr``); ``*_mean_per_pair_db`` average per-pair PSNRs,
  each capped at 60 dB.
* ``code_shuffle``: every pair is decoded again with the codes of another pair (a random
  derangement, seeded) with ``LAQ.decode_with_indices``; ``psnr_drop_db`` = own - shuffled
  PSNR. Codes that are collapsed or ignored by the decoder give ~0 dB.
* ``codebook``: code usage per position and overall, perplexity, used fraction, dead codes;
  distinct code sequences (the L codes of a pair), their perplexity and the most frequent ones.
* ``actions`` (clips with ``meta["has_actions"]``): the action of a pair is
  :func:`hlrp.data.actions.pair_action` (sum of the action rows t..t+k-1; unknown when any of
  them is missing or not finite). ``probe``: linear probes (:func:`hlrp.common.probes.
  linear_probe`) FITTED on the training-video pairs (ridge penalty picked by GroupKFold over
  training videos) and SCORED on the held-out pairs, from (a) ``codes``: the one-hot codes
  (L*K), (b) ``z_pre``: the pre-quantization latents (L*Dq), (c) ``pixels``: frame t alone
  average-pooled to 4x4x3 (what the scene alone predicts), (d) ``pixel_diff``: frame t+k - frame
  t average-pooled to 8x8x3 (a motion baseline without any learning). ``r2[name]`` is the mean
  held-out R² over the action dims that vary, ``r2_ci95[name]`` its bootstrap 95 % interval over
  held-out videos, ``r2_per_dim[name]`` per dim. ``margin[base]`` (base ``pixels`` or
  ``pixel_diff``): codes R² minus the base's (floored at 0), with a paired bootstrap interval
  (both scored on the same resampled held-out videos). ``nmi``: normalised mutual information on the
  held-out pairs between the code sequence and the actions cut into terciles per varying dim
  (``nmi``: all dims' bins combined; ``nmi_per_dim_mean``), with ``*_chance`` the same with the
  code labels permuted (compare with it, not with 0).
* ``gate``: ``{"passed", "failures", "thresholds", "checks"}`` from
  :func:`hlrp.laq.gate.gate_section`; ``warnings``: problems that do not fail the gate.

``report.html`` shows a summary table (every gate check with its threshold; green: passed, red:
failed, amber: a warning) beside the figures in ``figures/``. Every file is written atomically.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hlrp.common import checkpoint as checkpoint_io
from hlrp.common.cli import run
from hlrp.common.config import DataConfig, LAQReportConfig, RootConfig
from hlrp.common.io import file_sha256, stable_bucket, write_json, write_text
from hlrp.common.logging import get_logger
from hlrp.data.actions import pair_action
from hlrp.data.shards import all_pairs, decode_actions, decode_frames, iter_clips, resolve_shards
from hlrp.data.split import is_val_video
from hlrp.laq.export import load_laq
from hlrp.laq.gate import check_gate, gate_section
from hlrp.laq.model import LAQ, to_model_input
from hlrp.laq.report_figures import write_figures
from hlrp.laq.report_html import fmt, render_html
from hlrp.laq.report_stats import (
    DIFF_POOL,
    PIXEL_POOL,
    action_stats,
    code_shuffle_stats,
    codebook_stats,
    derangement,
    reconstruction_stats,
    soft_warnings,
)

__all__ = ["build_report", "check_gate", "gather_pairs", "main"]

log = get_logger("laq.report")


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
Encoder = Callable[[np.ndarray], dict[str, np.ndarray]]


def _draw_pairs(
    num_frames: int, offsets: Sequence[int], count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """``count`` distinct random pairs (t, t+k) of a clip; all of them when it has no more."""
    every = all_pairs(num_frames, offsets)
    if count >= len(every):
        return every
    return [every[i] for i in sorted(rng.choice(len(every), size=count, replace=False))]


class _Pairs:
    """Frame pairs gathered from the shards.

    Without ``encoder`` the frames are kept (uint8 at the shards' resolution). With one, pending
    frames are handed to it every ``chunk`` pairs and only the features it returns are kept.
    """

    def __init__(self, encoder: Encoder | None = None, chunk: int = 64) -> None:
        self.frames: list[np.ndarray] = []  # (2, H, W, 3) uint8 each (pending, with encoder)
        self.clip: list[str] = []
        self.video: list[str] = []
        self.t: list[int] = []
        self.k: list[int] = []
        self.action: list[np.ndarray | None] = []
        self.features: dict[str, list[np.ndarray]] = {}
        self.encoder, self.chunk = encoder, max(1, chunk)
        self.clips = 0
        self.clips_with_actions = 0

    def add_clip(
        self, sample: dict[str, Any], offsets: Sequence[int], count: int, seed: int
    ) -> None:
        meta = sample["meta"]
        key = sample["__key__"]
        rng = np.random.default_rng([seed, stable_bucket(key, 2**32)])
        pairs = _draw_pairs(int(meta["num_frames"]), offsets, count, rng)
        if not pairs:
            return
        actions = decode_actions(sample) if meta.get("has_actions") else None
        self.clips += 1
        self.clips_with_actions += actions is not None
        for t, u in pairs:
            self.frames.append(decode_frames(sample, (t, u)))
            self.clip.append(key)
            self.video.append(str(meta.get("video_id", key)))
            self.t.append(t)
            self.k.append(u - t)
            self.action.append(pair_action(actions, t, u - t))
        if self.encoder is not None and len(self.frames) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        """Encode the pending frames (with an encoder; a no-op without)."""
        if self.encoder is None or not self.frames:
            return
        for name, value in self.encoder(np.stack(self.frames)).items():
            self.features.setdefault(name, []).append(value)
        self.frames = []

    def feature(self, name: str) -> np.ndarray:
        return np.concatenate(self.features[name]) if name in self.features else np.zeros((0,))

    def __len__(self) -> int:
        return len(self.clip)


def gather_pairs(
    shards: str | os.PathLike | Sequence[str],
    data_cfg: DataConfig,
    cfg: LAQReportConfig,
    encoder: Encoder | None = None,
) -> tuple[_Pairs, _Pairs, bool, int]:
    """Read the shards once: (evaluated pairs, training pairs, heldout, clips read).

    Evaluated: pairs of up to ``cfg.max_clips`` held-out clips, or of the first clips when no
    clip is held out (``heldout`` False). Training: pairs of up to ``cfg.train_max_clips`` clips
    of training videos, handed to ``encoder`` in batches (none gathered without one). Shards
    are visited in a seeded random order; reading stops once both sides are full.
    """
    urls = resolve_shards(shards)
    np.random.default_rng(cfg.seed).shuffle(urls)
    offsets = list(data_cfg.offsets)
    val, every = _Pairs(), _Pairs()
    train = _Pairs(encoder, cfg.batch_size)
    train_cap = cfg.train_max_clips if encoder is not None else 0
    seen = 0
    for sample in iter_clips(urls):
        seen += 1
        vid = sample["meta"]["video_id"]
        if data_cfg.val_split > 0 and is_val_video(vid, data_cfg.val_split):
            if val.clips < cfg.max_clips:
                val.add_clip(sample, offsets, cfg.pairs_per_clip, cfg.seed)
            if len(every):
                every = _Pairs()  # a held-out clip exists: the fallback is not needed
        else:
            if train.clips < train_cap:
                train.add_clip(sample, offsets, cfg.train_pairs_per_clip, cfg.seed)
            if not val.clips and every.clips < cfg.max_clips:  # fallback: all clips
                every.add_clip(sample, offsets, cfg.pairs_per_clip, cfg.seed)
        eval_full = (val if data_cfg.val_split > 0 else every).clips >= cfg.max_clips
        if eval_full and train.clips >= train_cap:
            break
    train.flush()
    if val.clips:
        return val, train, True, seen
    return every, train, False, seen


# --------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------
def _device_and_autocast() -> tuple[torch.device, torch.dtype | None]:
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.device("cpu"), None


def _pixel_features(x: torch.Tensor) -> dict[str, np.ndarray]:
    """Baseline features of model inputs x (b, 2, C, S, S): pooled frame t, pooled difference."""
    return {
        "pixels": F.adaptive_avg_pool2d(x[:, 0].float(), PIXEL_POOL).flatten(1).cpu().numpy(),
        "pixel_diff": F.adaptive_avg_pool2d((x[:, 1] - x[:, 0]).float(), DIFF_POOL)
        .flatten(1)
        .cpu()
        .numpy(),
    }


def _encoder(model: LAQ, device: torch.device, amp: torch.dtype | None) -> Encoder:
    """Frames uint8 (b, 2, H, W, 3) -> probe features (codes, z_pre, pixels, pixel_diff)."""
    size = model.cfg.image_size

    @torch.no_grad()
    def encode(frames: np.ndarray) -> dict[str, np.ndarray]:
        x = to_model_input(torch.from_numpy(frames), size).to(device)  # (b, 2, C, S, S)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            indices, z_pre = model.encode_actions(x)  # (b, L), (b, L, Dq)
        return {
            "indices": indices.long().cpu().numpy(),
            "z_pre": z_pre.float().cpu().numpy(),
            **_pixel_features(x),
        }

    return encode


@torch.no_grad()
def _infer(
    model: LAQ,
    pairs: _Pairs,
    batch_size: int,
    partner: np.ndarray,
    keep: set[int],
    device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, Any]:
    """Run LAQ over all pairs: per-pair MSEs, codes, z_pre, pixel features, example images."""
    size = model.cfg.image_size
    n, bs = len(pairs), max(1, batch_size)

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    def inputs(sel: range) -> torch.Tensor:
        frames = torch.from_numpy(np.stack([pairs.frames[i] for i in sel]))  # (b, 2, H, W, 3)
        return to_model_input(frames, size).to(device)  # (b, 2, C, S, S)

    mse_own, mse_copy, idx_all, z_all = [], [], [], []
    pix: dict[str, list[np.ndarray]] = {}
    examples: dict[int, dict[str, torch.Tensor]] = {}
    for i0 in range(0, n, bs):
        sel = range(i0, min(n, i0 + bs))
        x = inputs(sel)
        with autocast():
            out = model(x)
        recon = out.recon.float().clamp(0, 1)  # (b, C, S, S)
        mse_own.append(((recon - x[:, 1]) ** 2).flatten(1).mean(1).cpu())
        mse_copy.append(((x[:, 0] - x[:, 1]) ** 2).flatten(1).mean(1).cpu())
        idx_all.append(out.indices.long().cpu())  # (b, L)
        z_all.append(out.z_pre.float().cpu())  # (b, L, Dq)
        for name, value in _pixel_features(x).items():
            pix.setdefault(name, []).append(value)
        for j, i in enumerate(sel):
            if i in keep:
                examples[i] = {"t": x[j, 0], "u": x[j, 1], "recon": recon[j]}
    indices = torch.cat(idx_all)  # (n, L)

    mse_shuf = []
    if n >= 2:
        for i0 in range(0, n, bs):
            sel = range(i0, min(n, i0 + bs))
            x = inputs(sel)
            other = indices[partner[i0 : i0 + len(sel)]].to(device)  # (b, L)
            with autocast():
                recon = model.decode_with_indices(x[:, 0], other).float().clamp(0, 1)
            mse_shuf.append(((recon - x[:, 1]) ** 2).flatten(1).mean(1).cpu())
            for j, i in enumerate(sel):
                if i in keep:
                    examples[i]["shuffled"] = recon[j]
    images = {
        i: {name: img.permute(1, 2, 0).float().cpu().numpy() for name, img in ex.items()}
        for i, ex in examples.items()
    }  # (S, S, C) in [0, 1]
    return {
        "mse_own": torch.cat(mse_own).double().numpy(),
        "mse_copy": torch.cat(mse_copy).double().numpy(),
        "mse_shuffled": torch.cat(mse_shuf).double().numpy() if mse_shuf else None,
        "indices": indices.numpy(),
        "z_pre": torch.cat(z_all).numpy(),
        "pixels": np.concatenate(pix["pixels"]),
        "pixel_diff": np.concatenate(pix["pixel_diff"]),
        "examples": images,
        "device": f"{device.type}" + (" (bf16 autocast)" if amp is not None else " (fp32)"),
    }


def _checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """Hashes and ``global_step`` of an exported laq.ckpt (tensors memory-mapped)."""
    payload = checkpoint_io.load(path, mmap=True)
    return {
        "laq_checkpoint": str(Path(path).resolve()),
        "laq_sha256": file_sha256(path),  # labelling checks it: a report of other weights is stale
        "config_hash": payload.get("config_hash"),
        "resume_hash": payload.get("resume_hash"),
        "global_step": payload.get("global_step"),
    }


def _training_config_warnings(ckpt: str | os.PathLike, data_cfg: DataConfig) -> list[str]:
    """Warn when the config.yaml beside the checkpoint used another val split or offsets.

    Its ``laq.data`` section is read (``data`` in configs written before the stage namespaces).
    A config.yaml that cannot be read, or has no ``data.val_split``, is a warning too (the
    held-out split could not be checked); no config.yaml at all is not (an exported model).
    """
    path = Path(ckpt).parent / "config.yaml"
    if not path.is_file():
        return []
    unchecked = "the held-out split could not be checked against the LAQ's training"
    try:
        conf = OmegaConf.load(path)
        data = None
        if isinstance(conf, DictConfig):
            data = OmegaConf.select(conf, "laq.data", default=None) or conf.get("data")
        data = OmegaConf.to_container(data, resolve=True) if data is not None else None
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as e:
        return [
            f"could not read the LAQ's training config {path} ({type(e).__name__}: {e}): "
            f"{unchecked}"
        ]
    if not isinstance(data, dict) or data.get("val_split") is None:
        return [f"the LAQ's training config {path} has no laq.data.val_split: {unchecked}"]
    warnings = []
    split, offsets = float(data["val_split"]), list(data.get("offsets") or [])
    if split != float(data_cfg.val_split):
        warnings.append(
            f"the LAQ was trained with data.val_split={split} but the report uses "
            f"{data_cfg.val_split}: its 'held-out' clips may include training clips"
        )
    if offsets and offsets != list(data_cfg.offsets):
        warnings.append(
            f"the LAQ was trained with data.offsets={offsets}, the report uses "
            f"{list(data_cfg.offsets)}"
        )
    return warnings


def _clean(obj: Any) -> Any:
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def _pick_examples(clips: list[str], num: int, rng: np.random.Generator) -> list[int]:
    """Up to ``num`` pair indices, from as many different clips as possible."""
    order = rng.permutation(len(clips)).tolist()
    picked, seen = [], set()
    for i in order:
        if clips[i] not in seen:
            picked.append(i)
            seen.add(clips[i])
    chosen = set(picked)
    rest = [i for i in order if i not in chosen]
    return (picked + rest)[:num]


def build_report(
    model: LAQ,
    shards: str | os.PathLike | Sequence[str],
    data_cfg: DataConfig,
    cfg: LAQReportConfig,
    out_dir: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on held-out pairs of ``shards``; write report.json, report.html, figures.

    ``model``: an LAQ, or anything with its interface (``cfg.image_size``,
    ``quantizer.codebook_size``, ``forward`` -> ``recon``/``indices``/``z_pre``,
    ``encode_actions``, ``decode_with_indices``). ``checkpoint``: the laq.ckpt the model came
    from, recorded with its ``config_hash`` (and checked against the ``config.yaml`` beside
    it). The model is moved to CUDA when available and left in the mode it came in. Returns the
    report (as written to report.json).
    """
    start = time.time()
    out_dir = Path(out_dir)
    warnings: list[str] = []
    if checkpoint is not None:
        warnings += _training_config_warnings(checkpoint, data_cfg)
    device, amp = _device_and_autocast()
    was_training = model.training
    model.to(device).eval()
    try:
        pairs, train, heldout, seen = gather_pairs(
            shards, data_cfg, cfg, _encoder(model, device, amp)
        )
        n = len(pairs)
        log.info(
            "%d pairs from %d %s clips, %d probe-training pairs from %d clips (%d clips read)",
            n,
            pairs.clips,
            "held-out" if heldout else "(all, none held out)",
            len(train),
            train.clips,
            seen,
        )
        if not heldout:
            warnings.append(
                f"no clip of the shards is in the validation split (val_split="
                f"{data_cfg.val_split}): evaluated on all clips, which the LAQ may have been "
                "trained on"
            )
        report: dict[str, Any] = {}
        if checkpoint is not None:
            report.update(_checkpoint_info(checkpoint))
        else:
            report.update(laq_checkpoint=None, laq_sha256=None, config_hash=None, global_step=None)
        size = int(model.quantizer.codebook_size)
        report["model"] = {
            k: getattr(model.cfg, k)
            for k in (
                "quantizer",
                "codebook_size",
                "code_seq_len",
                "quant_dim",
                "image_size",
                "patch_size",
                "dim",
            )
        }
        report["data"] = {
            "shards": str(shards) if not isinstance(shards, list | tuple) else list(shards),
            "offsets": list(data_cfg.offsets),
            "val_split": data_cfg.val_split,
            "heldout": heldout,
            "clips": pairs.clips,
            "clips_read": seen,
            "clips_with_actions": pairs.clips_with_actions,
            "pairs": n,
            "pairs_per_clip": cfg.pairs_per_clip,
            "max_clips": cfg.max_clips,
            "train_clips": train.clips,
            "train_pairs": len(train),
            "train_pairs_per_clip": cfg.train_pairs_per_clip,
            "train_max_clips": cfg.train_max_clips,
            "seed": cfg.seed,
        }
        report["settings"] = asdict(cfg)
        figures: dict[str, str] = {}
        if n == 0:
            warnings.append("no frame pairs: the shards hold no clip longer than the offsets")
            report["device"] = None
        else:
            rng = np.random.default_rng(cfg.seed)
            partner = derangement(n, rng) if n >= 2 else np.zeros(1, dtype=np.int64)
            keep = _pick_examples(pairs.clip, cfg.num_examples, rng)
            res = _infer(model, pairs, cfg.batch_size, partner, set(keep), device, amp)
            report["device"] = res["device"]
            report["reconstruction"] = reconstruction_stats(res, np.array(pairs.k))
            report["code_shuffle"] = code_shuffle_stats(res, partner)
            report["codebook"] = codebook_stats(res["indices"], size)
            report["actions"] = action_stats(pairs, res, train, heldout, cfg, size)
            figures = write_figures(report, res, pairs, keep, partner, out_dir / "figures")
    finally:
        model.train(was_training)
    report["figures"] = figures
    report["warnings"] = warnings + soft_warnings(report)
    for w in report["warnings"]:
        log.warning("%s", w)
    report["seconds"] = round(time.time() - start, 2)
    report["gate"] = gate_section(report, cfg)
    report = _clean(report)
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.html", render_html(report))
    return report


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
USAGE = """
usage: python -m hlrp.laq.report laq_ckpt=PATH/laq.ckpt data.shards=INDEX.json output_dir=DIR \\
           [experiment=NAME] [laq_report.max_clips=N ...]
Evaluates a trained LAQ on held-out clips (data.val_split videos) and writes
output_dir/report.json, report.html and figures/. The JSON's "gate" (code collapse, codes the
decoder ignores, optionally codes that do not predict actions) is what hlrp.laq.label checks
before labelling. Exit code 0 whenever the report was written, also when the gate failed.
"""


def _report_main(cfg: RootConfig) -> int:
    """The only place that reads the root config; everything below gets typed sub-configs."""
    stage = cfg.laq
    given = {
        "laq_ckpt": cfg.laq_ckpt,
        "data.shards": stage.data.shards,
        "output_dir": cfg.output_dir,
    }
    missing = [k for k, v in given.items() if not v]
    if missing:
        log.error("missing required settings: %s", ", ".join(f"{k}=..." for k in missing))
        return 2
    model = load_laq(cfg.laq_ckpt)
    out = Path(cfg.output_dir)
    report = build_report(
        model, stage.data.shards, stage.data, stage.report, out, checkpoint=cfg.laq_ckpt
    )
    rec, sh, cb = (
        report.get("reconstruction", {}),
        report.get("code_shuffle", {}),
        report.get("codebook", {}),
    )
    log.info(
        "PSNR %s dB (copy baseline %s dB), drop with other codes %s dB, perplexity %s/%s",
        fmt(rec.get("psnr_db")),
        fmt(rec.get("psnr_copy_db")),
        fmt(sh.get("psnr_drop_db")),
        fmt(cb.get("perplexity")),
        fmt(cb.get("size")),
    )
    r2 = (report.get("actions", {}).get("probe") or {}).get("r2") or {}
    if any(v is not None for v in r2.values()):
        log.info(
            "held-out action probe R²: codes %s, z_pre %s, frame t %s, pixel diff %s",
            *(fmt(r2.get(k)) for k in ("codes", "z_pre", "pixels", "pixel_diff")),
        )
    if report["gate"]["passed"]:
        log.info("LAQ REPORT GATE PASSED: %s", out / "report.html")
    else:
        bar = "=" * 78
        log.error("%s", bar)
        log.error(
            "LAQ REPORT GATE FAILED - labelling will refuse this LAQ "
            "(label.allow_failed_gate=true overrides)"
        )
        for f in report["gate"]["failures"]:
            log.error("  * %s", f)
        log.error("see %s", out / "report.html")
        log.error("%s", bar)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hlrp.laq.report`` (see USAGE)."""
    return run(_report_main, argv, USAGE, stage="laq")


if __name__ == "__main__":
    raise SystemExit(main())
