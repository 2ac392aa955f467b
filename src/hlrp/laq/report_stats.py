"""Statistics of the LAQ report: reconstruction, code shuffle, codebook use, action probes.

Pure functions of the inference results (``res``: per-pair MSEs, codes, z_pre, pooled pixel
features, from :mod:`hlrp.laq.report`) and of the gathered pairs; each returns one section of
``report.json`` (layout: :mod:`hlrp.laq.report`).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from hlrp.common.config import LAQReportConfig
from hlrp.common.metrics import psnr
from hlrp.common.probes import (
    group_bootstrap_margin,
    linear_probe,
    nmi_with_chance,
    tercile_ids,
)

__all__ = [
    "action_stats",
    "code_shuffle_stats",
    "codebook_stats",
    "derangement",
    "reconstruction_stats",
    "soft_warnings",
]

PIXEL_POOL = 4  # the frame-only probe sees frame t average-pooled to PIXEL_POOL^2 x 3 values
DIFF_POOL = 8  # the pixel-difference baseline sees frame t+k - frame t pooled to DIFF_POOL^2 x 3
PSNR_CAP_DB = 60.0  # per-pair PSNRs are capped here (identical frames would give infinity)
NMI_CHANCE_PERMUTATIONS = 5
MIN_PROBE_PAIRS = 10  # on each side
PROBE_FEATURES = {
    "codes": "one-hot codes (L*K)",
    "z_pre": "pre-quantization latents z_pre (L*Dq)",
    "pixels": f"frame t alone, average-pooled to {PIXEL_POOL}x{PIXEL_POOL}x3 (no motion)",
    "pixel_diff": f"frame t+k - frame t, average-pooled to {DIFF_POOL}x{DIFF_POOL}x3",
}


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0].astype(np.float64)
    p /= p.sum()
    return float(-(p * np.log(p)).sum())


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation without fixed points: each pair takes the next one's in a random cycle."""
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def reconstruction_stats(res: dict[str, Any], k: np.ndarray) -> dict[str, Any]:
    own, copy = res["mse_own"], res["mse_copy"]
    cap = 10 ** (-PSNR_CAP_DB / 10)

    def block(sel: np.ndarray) -> dict[str, Any]:
        p_own, p_copy = psnr(own[sel].mean()), psnr(copy[sel].mean())
        return {
            "pairs": int(sel.sum()),
            "psnr_db": p_own,
            "psnr_copy_db": p_copy,
            "psnr_gain_db": p_own - p_copy,
            "psnr_mean_per_pair_db": float(np.mean(psnr(np.maximum(own[sel], cap)))),
            "psnr_copy_mean_per_pair_db": float(np.mean(psnr(np.maximum(copy[sel], cap)))),
            "mse": float(own[sel].mean()),
            "mse_copy": float(copy[sel].mean()),
        }

    rec = block(np.ones(len(own), dtype=bool))
    rec["by_offset"] = {str(int(v)): block(k == v) for v in np.unique(k)}
    return rec


def code_shuffle_stats(res: dict[str, Any], partner: np.ndarray) -> dict[str, Any]:
    own, shuf, idx = res["mse_own"], res["mse_shuffled"], res["indices"]
    if shuf is None:
        return {"psnr_drop_db": None, "note": "fewer than 2 pairs: nothing to shuffle"}
    drop = psnr(own) - psnr(shuf)  # per pair, dB
    p_own, p_shuf = psnr(own.mean()), psnr(shuf.mean())
    return {
        "psnr_own_db": p_own,
        "psnr_shuffled_db": p_shuf,
        "psnr_drop_db": p_own - p_shuf,
        "per_pair_drop_mean_db": float(drop.mean()),
        "per_pair_drop_median_db": float(np.median(drop)),
        "fraction_pairs_worse": float((shuf > own).mean()),
        "same_codes_fraction": float((idx == idx[partner]).all(1).mean()),
        "method": "each pair decoded with the codes of another pair (random derangement)",
    }


def codebook_stats(indices: np.ndarray, size: int) -> dict[str, Any]:
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


def _with_actions(pairs: Any, adim: int) -> np.ndarray:
    """Indices of the pairs whose action is known and ``adim``-dimensional."""
    return np.array(
        [i for i, a in enumerate(pairs.action) if a is not None and len(a) == adim], dtype=np.int64
    )


def _side(pairs: Any, rows: np.ndarray) -> dict[str, int]:
    return {
        "pairs": int(len(rows)),
        "clips": len({pairs.clip[i] for i in rows}),
        "videos": len({pairs.video[i] for i in rows}),
    }


def _probe_features(feats: dict[str, np.ndarray], rows: np.ndarray, size: int) -> dict:
    """name -> (n, d) features of the rows: one-hot codes, z_pre, pixels, pixel_diff."""
    idx = feats["indices"][rows]  # (n, L)
    return {
        "codes": np.eye(size, dtype=np.float64)[idx].reshape(len(rows), -1),  # (n, L*K)
        "z_pre": feats["z_pre"][rows].reshape(len(rows), -1),  # (n, L*Dq)
        "pixels": feats["pixels"][rows],
        "pixel_diff": feats["pixel_diff"][rows],
    }


def action_stats(
    pairs: Any,
    res: dict[str, Any],
    train: Any,
    heldout: bool,
    cfg: LAQReportConfig,
    size: int,
) -> dict[str, Any]:
    """The ``actions`` section: probes fitted on ``train`` scored on ``pairs``, and NMI."""
    known = [a for a in pairs.action if a is not None]
    if not known:
        return {
            "available": False,
            "note": "no evaluated pair has ground-truth actions",
            "probe": {"applicable": False, "note": "no ground-truth actions"},
        }
    dims = Counter(len(a) for a in known)
    adim = dims.most_common(1)[0][0]
    rows = _with_actions(pairs, adim)
    y = np.stack([pairs.action[i] for i in rows]).astype(np.float64)  # (n, A)
    out: dict[str, Any] = {
        "available": True,
        "action_dim": int(adim),
        "definition": (
            "sum of the per-frame action rows t..t+k-1 (hlrp.data.actions.pair_action); pairs "
            "with a missing or non-finite row have no action and are left out"
        ),
        **_side(pairs, rows),
    }
    if len(dims) > 1:
        out["note"] = f"action dims differ between clips; kept the {adim}-dim ones"

    # NMI on the evaluated pairs
    codes_id = np.unique(res["indices"][rows], axis=0, return_inverse=True)[1].reshape(-1)
    bins, joint, used_dims = tercile_ids(y)
    out["dims_used"] = used_dims
    if used_dims:
        value, chance = nmi_with_chance(codes_id, joint, NMI_CHANCE_PERMUTATIONS, cfg.seed)
        per_dim = [
            nmi_with_chance(codes_id, bins[:, c], NMI_CHANCE_PERMUTATIONS, cfg.seed)
            for c in range(bins.shape[1])
        ]
        out["nmi"] = {
            "nmi": value,
            "nmi_chance": chance,
            "nmi_per_dim": [v for v, _ in per_dim],
            "nmi_per_dim_mean": float(np.mean([v for v, _ in per_dim])),
            "nmi_per_dim_chance": float(np.mean([c for _, c in per_dim])),
        }
    else:
        out["nmi"] = {"nmi": None, "nmi_chance": None, "note": "no action dim varies"}
    out["nmi"].update(
        pairs=int(len(rows)),
        action_classes=int(len(np.unique(joint))),
        code_classes=int(len(np.unique(codes_id))),
        method=(
            "normalized_mutual_info_score (arithmetic) between the code sequence as one "
            "categorical label and the actions with every varying dim cut into 3 quantile bins, "
            "the bins combined into one id; *_chance: the same with the code labels permuted "
            f"(mean of {NMI_CHANCE_PERMUTATIONS})"
        ),
    )

    # probes: fit on the training videos, score on the evaluated (held-out) ones
    trows = _with_actions(train, adim)
    out["train"] = _side(train, trows)
    why = None
    if not heldout:
        why = "no held-out videos (data.val_split): nothing to score probes on"
    elif len(trows) < MIN_PROBE_PAIRS:
        why = f"{len(trows)} training pairs with actions (need >= {MIN_PROBE_PAIRS})"
    elif len(rows) < MIN_PROBE_PAIRS or out["videos"] < 2:
        why = (
            f"{len(rows)} held-out pairs with actions from {out['videos']} videos (need >= "
            f"{MIN_PROBE_PAIRS} pairs from >= 2 videos)"
        )
    if why is not None:
        out["probe"] = {
            "applicable": False,
            "note": f"probes not run: {why}",
            "r2": dict.fromkeys(PROBE_FEATURES),
        }
        return out
    ytr = np.stack([train.action[i] for i in trows]).astype(np.float64)
    names = ("indices", "z_pre", "pixels", "pixel_diff")
    ftr = _probe_features({n: train.feature(n) for n in names}, trows, size)
    fte = _probe_features(res, rows, size)
    gtr = np.array([train.video[i] for i in trows])
    gte = np.array([pairs.video[i] for i in rows])
    probes = {
        name: linear_probe(
            ftr[name],
            ytr,
            gtr,
            fte[name],
            y,
            gte,
            folds=cfg.probe_folds,
            bootstrap=cfg.probe_bootstrap,
            seed=cfg.seed,
            keep_predictions=True,
        )
        for name in PROBE_FEATURES
    }
    margins = {}
    for base in ("pixels", "pixel_diff"):  # paired: both probes on the same resampled videos
        a, b = probes["codes"]["predictions"], probes[base]["predictions"]
        if a is None or b is None:
            margins[base] = {"margin": None, "ci95": [None, None]}
            continue
        # the dims both score: group_bootstrap_margin leaves out unfitted (NaN) and constant ones
        margins[base] = group_bootstrap_margin(
            y, a, b, gte, n_boot=cfg.probe_bootstrap, seed=cfg.seed, floor_b=0.0
        )
    out["probe"] = {
        "applicable": True,
        "method": (
            "StandardScaler + Ridge fitted on the training-video pairs (penalty picked by "
            "GroupKFold over training videos), R² per action dim on the held-out pairs; r2: "
            "mean over the dims that vary; r2_ci95: bootstrap 95% interval over held-out videos "
            f"({cfg.probe_bootstrap} resamples); margin[base]: codes R² minus base R² (floored "
            "at 0: a base worse than the mean counts as the mean) on the dims both score, with "
            "the paired bootstrap interval (the same resampled videos)"
        ),
        "features": {
            name: f"{text}: {probes[name]['features']} values"
            for name, text in PROBE_FEATURES.items()
        },
        "r2": {name: p["r2"] for name, p in probes.items()},
        "r2_ci95": {name: p["r2_ci95"] for name, p in probes.items()},
        "r2_per_dim": {name: p["r2_per_dim"] for name, p in probes.items()},
        "margin": margins,
        "alpha": {name: p["alpha"] for name, p in probes.items()},
        "cv_r2": {name: p["cv_r2"] for name, p in probes.items()},
        "train_pairs": probes["codes"]["train_pairs"],
        "train_videos": probes["codes"]["train_groups"],
        "heldout_pairs": probes["codes"]["test_pairs"],
        "heldout_videos": probes["codes"]["test_groups"],
        "bootstrap": cfg.probe_bootstrap,
    }
    return out


def soft_warnings(report: dict) -> list[str]:
    """Problems worth a look that do not fail the gate."""
    out = []
    gain = report.get("reconstruction", {}).get("psnr_gain_db")
    if gain is not None and math.isfinite(gain) and gain <= 0:
        out.append(
            f"the LAQ predicts frame t+k {-gain:.2f} dB worse than copying frame t (undertrained?)"
        )
    r2 = report.get("actions", {}).get("probe", {}).get("r2") or {}
    codes, pix, diff = (r2.get(k) for k in ("codes", "pixels", "pixel_diff"))
    finite = [v for v in (codes, pix) if v is not None and math.isfinite(v)]
    if len(finite) == 2 and codes <= max(pix, 0.0):
        out.append(
            f"the codes do not predict the actions (held-out probe R² {codes:.3f}; frame t "
            f"alone: {pix:.3f})"
        )
    if codes is not None and diff is not None and math.isfinite(codes) and diff > codes:
        out.append(
            f"pooled pixel differences predict the actions better than the codes (held-out R² "
            f"{diff:.3f} vs {codes:.3f})"
        )
    return out
