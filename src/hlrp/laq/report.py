"""The LAQ quality report, and the gate it puts before stage 2 (latent-action labelling).

    python -m hlrp.laq.report laq=results/laq/laq.ckpt data.shards=results/shards/index.json \\
        output_dir=results/laq_report [experiment=NAME] [laq_report.max_clips=64 ...]

Two failure modes users of LAPA report are invisible in the training loss: codes that collapse
(the VLA then predicts the same code sequence almost always) and decoders that predict frame
t+k from frame t's content while ignoring the codes. This report measures both on held-out
clips (videos of the ``data.val_split``; all clips, flagged ``heldout: false``, when there are
none) and :func:`check_gate` turns three of its numbers into a pass/fail verdict that
``hlrp.laq.label`` enforces.

Pairs. Up to ``laq_report.max_clips`` clips are read (shards in a seeded random order, so the
clips are not all from the first shard); each gives up to ``laq_report.pairs_per_clip`` random
pairs (t, t+k), k from ``data.offsets``, drawn with a generator seeded by (seed, clip key), so
the same clip always gives the same pairs.

Contents of ``report.json`` (and of the dict :func:`build_report` returns):

* ``reconstruction``: PSNR of LAQ's prediction of frame t+k (clamped to [0, 1]) and of the
  copy-frame-t baseline, and their difference. ``*_db`` values are the PSNR of the mean MSE
  over all pairs (as training's ``val/psnr``; robust to static pairs whose copy baseline is
  exact); ``*_mean_per_pair_db`` average per-pair PSNRs, each capped at 60 dB.
* ``code_shuffle``: every pair is decoded again with the codes of another pair (a random
  derangement over all evaluated pairs, seeded) with ``LAQ.decode_with_indices``;
  ``psnr_drop_db`` = own - shuffled PSNR. Codes that are collapsed or ignored by the decoder
  give ~0 dB.
* ``codebook``: code usage per position and overall, perplexity (exp of the entropy of the
  overall code distribution), used fraction, dead codes; distinct code sequences (tuples of the
  L codes of a pair), their perplexity and the most frequent ones.
* ``actions`` (clips with ``meta["has_actions"]``): the action of a pair is the sum of the
  per-frame action rows t..t+k-1 (rows with NaN dropped). Linear probes - closed-form ridge
  regression (penalty ``laq_report.probe_ridge`` on standardised features, standardised
  targets), 5-fold cross-validation grouped by clip, R² of the pooled out-of-fold predictions
  averaged over action dims that vary - from (a) the one-hot codes (L*K features), (b) the
  pre-quantization latents z_pre (L*Dq), (c) frame t alone, average-pooled to 4x4x3 pixels
  (no motion information: what the scene alone predicts; the codes should beat it).
  Normalised mutual information (arithmetic normalisation, as scikit-learn's default) between
  the code sequence as one categorical label and the actions discretised as follows: every
  action dim that varies is cut into 3 quantile bins (terciles) and the bins of all dims are
  combined into one categorical id (``nmi``); ``nmi_per_dim_mean`` averages the NMI with each
  dim's terciles alone. Both estimates are biased upward with few pairs and many categories:
  ``nmi_chance`` is the same NMI with the code labels permuted across pairs (mean of 5
  permutations) - compare against it, not against 0.
* ``gate``: ``{"passed", "failures", "thresholds"}`` from :func:`check_gate`.

``report.html`` shows a summary table (green: passed, red: failed gate check, amber: a warning
that does not fail the gate) beside the figures in ``figures/``. Every file is written
atomically.
"""

from __future__ import annotations

import html
import io
import math
import os
import textwrap
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hlrp.common.cli import run
from hlrp.common.config import DataConfig, LAQReportConfig, RootConfig
from hlrp.common.io import atomic_open, file_sha256, stable_bucket, write_json, write_text
from hlrp.common.logging import get_logger
from hlrp.data.shards import decode_actions, decode_frames, iter_clips, random_pairs, resolve_shards
from hlrp.laq.data import is_val_video, to_model_input
from hlrp.laq.model import LAQ

__all__ = [
    "build_report",
    "check_gate",
    "ridge_probe",
    "nmi",
    "tercile_ids",
    "main",
]

log = get_logger("laq.report")

PIXEL_POOL = 4  # the frame-only probe sees frame t average-pooled to PIXEL_POOL^2 x 3 values
PSNR_CAP_DB = 60.0  # per-pair PSNRs are capped here (identical frames would give infinity)
PROBE_FOLDS = 5
NMI_CHANCE_PERMUTATIONS = 5
MIN_PROBE_PAIRS = 10


# --------------------------------------------------------------------------------------
# the gate
# --------------------------------------------------------------------------------------
def _num(x: Any) -> float | None:
    """A finite float, or None for missing / NaN values."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def check_gate(report: dict, cfg: LAQReportConfig) -> list[str]:
    """The gate checks a report fails, as one-line messages (empty: passed).

    Reads ``report["codebook"]["perplexity"]``, ``report["codebook"]["used_fraction"]`` and
    ``report["code_shuffle"]["psnr_drop_db"]``; a missing or non-finite value fails its check.
    """
    failures: list[str] = []
    cb = report.get("codebook") or {}
    sh = report.get("code_shuffle") or {}
    n = report.get("data", {}).get("pairs", "?")
    size = cb.get("size", "?")

    ppl = _num(cb.get("perplexity"))
    if ppl is None:
        failures.append("codes collapsed: code perplexity was not measured (no pairs evaluated?)")
    elif ppl < cfg.min_perplexity:
        top = cb.get("most_common_code")
        share = _num(cb.get("most_common_code_fraction"))
        extra = f"; code {top} is {share:.0%} of all codes" if share is not None else ""
        failures.append(
            f"codes collapsed: perplexity {ppl:.3f} < {cfg.min_perplexity} over {n} pairs "
            f"(codebook of {size}{extra})"
        )

    used = _num(cb.get("used_fraction"))
    if used is None:
        failures.append("codes collapsed: codebook use was not measured (no pairs evaluated?)")
    elif used < cfg.min_used_fraction:
        failures.append(
            f"codes collapsed: only {cb.get('used_codes', '?')} of {size} codes used "
            f"(fraction {used:.3f} < {cfg.min_used_fraction}); dead codes {cb.get('dead_codes')}"
        )

    seq_ppl = _num(cb.get("sequence_perplexity"))
    if seq_ppl is not None and seq_ppl < cfg.min_sequence_perplexity:
        top = (cb.get("top_sequences") or [{}])[0]
        share = _num(top.get("fraction"))
        extra = f"; {top.get('codes')} is {share:.0%} of all pairs" if share is not None else ""
        failures.append(
            f"code sequences collapsed: sequence perplexity {seq_ppl:.3f} < "
            f"{cfg.min_sequence_perplexity}{extra} (a VLA would learn to predict it always)"
        )

    drop = _num(sh.get("psnr_drop_db"))
    if drop is None:
        failures.append(
            "the codes carry almost nothing: the shuffled-codes PSNR drop was not measured "
            "(fewer than 2 pairs?)"
        )
    elif drop < cfg.min_psnr_drop_db:
        failures.append(
            f"the codes carry almost nothing: decoding with another pair's codes costs only "
            f"{drop:.3f} dB PSNR (< {cfg.min_psnr_drop_db} dB); the decoder predicts frame t+k "
            f"from frame t alone"
        )
    return failures


def gate_thresholds(cfg: LAQReportConfig) -> dict[str, float]:
    return {
        "min_perplexity": cfg.min_perplexity,
        "min_used_fraction": cfg.min_used_fraction,
        "min_sequence_perplexity": cfg.min_sequence_perplexity,
        "min_psnr_drop_db": cfg.min_psnr_drop_db,
    }


# --------------------------------------------------------------------------------------
# statistics helpers (numpy only)
# --------------------------------------------------------------------------------------
def _group_folds(groups: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, int]:
    """Fold id per row: whole groups (clips) go to one fold, groups dealt out in random order."""
    uniq = np.unique(groups)
    nf = min(folds, len(uniq))
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[g]: i % nf for i, g in enumerate(order)} if nf else {}
    return np.array([fold_of[g] for g in groups], dtype=np.int64), nf


def _ridge_fit_predict(
    xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, ridge: float
) -> np.ndarray:
    """Ridge regression on standardised features and targets; predictions in target units."""
    mx, sx = xtr.mean(0), xtr.std(0)
    sx[sx < 1e-8] = 1.0
    my, sy = ytr.mean(0), ytr.std(0)
    sy[sy < 1e-8] = 1.0
    a = (xtr - mx) / sx  # (n, d)
    b = (ytr - my) / sy  # (n, m)
    n, d = a.shape
    lam = max(ridge, 0.0) * n  # minimises ||b - a w||^2 / n + ridge * ||w||^2
    try:
        if d <= n:
            w = np.linalg.solve(a.T @ a + lam * np.eye(d), a.T @ b)  # (d, m)
        else:  # dual form: fewer equations when features outnumber samples
            w = a.T @ np.linalg.solve(a @ a.T + lam * np.eye(n), b)  # (d, m)
    except np.linalg.LinAlgError:  # ridge = 0 and singular
        w = np.linalg.lstsq(a, b, rcond=None)[0]
    return ((xte - mx) / sx) @ w * sy + my  # (n_test, m)


def ridge_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence | np.ndarray,
    ridge: float = 1e-3,
    folds: int = PROBE_FOLDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Cross-validated linear probe x (n, d) -> y (n, m), folds grouped by ``groups``.

    Closed-form ridge on standardised features and targets, ``folds``-fold cross-validation
    with every group (clip) in a single fold (fewer folds when there are fewer groups). Returns
    ``r2`` (the mean over target dims that vary of the R² of the pooled out-of-fold
    predictions; NaN when there are fewer than 2 groups), ``r2_per_dim`` (NaN for constant
    dims), ``folds`` and ``n``. Rows with a non-finite target are dropped.
    """
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    y = np.asarray(y, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    groups = np.asarray(groups)
    ok = np.isfinite(y).all(1) & np.isfinite(x).all(1)
    x, y, groups = x[ok], y[ok], groups[ok]
    fold, nf = _group_folds(groups, folds, seed)
    out: dict[str, Any] = {"n": int(len(y)), "folds": int(nf), "features": int(x.shape[1])}
    if nf < 2:
        out.update(r2=float("nan"), r2_per_dim=[float("nan")] * y.shape[1])
        return out
    pred = np.empty_like(y)
    for f in range(nf):
        te = fold == f
        pred[te] = _ridge_fit_predict(x[~te], y[~te], x[te], ridge)
    ss_res = ((y - pred) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    varies = ss_tot > 1e-12 * max(1.0, float(np.abs(y).max(initial=0.0)) ** 2) * len(y)
    r2 = np.full(y.shape[1], np.nan)
    r2[varies] = 1.0 - ss_res[varies] / ss_tot[varies]
    out.update(
        r2=float(np.nanmean(r2)) if varies.any() else float("nan"),
        r2_per_dim=[float(v) for v in r2],
    )
    return out


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def nmi(a: Sequence | np.ndarray, b: Sequence | np.ndarray) -> float:
    """Normalised mutual information of two labelings, I(a; b) / mean(H(a), H(b)).

    Labels may be any hashable values. 1 for identical partitions, ~0 for independent ones
    (biased upward with few samples per category); 1 when both are constant, 0 when only one is.
    """
    _, ia = np.unique(np.asarray(a), return_inverse=True, axis=0)
    _, ib = np.unique(np.asarray(b), return_inverse=True, axis=0)
    ia, ib = ia.reshape(-1), ib.reshape(-1)
    if len(ia) != len(ib):
        raise ValueError(f"labelings differ in length: {len(ia)} vs {len(ib)}")
    if len(ia) == 0:
        return float("nan")
    ha, hb = _entropy(np.bincount(ia)), _entropy(np.bincount(ib))
    if ha == 0.0 and hb == 0.0:
        return 1.0
    if ha == 0.0 or hb == 0.0:
        return 0.0
    joint = np.bincount(ia * (ib.max() + 1) + ib)
    mi = ha + hb - _entropy(joint)
    return float(max(0.0, mi) / ((ha + hb) / 2))


def tercile_ids(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Each action dim that varies cut into 3 quantile bins: (bins (n, d'), joint id (n,), dims).

    Values equal to a bin edge go to the upper bin (so a saturated dim may fill fewer bins).
    """
    y = np.asarray(y, dtype=np.float64)
    dims = [j for j in range(y.shape[1]) if np.ptp(y[:, j]) > 1e-12]
    bins = np.zeros((len(y), len(dims)), dtype=np.int64)
    for c, j in enumerate(dims):
        edges = np.quantile(y[:, j], [1 / 3, 2 / 3])
        bins[:, c] = np.digitize(y[:, j], edges)
    if not dims:
        return bins, np.zeros(len(y), dtype=np.int64), dims
    joint = np.unique(bins, axis=0, return_inverse=True)[1].reshape(-1)  # (n,) combined id
    return bins, joint, dims


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation without fixed points: each pair takes the next one's in a random cycle."""
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def _psnr_db(mse: np.ndarray | float) -> np.ndarray | float:
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def _pair_action(actions: np.ndarray | None, t: int, u: int) -> np.ndarray | None:
    """Sum of the per-frame action rows t..u-1 (rows with NaN dropped); None if none is left."""
    if actions is None or actions.ndim != 2 or u > len(actions):
        return None
    rows = actions[t:u].astype(np.float64)
    rows = rows[np.isfinite(rows).all(1)]
    return rows.sum(0) if len(rows) else None


class _Pairs:
    """Frame pairs gathered from the shards (uint8 at the shards' resolution)."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []  # (2, H, W, 3) uint8 each
        self.clip: list[str] = []
        self.t: list[int] = []
        self.k: list[int] = []
        self.action: list[np.ndarray | None] = []
        self.clips = 0
        self.clips_with_actions = 0

    def add_clip(self, sample: dict[str, Any], offsets: Sequence[int], count: int, seed: int):
        meta = sample["meta"]
        key = sample["__key__"]
        rng = np.random.default_rng([seed, stable_bucket(key, 2**32)])
        pairs = random_pairs(int(meta["num_frames"]), offsets, count, rng)
        if not pairs:
            return
        actions = decode_actions(sample) if meta.get("has_actions") else None
        self.clips += 1
        self.clips_with_actions += actions is not None
        for t, u in pairs:
            self.frames.append(decode_frames(sample, (t, u)))
            self.clip.append(key)
            self.t.append(t)
            self.k.append(u - t)
            self.action.append(_pair_action(actions, t, u))

    def __len__(self) -> int:
        return len(self.frames)


def gather_pairs(
    shards: str | os.PathLike | Sequence[str], data_cfg: DataConfig, cfg: LAQReportConfig
) -> tuple[_Pairs, bool, int]:
    """Pairs of up to ``cfg.max_clips`` held-out clips, or of all clips when none is held out.

    Returns (pairs, heldout, clips seen). Shards are visited in a seeded random order and
    reading stops once ``max_clips`` held-out clips are in.
    """
    urls = resolve_shards(shards)
    np.random.default_rng(cfg.seed).shuffle(urls)
    offsets = list(data_cfg.offsets)
    val, every = _Pairs(), _Pairs()
    seen = 0
    for sample in iter_clips(urls):
        seen += 1
        if data_cfg.val_split > 0 and is_val_video(sample["meta"]["video_id"], data_cfg.val_split):
            val.add_clip(sample, offsets, cfg.pairs_per_clip, cfg.seed)
            if val.clips >= cfg.max_clips:
                break
            if len(every):
                every = _Pairs()  # a held-out clip exists: the fallback is not needed
            continue
        if not val.clips and every.clips < cfg.max_clips:  # fallback: all clips
            every.add_clip(sample, offsets, cfg.pairs_per_clip, cfg.seed)
            if data_cfg.val_split <= 0 and every.clips >= cfg.max_clips:
                break
    if val.clips:
        return val, True, seen
    return every, False, seen


# --------------------------------------------------------------------------------------
# inference
# --------------------------------------------------------------------------------------
def _device_and_autocast() -> tuple[torch.device, torch.dtype | None]:
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.device("cpu"), None


@torch.no_grad()
def _infer(
    model: LAQ, pairs: _Pairs, cfg: LAQReportConfig, partner: np.ndarray, keep: set[int]
) -> dict[str, Any]:
    """Run LAQ over all pairs: per-pair MSEs, codes, z_pre, pixel features, example images."""
    device, amp = _device_and_autocast()
    was_training = model.training
    model.to(device).eval()
    size = model.cfg.image_size
    n, bs = len(pairs), max(1, cfg.batch_size)

    def autocast():
        return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    def inputs(sel: np.ndarray | range) -> torch.Tensor:
        frames = torch.from_numpy(np.stack([pairs.frames[i] for i in sel]))  # (b, 2, H, W, 3)
        return to_model_input(frames, size).to(device)  # (b, 2, C, S, S)

    mse_own, mse_copy, idx_all, z_all, pix_all = [], [], [], [], []
    examples: dict[int, dict[str, np.ndarray]] = {}
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
        pix_all.append(F.adaptive_avg_pool2d(x[:, 0], PIXEL_POOL).flatten(1).cpu())
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
    model.train(was_training)
    for ex in examples.values():
        for name, img in ex.items():
            ex[name] = img.permute(1, 2, 0).cpu().numpy()  # (S, S, C) in [0, 1]
    return {
        "mse_own": torch.cat(mse_own).double().numpy(),
        "mse_copy": torch.cat(mse_copy).double().numpy(),
        "mse_shuffled": torch.cat(mse_shuf).double().numpy() if mse_shuf else None,
        "indices": indices.numpy(),
        "z_pre": torch.cat(z_all).numpy(),
        "pixels": torch.cat(pix_all).numpy(),
        "examples": examples,
        "device": f"{device.type}" + (" (bf16 autocast)" if amp is not None else " (fp32)"),
    }


# --------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------
def _reconstruction(res: dict[str, Any], k: np.ndarray) -> dict[str, Any]:
    own, copy = res["mse_own"], res["mse_copy"]
    cap = 10 ** (-PSNR_CAP_DB / 10)

    def block(sel: np.ndarray) -> dict[str, Any]:
        p_own, p_copy = _psnr_db(own[sel].mean()), _psnr_db(copy[sel].mean())
        return {
            "pairs": int(sel.sum()),
            "psnr_db": float(p_own),
            "psnr_copy_db": float(p_copy),
            "psnr_gain_db": float(p_own - p_copy),
            "psnr_mean_per_pair_db": float(np.mean(_psnr_db(np.maximum(own[sel], cap)))),
            "psnr_copy_mean_per_pair_db": float(np.mean(_psnr_db(np.maximum(copy[sel], cap)))),
            "mse": float(own[sel].mean()),
            "mse_copy": float(copy[sel].mean()),
        }

    rec = block(np.ones(len(own), dtype=bool))
    rec["by_offset"] = {str(int(v)): block(k == v) for v in np.unique(k)}
    return rec


def _code_shuffle(res: dict[str, Any], partner: np.ndarray) -> dict[str, Any]:
    own, shuf, idx = res["mse_own"], res["mse_shuffled"], res["indices"]
    if shuf is None:
        return {"psnr_drop_db": None, "note": "fewer than 2 pairs: nothing to shuffle"}
    drop = _psnr_db(shuf) - _psnr_db(own)  # per pair, dB
    p_own, p_shuf = _psnr_db(own.mean()), _psnr_db(shuf.mean())
    return {
        "psnr_own_db": float(p_own),
        "psnr_shuffled_db": float(p_shuf),
        "psnr_drop_db": float(p_own - p_shuf),
        "per_pair_drop_mean_db": float(-drop.mean()),
        "per_pair_drop_median_db": float(-np.median(drop)),
        "fraction_pairs_worse": float((shuf > own).mean()),
        "same_codes_fraction": float((idx == idx[partner]).all(1).mean()),
        "method": "each pair decoded with the codes of another pair (random derangement)",
    }


def _codebook(indices: np.ndarray, size: int) -> dict[str, Any]:
    n, L = indices.shape
    per_pos = np.stack([np.bincount(indices[:, j], minlength=size) for j in range(L)])  # (L, K)
    counts = per_pos.sum(0)  # (K,)
    seqs = Counter(tuple(int(c) for c in row) for row in indices)
    seq_counts = np.array(list(seqs.values()))
    top = seqs.most_common(10)
    used = int((counts > 0).sum())
    return {
        "size": int(size),
        "code_seq_len": int(L),
        "pairs": int(n),
        "counts": counts.tolist(),
        "counts_per_position": per_pos.tolist(),
        "perplexity": math.exp(_entropy(counts)),
        "perplexity_per_position": [math.exp(_entropy(c)) for c in per_pos],
        "used_codes": used,
        "used_fraction": used / size,
        "dead_codes": [int(i) for i in np.flatnonzero(counts == 0)],
        "most_common_code": int(counts.argmax()),
        "most_common_code_fraction": float(counts.max() / max(1, counts.sum())),
        "distinct_sequences": len(seqs),
        "possible_sequences": int(size) ** int(L),
        "sequence_perplexity": math.exp(_entropy(seq_counts)),
        "top_sequences": [
            {"codes": list(s), "count": c, "fraction": c / max(1, n)} for s, c in top
        ],
    }


def _actions(pairs: _Pairs, res: dict[str, Any], cfg: LAQReportConfig, size: int) -> dict[str, Any]:
    have = [i for i, a in enumerate(pairs.action) if a is not None]
    if not have:
        return {"available": False, "note": "no held-out pair has ground-truth actions"}
    dims = Counter(len(pairs.action[i]) for i in have)
    adim = dims.most_common(1)[0][0]
    rows = [i for i in have if len(pairs.action[i]) == adim]
    note = "" if len(dims) == 1 else f"action dims differ between clips; kept the {adim}-dim ones"
    y = np.stack([pairs.action[i] for i in rows])  # (n, A)
    groups = np.array([pairs.clip[i] for i in rows])
    out: dict[str, Any] = {
        "available": True,
        "pairs": len(rows),
        "clips": len(set(groups.tolist())),
        "action_dim": int(adim),
        "definition": "sum of the per-frame action rows t..t+k-1 (NaN rows dropped)",
    }
    if note:
        out["note"] = note
    if len(rows) < MIN_PROBE_PAIRS or out["clips"] < 2:
        out["note"] = (
            f"too few pairs with actions for probes ({len(rows)} pairs, {out['clips']} clips; "
            f"need >= {MIN_PROBE_PAIRS} pairs from >= 2 clips)"
        )
        out["probe"] = {"r2": {"codes": None, "z_pre": None, "pixels": None}}
        out["nmi"] = {"nmi": None}
        return out
    idx = res["indices"][rows]  # (n, L)
    onehot = np.eye(size, dtype=np.float64)[idx].reshape(len(rows), -1)  # (n, L*K)
    feats = {
        "codes": onehot,
        "z_pre": res["z_pre"][rows].reshape(len(rows), -1),
        "pixels": res["pixels"][rows],
    }
    probes = {
        name: ridge_probe(f, y, groups, cfg.probe_ridge, PROBE_FOLDS, cfg.seed)
        for name, f in feats.items()
    }
    out["probe"] = {
        "method": (
            f"closed-form ridge (penalty {cfg.probe_ridge}) on standardised features and "
            f"targets, {probes['codes']['folds']}-fold cross-validation grouped by clip, R² of "
            "the pooled out-of-fold predictions averaged over the action dims that vary"
        ),
        "features": {
            "codes": f"one-hot codes ({onehot.shape[1]} = L*K)",
            "z_pre": f"pre-quantization latents ({feats['z_pre'].shape[1]} = L*Dq)",
            "pixels": f"frame t average-pooled to {PIXEL_POOL}x{PIXEL_POOL}x3 (no motion)",
        },
        "folds": probes["codes"]["folds"],
        "ridge": cfg.probe_ridge,
        "r2": {k: v["r2"] for k, v in probes.items()},
        "r2_per_dim": {k: v["r2_per_dim"] for k, v in probes.items()},
    }
    codes_id = np.unique(idx, axis=0, return_inverse=True)[1].reshape(-1)  # sequence label
    bins, joint, used_dims = tercile_ids(y)
    rng = np.random.default_rng(cfg.seed)
    perms = [rng.permutation(codes_id) for _ in range(NMI_CHANCE_PERMUTATIONS)]
    chance = [nmi(p, joint) for p in perms]
    per_dim = [nmi(codes_id, bins[:, c]) for c in range(bins.shape[1])]
    per_dim_chance = [nmi(p, bins[:, c]) for p in perms for c in range(bins.shape[1])]
    out["dims_used"] = used_dims
    out["nmi"] = {
        "nmi": nmi(codes_id, joint) if used_dims else None,
        "nmi_chance": float(np.mean(chance)) if used_dims else None,
        "nmi_per_dim": per_dim,
        "nmi_per_dim_mean": float(np.mean(per_dim)) if per_dim else None,
        "nmi_per_dim_chance": float(np.mean(per_dim_chance)) if per_dim else None,
        "action_classes": int(len(np.unique(joint))),
        "code_classes": int(len(np.unique(codes_id))),
        "method": (
            "NMI (arithmetic normalisation) between the code sequence as one categorical label "
            "and the actions with every varying dim cut into 3 quantile bins, the bins combined "
            "into one categorical id; nmi_chance: the same with code labels permuted"
        ),
    }
    return out


def _soft_warnings(report: dict, cfg: LAQReportConfig) -> list[str]:
    """Problems worth a look that do not fail the gate."""
    out = []
    gain = _num(report.get("reconstruction", {}).get("psnr_gain_db"))
    if gain is not None and gain <= 0:
        out.append(
            f"the LAQ predicts frame t+k {-gain:.2f} dB worse than copying frame t (undertrained?)"
        )
    r2 = report.get("actions", {}).get("probe", {}).get("r2") or {}
    codes, pix = _num(r2.get("codes")), _num(r2.get("pixels"))
    if codes is not None and pix is not None and codes <= max(pix, 0.0):
        out.append(
            f"the codes do not predict the actions (held-out probe R² {codes:.3f}; frame t "
            f"alone: {pix:.3f})"
        )
    return out


def _checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """``config_hash`` and ``global_step`` of an exported laq.ckpt (tensors memory-mapped)."""
    info: dict[str, Any] = {"laq_checkpoint": str(Path(path).resolve())}
    payload: dict[str, Any] = {}
    for kwargs in ({"mmap": True}, {}):  # mmap needs the zip format; old files load in full
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False, **kwargs)
            break
        except Exception as e:  # noqa: BLE001 - the report must still be written
            log.debug("torch.load(%s, %s): %s", path, kwargs, e)
    if not payload:
        log.warning("could not read config_hash from %s", path)
    return {
        **info,
        "laq_sha256": file_sha256(path),  # labelling checks it: a report of other weights is stale
        "config_hash": payload.get("config_hash"),
        "global_step": payload.get("global_step"),
    }


def _training_config_warnings(ckpt: str | os.PathLike, data_cfg: DataConfig) -> list[str]:
    """Warn when the config.yaml beside the checkpoint used another val split or offsets."""
    path = Path(ckpt).parent / "config.yaml"
    if not path.is_file():
        return []
    try:
        from omegaconf import OmegaConf

        data = OmegaConf.load(path).get("data", {})
        split, offsets = data.get("val_split"), list(data.get("offsets", []))
    except Exception:  # noqa: BLE001
        return []
    warnings = []
    if split is not None and float(split) != float(data_cfg.val_split):
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
    rest = [i for i in order if i not in set(picked)]
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

    ``checkpoint``: the laq.ckpt the model came from, recorded with its ``config_hash`` (and
    checked against the ``config.yaml`` beside it). The model is moved to CUDA when available
    and left in the mode it came in. Returns the report (as written to report.json).
    """
    start = time.time()
    out_dir = Path(out_dir)
    pairs, heldout, seen = gather_pairs(shards, data_cfg, cfg)
    n = len(pairs)
    log.info(
        "%d pairs from %d %s clips (%d clips read)",
        n,
        pairs.clips,
        "held-out" if heldout else "(all, none held out)",
        seen,
    )
    warnings: list[str] = []
    if checkpoint is not None:
        warnings += _training_config_warnings(checkpoint, data_cfg)
    if not heldout:
        warnings.append(
            f"no clip of the shards is in the validation split (val_split={data_cfg.val_split}):"
            " evaluated on all clips, which the LAQ may have been trained on"
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
        "seed": cfg.seed,
    }
    report["settings"] = asdict(cfg)
    figures: dict[str, str] = {}
    if n == 0:
        warnings.append("no frame pairs: the shards hold no clip longer than the offsets")
        report["device"] = None
    else:
        rng = np.random.default_rng(cfg.seed)
        partner = _derangement(n, rng) if n >= 2 else np.zeros(1, dtype=np.int64)
        keep = _pick_examples(pairs.clip, cfg.num_examples, rng)
        res = _infer(model, pairs, cfg, partner, set(keep))
        report["device"] = res["device"]
        report["reconstruction"] = _reconstruction(res, np.array(pairs.k))
        report["code_shuffle"] = _code_shuffle(res, partner)
        report["codebook"] = _codebook(res["indices"], size)
        report["actions"] = _actions(pairs, res, cfg, size)
        figures = _write_figures(report, res, pairs, keep, partner, out_dir / "figures")
    report["figures"] = figures
    report["warnings"] = warnings + _soft_warnings(report, cfg)
    report["seconds"] = round(time.time() - start, 2)
    failures = check_gate(report, cfg)
    report["gate"] = {
        "passed": not failures,
        "failures": failures,
        "thresholds": gate_thresholds(cfg),
    }
    report = _clean(report)
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.html", render_html(report))
    return report


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


def _write_figures(
    report: dict, res: dict, pairs: _Pairs, keep: list[int], partner: np.ndarray, fig_dir: Path
) -> dict[str, str]:
    from matplotlib.figure import Figure

    figs: dict[str, str] = {}
    # codebook usage
    cb = report["codebook"]
    K, L = cb["size"], cb["code_seq_len"]
    per_pos = np.array(cb["counts_per_position"], dtype=np.float64)
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    width = 0.8 / (L + 1)
    xs = np.arange(K)
    for j in range(L):
        ax1.bar(
            xs + (j - L / 2) * width,
            per_pos[j] / max(1, per_pos[j].sum()),
            width,
            label=f"position {j}",
        )
    total = per_pos.sum(0)
    ax1.bar(
        xs + (L / 2) * width,
        total / max(1, total.sum()),
        width,
        color="black",
        label="all positions",
    )
    ax1.axhline(1 / K, color="grey", ls="--", lw=1, label="uniform")
    ax1.set_xticks(xs)
    ax1.set_xlabel("code")
    ax1.set_ylabel("fraction of codes")
    ax1.set_title(
        f"code usage: perplexity {cb['perplexity']:.2f} of {K}, " f"{cb['used_codes']}/{K} used"
    )
    ax1.legend(fontsize=7, ncol=2)
    top = cb["top_sequences"]
    ax2.barh(
        [str(s["codes"]) for s in top][::-1], [s["fraction"] for s in top][::-1], color="tab:purple"
    )
    ax2.set_xlabel("fraction of pairs")
    ax2.set_title(
        f"top code sequences ({cb['distinct_sequences']} distinct, "
        f"perplexity {cb['sequence_perplexity']:.2f})",
        fontsize=9,
    )
    _save(fig, fig_dir / "codebook_usage.png")
    figs["codebook_usage"] = "figures/codebook_usage.png"

    # PSNR: copy baseline / own codes / shuffled codes, and per-pair drops
    rec, sh = report["reconstruction"], report["code_shuffle"]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    names = ["copy frame t", "LAQ (own codes)", "LAQ (other pair's codes)"]
    vals = [rec["psnr_copy_db"], rec["psnr_db"], sh.get("psnr_shuffled_db", float("nan"))]
    bars = ax1.bar(names, vals, color=["grey", "tab:green", "tab:red"])
    for b, v in zip(bars, vals):
        ax1.text(
            b.get_x() + b.get_width() / 2,
            b.get_height(),
            f"{v:.2f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax1.set_ylabel("PSNR of frame t+k (dB)")
    ax1.set_title(
        f"drop with shuffled codes: {sh.get('psnr_drop_db', float('nan')):.3f} dB", fontsize=10
    )
    ax1.tick_params(axis="x", labelsize=8)
    if res["mse_shuffled"] is not None:
        d = _psnr_db(res["mse_own"]) - _psnr_db(res["mse_shuffled"])
        ax2.hist(d, bins=30, color="tab:red", alpha=0.8)
        ax2.axvline(0, color="black", lw=1)
    ax2.set_xlabel("per-pair PSNR drop, own - shuffled codes (dB)")
    ax2.set_ylabel("pairs")
    _save(fig, fig_dir / "psnr.png")
    figs["psnr"] = "figures/psnr.png"

    # probes
    act = report["actions"]
    r2 = act.get("probe", {}).get("r2") if act.get("available") else None
    if r2 and any(_num(v) is not None for v in r2.values()):
        fig = Figure(figsize=(5.5, 3.6), layout="constrained")
        ax = fig.subplots()
        labels = ["codes (one-hot)", "z_pre", f"frame t ({PIXEL_POOL}x{PIXEL_POOL} px)"]
        raw = [_num(r2["codes"]), _num(r2["z_pre"]), _num(r2["pixels"])]
        shown = [max(-0.5, v) if v is not None else 0.0 for v in raw]
        bars = ax.bar(labels, shown, color=["tab:blue", "tab:cyan", "grey"])
        for b, v in zip(bars, raw):
            y = b.get_height()
            ax.text(
                b.get_x() + b.get_width() / 2,
                max(y, 0),
                "n/a" if v is None else f"{v:.3f}",
                ha="center",
                va="bottom",
                fontsize=9,
            )
        ax.axhline(0, color="black", lw=1)
        ax.set_ylim(-0.5, 1.05)
        ax.set_ylabel("held-out R² (mean over action dims)")
        nm = act.get("nmi", {})
        ax.set_title(
            f"linear probes -> actions ({act['pairs']} pairs, {act['clips']} clips)\n"
            f"NMI(codes, actions) {_fmt(nm.get('nmi'))} "
            f"(chance {_fmt(nm.get('nmi_chance'))})",
            fontsize=9,
        )
        ax.tick_params(axis="x", labelsize=8)
        _save(fig, fig_dir / "probes.png")
        figs["probes"] = "figures/probes.png"

    # examples
    ex = res["examples"]
    rows = [i for i in keep if i in ex]
    if rows:
        cols = ["frame t", "frame t+k", "recon (own codes)", "recon (other pair's codes)"]
        if res["mse_shuffled"] is None:
            cols = cols[:3]
        fig = Figure(figsize=(2.0 * len(cols) + 0.6, 2.0 * len(rows) + 0.4), layout="constrained")
        axes = np.array(fig.subplots(len(rows), len(cols), squeeze=False))
        idx = res["indices"]
        for r, i in enumerate(rows):
            imgs = [ex[i]["t"], ex[i]["u"], ex[i]["recon"], ex[i].get("shuffled")]
            own_p = _psnr_db(res["mse_own"][i])
            for c in range(len(cols)):
                ax = axes[r, c]
                ax.imshow(np.clip(imgs[c], 0, 1), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(cols[c], fontsize=9)
                if c == 2:
                    ax.set_xlabel(f"{idx[i].tolist()}  {own_p:.1f} dB", fontsize=8)
                if c == 3:
                    p = _psnr_db(res["mse_shuffled"][i])
                    ax.set_xlabel(f"{idx[partner[i]].tolist()}  {p:.1f} dB", fontsize=8)
            name = "\n".join(textwrap.wrap(pairs.clip[i], 22)[:3])
            axes[r, 0].set_ylabel(f"{name}\nt={pairs.t[i]} k={pairs.k[i]}", fontsize=6)
        _save(fig, fig_dir / "examples.png")
        figs["examples"] = "figures/examples.png"
    return figs


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    """A value for the HTML table (HTML-escaped)."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(int(v))
    x = _num(v)
    if x is None:
        return "n/a" if isinstance(v, float | np.floating) else html.escape(str(v))
    return f"{x:.{digits}f}"


def _rows(report: dict) -> list[tuple[str, str, str, str, str]]:
    """(section, name, value, threshold / reference, status) of the summary table."""
    th = report["gate"]["thresholds"]
    cb = report.get("codebook", {})
    rec = report.get("reconstruction", {})
    sh = report.get("code_shuffle", {})
    act = report.get("actions", {})
    data = report.get("data", {})
    rows: list[tuple[str, str, str, str, str]] = []

    def gate_row(name: str, value: Any, minimum: float) -> None:
        v = _num(value)
        rows.append(
            (
                "gate",
                name,
                _fmt(value),
                f"&ge; {minimum}",
                "fail" if v is None or v < minimum else "pass",
            )
        )

    gate_row("code perplexity", cb.get("perplexity"), th["min_perplexity"])
    gate_row("codebook used fraction", cb.get("used_fraction"), th["min_used_fraction"])
    gate_row(
        "PSNR drop with another pair's codes (dB)", sh.get("psnr_drop_db"), th["min_psnr_drop_db"]
    )
    gain = _num(rec.get("psnr_gain_db"))
    rows += [
        ("reconstruction", "PSNR of frame t+k, LAQ (dB)", _fmt(rec.get("psnr_db")), "", ""),
        (
            "reconstruction",
            "PSNR, copy frame t baseline (dB)",
            _fmt(rec.get("psnr_copy_db")),
            "",
            "",
        ),
        (
            "reconstruction",
            "LAQ - copy baseline (dB)",
            _fmt(rec.get("psnr_gain_db")),
            "&gt; 0",
            "warn" if gain is None or gain <= 0 else "pass",
        ),
        (
            "reconstruction",
            "PSNR with another pair's codes (dB)",
            _fmt(sh.get("psnr_shuffled_db")),
            "",
            "",
        ),
        (
            "reconstruction",
            "pairs decoded worse with other codes",
            _fmt(sh.get("fraction_pairs_worse")),
            "",
            "",
        ),
        (
            "codebook",
            "codes used",
            f"{_fmt(cb.get('used_codes'))} / {_fmt(cb.get('size'))}",
            "",
            "",
        ),
        ("codebook", "dead codes", html.escape(str(cb.get("dead_codes", "n/a"))), "", ""),
        (
            "codebook",
            "most frequent code (share)",
            f"{_fmt(cb.get('most_common_code'))} ({_fmt(cb.get('most_common_code_fraction'))})",
            "",
            "",
        ),
        (
            "codebook",
            "distinct code sequences",
            f"{_fmt(cb.get('distinct_sequences'))} / {_fmt(cb.get('possible_sequences'))}",
            "",
            "",
        ),
        (
            "codebook",
            "code sequence perplexity",
            _fmt(cb.get("sequence_perplexity")),
            f"&ge; {th['min_perplexity']} (not gated)",
            "warn" if (_num(cb.get("sequence_perplexity")) or 0) < th["min_perplexity"] else "",
        ),
    ]
    top = cb.get("top_sequences") or []
    if top:
        rows.append(
            (
                "codebook",
                "most frequent sequence (share)",
                f"{top[0]['codes']} ({_fmt(top[0]['fraction'])})",
                "",
                "warn" if top[0]["fraction"] > 0.5 else "",
            )
        )
    if act.get("available") and act.get("probe", {}).get("r2"):
        r2 = act["probe"]["r2"]
        codes, pix = _num(r2.get("codes")), _num(r2.get("pixels"))
        beats = codes is not None and pix is not None and codes > max(pix, 0.0)
        rows += [
            (
                "actions",
                "probe R², one-hot codes",
                _fmt(r2.get("codes")),
                "&gt; 0 and &gt; frame-only R²",
                "pass" if beats else "warn",
            ),
            ("actions", "probe R², z_pre", _fmt(r2.get("z_pre")), "", ""),
            (
                "actions",
                f"probe R², frame t only ({PIXEL_POOL}x{PIXEL_POOL} px)",
                _fmt(r2.get("pixels")),
                "",
                "",
            ),
        ]
        nm = act.get("nmi", {})
        n_v, n_c = _num(nm.get("nmi")), _num(nm.get("nmi_chance"))
        rows += [
            (
                "actions",
                "NMI(code sequence, action terciles)",
                _fmt(nm.get("nmi")),
                f"chance {_fmt(nm.get('nmi_chance'))}",
                "pass" if n_v is not None and n_c is not None and n_v > n_c else "warn",
            ),
            (
                "actions",
                "NMI per action dim (mean)",
                _fmt(nm.get("nmi_per_dim_mean")),
                f"chance {_fmt(nm.get('nmi_per_dim_chance'))}",
                "",
            ),
            (
                "actions",
                "pairs / clips with actions",
                f"{_fmt(act.get('pairs'))} / {_fmt(act.get('clips'))}",
                "",
                "",
            ),
        ]
    else:
        rows.append(
            ("actions", "ground-truth actions", html.escape(act.get("note", "n/a")), "", "")
        )
    rows += [
        (
            "data",
            "held-out clips",
            "yes" if data.get("heldout") else "NO (all clips)",
            "",
            "" if data.get("heldout") else "warn",
        ),
        ("data", "clips / pairs", f"{_fmt(data.get('clips'))} / {_fmt(data.get('pairs'))}", "", ""),
        ("data", "offsets k", html.escape(str(data.get("offsets"))), "", ""),
    ]
    return rows


def render_html(report: dict) -> str:
    """The report as one static HTML page (inline CSS, figures as relative <img> links)."""
    gate = report["gate"]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    esc = html.escape
    table = []
    section = None
    for sec, name, value, ref, status in _rows(report):
        if sec != section:
            table.append(f'<tr><th colspan="4" class="sec">{esc(sec)}</th></tr>')
            section = sec
        label = {"pass": "pass", "fail": "FAIL", "warn": "warn"}.get(status, "")
        table.append(
            f'<tr class="{status}"><td>{esc(name)}</td><td class="num">{value}</td>'
            f"<td>{ref}</td><td>{label}</td></tr>"
        )
    failures = "".join(f"<li>{esc(f)}</li>" for f in gate["failures"])
    warnings = "".join(f"<li>{esc(w)}</li>" for w in report.get("warnings", []))
    figs = "".join(
        f'<figure><img src="{esc(path)}" alt="{esc(name)}"><figcaption>{esc(name)}'
        f"</figcaption></figure>"
        for name, path in report.get("figures", {}).items()
    )
    meta = (
        f"checkpoint <code>{esc(str(report.get('laq_checkpoint')))}</code>, config hash "
        f"<code>{esc(str(report.get('config_hash')))}</code>, step "
        f"{esc(str(report.get('global_step')))}; device {esc(str(report.get('device')))}; "
        f"{esc(str(report.get('seconds')))} s"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LAQ report: {verdict}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
.verdict {{ font-size: 1.4em; font-weight: bold; padding: .4em .8em; display: inline-block;
  border-radius: 4px; }}
.verdict.pass {{ background: #c8e6c9; }} .verdict.fail {{ background: #ffcdd2; }}
.layout {{ display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }}
table {{ border-collapse: collapse; font-size: .9em; }}
td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: left; }}
th.sec {{ background: #eee; text-transform: uppercase; font-size: .8em; }}
td.num {{ font-family: monospace; }}
tr.pass td {{ background: #e8f5e9; }} tr.fail td {{ background: #ffebee; font-weight: bold; }}
tr.warn td {{ background: #fff8e1; }}
.figs {{ display: flex; flex-direction: column; gap: 1em; max-width: 60em; }}
figure {{ margin: 0; }} figure img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ font-size: .8em; color: #666; }}
.meta {{ font-size: .85em; color: #555; }}
</style></head><body>
<h1>LAQ quality report</h1>
<p class="verdict {'pass' if gate['passed'] else 'fail'}">gate {verdict}</p>
{f'<h3>Failed checks</h3><ul>{failures}</ul>' if failures else ''}
{f'<h3>Warnings</h3><ul>{warnings}</ul>' if warnings else ''}
<p class="meta">{meta}</p>
<div class="layout">
<table>{''.join(table)}</table>
<div class="figs">{figs}</div>
</div>
</body></html>
"""


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
USAGE = """
usage: python -m hlrp.laq.report laq=PATH/laq.ckpt data.shards=INDEX.json output_dir=DIR \\
           [experiment=NAME] [laq_report.max_clips=N ...]
Evaluates a trained LAQ on held-out clips (data.val_split videos) and writes
output_dir/report.json, report.html and figures/. The JSON's "gate" (code collapse, codes the
decoder ignores) is what hlrp.laq.label checks before labelling. Exit code 0 whenever the
report was written, also when the gate failed.
"""


def _report_main(cfg: RootConfig) -> int:
    from hlrp.laq.train import load_laq

    missing = [k for k in ("laq", "output_dir") if not getattr(cfg, k)]
    if not cfg.data.shards:
        missing.append("data.shards")
    if missing:
        log.error("missing required settings: %s", ", ".join(f"{k}=..." for k in missing))
        return 2
    model = load_laq(cfg.laq)
    out = Path(cfg.output_dir)
    report = build_report(model, cfg.data.shards, cfg.data, cfg.laq_report, out, checkpoint=cfg.laq)
    rec, sh, cb = (
        report.get("reconstruction", {}),
        report.get("code_shuffle", {}),
        report.get("codebook", {}),
    )
    log.info(
        "PSNR %s dB (copy baseline %s dB), drop with other codes %s dB, perplexity %s/%s",
        _fmt(rec.get("psnr_db")),
        _fmt(rec.get("psnr_copy_db")),
        _fmt(sh.get("psnr_drop_db")),
        _fmt(cb.get("perplexity")),
        _fmt(cb.get("size")),
    )
    for w in report["warnings"]:
        log.warning("%s", w)
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
    return run(_report_main, argv, USAGE)


if __name__ == "__main__":
    raise SystemExit(main())
