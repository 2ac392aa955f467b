"""Linear probes and normalised mutual information: how much of a target some features hold.

Stage-independent: the LAQ report probes latent codes for ground-truth actions, a later stage
probes its own features the same way.

Protocol (as LAPO / LAOM measure latent actions): a probe is FITTED on training pairs and
SCORED on held-out pairs from other videos; the held-out side is never used to fit or to tune.

* :func:`fit_probe`: standardised features -> ridge regression (scikit-learn ``StandardScaler``
  + ``Ridge``). The penalty is chosen from ``alphas`` by grouped cross-validation over the
  TRAINING groups (``GroupKFold``: all pairs of a video in one fold), scored by mean R².
* :func:`linear_probe`: fit on the training side, R² per target dimension on the held-out side
  (``r2_score``), their mean over the dims that vary, and a bootstrap 95 % interval of that mean
  over held-out GROUPS (videos resampled with replacement, seeded).
* :func:`group_bootstrap_margin`: the same interval for the difference of two probes' mean R²
  on the same rows, both scored on the same resampled groups (paired): "A beats B" with error
  bars, where two separate intervals would overlap.
* :func:`nmi` / :func:`nmi_with_chance`: scikit-learn's ``normalized_mutual_info_score``
  (arithmetic normalisation) between two labelings (rows of a 2-D array are one label), and the
  same with one labeling permuted - the chance level to compare against.
* :func:`tercile_ids`: continuous targets cut into quantile bins for NMI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.metrics import normalized_mutual_info_score, r2_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "DEFAULT_ALPHAS",
    "fit_probe",
    "linear_probe",
    "r2_per_dim",
    "group_bootstrap_r2",
    "group_bootstrap_margin",
    "nmi",
    "nmi_with_chance",
    "tercile_ids",
]

DEFAULT_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)  # ridge penalties tried
VARY_EPS = 1e-12  # a target dim whose spread is below this (relative) is constant


def _as_2d(a: np.ndarray | Sequence) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[:, None] if a.ndim == 1 else a.reshape(len(a), -1)


def _varies(y: np.ndarray) -> np.ndarray:
    """Bool (m,): target dims that are not constant over the rows of y (n, m)."""
    if len(y) == 0:
        return np.zeros(y.shape[1], dtype=bool)
    scale = max(1.0, float(np.abs(y).max()))
    return np.ptp(y, axis=0) > VARY_EPS * scale


def fit_probe(
    x: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | Sequence,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    folds: int = 5,
) -> tuple[Pipeline, dict[str, Any]]:
    """A ridge probe x (n, d) -> y (n, m) fitted on these rows only; the penalty picked by CV.

    The penalty is chosen from ``alphas`` by ``min(folds, groups)``-fold ``GroupKFold`` over
    ``groups`` (mean R² over the dims); with fewer than 2 groups or one alpha the first alpha
    (or the only one) is used as given. Returns the refitted pipeline and
    ``{"alpha", "alpha_selection", "cv_r2"}``.
    """
    x, y = _as_2d(x), _as_2d(y)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("fit_probe needs at least one ridge penalty (alphas)")
    pipe = make_pipeline(StandardScaler(), Ridge())
    if len(alphas) == 1 or n_groups < 2:
        pipe.set_params(ridge__alpha=alphas[0]).fit(x, y)
        why = "given" if len(alphas) == 1 else "fewer than 2 training groups: first alpha"
        return pipe, {"alpha": alphas[0], "alpha_selection": why, "cv_r2": None}
    search = GridSearchCV(
        pipe,
        {"ridge__alpha": alphas},
        cv=GroupKFold(n_splits=min(folds, n_groups)),
        scoring="r2",
        refit=True,
    )
    search.fit(x, y, groups=groups)
    best = float(search.best_params_["ridge__alpha"])
    return search.best_estimator_, {
        "alpha": best,
        "alpha_selection": f"{search.n_splits_}-fold GroupKFold over the training groups",
        "cv_r2": float(search.best_score_),
    }


def r2_per_dim(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """R² of each target dim (sklearn ``r2_score``, raw values); NaN for dims constant in y."""
    y, pred = _as_2d(y), _as_2d(pred)
    out = np.full(y.shape[1], np.nan)
    ok = _varies(y)
    if ok.any() and len(y) >= 2:
        out[ok] = r2_score(y[:, ok], pred[:, ok], multioutput="raw_values")
    return out


def _bootstrap_means(
    y: np.ndarray,
    preds: Sequence[np.ndarray],
    groups: np.ndarray | Sequence,
    dims: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> np.ndarray | None:
    """(B, len(preds)) mean R² over ``dims`` of each prediction in each group-bootstrap replicate.

    All predictions are scored on the same replicates (the draws depend only on the groups,
    ``n_boot`` and ``seed``); replicates where no dim varies are dropped. None with fewer than 2
    groups, no replicates or none kept.
    """
    y = _as_2d(y)
    groups = np.asarray(groups)
    uniq, gid = np.unique(groups, return_inverse=True)
    G = len(uniq)
    if G < 2 or n_boot < 1:
        return None
    dims = np.ones(y.shape[1], dtype=bool) if dims is None else np.asarray(dims, dtype=bool)
    y = y[:, dims]
    n_g = np.bincount(gid, minlength=G).astype(np.float64)  # (G,)
    s1 = np.zeros((G, y.shape[1]))
    s2 = np.zeros_like(s1)
    np.add.at(s1, gid, y)
    np.add.at(s2, gid, y**2)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, G, size=(n_boot, G))  # (B, G) group drawn per slot
    counts = np.zeros((n_boot, G))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1.0)  # (B, G) times each group drawn
    N = counts @ n_g  # (B,)
    S1, S2 = counts @ s1, counts @ s2  # (B, m)
    ss_tot = S2 - S1**2 / N[:, None]
    scale = np.maximum(1.0, np.abs(y).max(initial=0.0)) ** 2
    ok = ss_tot > 1e-9 * scale * N[:, None]
    keep = ok.any(1)
    if not keep.any():
        return None
    means = []
    for pred in preds:
        res = np.zeros_like(s1)
        np.add.at(res, gid, (y - _as_2d(pred)[:, dims]) ** 2)
        r2 = np.where(ok, 1.0 - (counts @ res) / np.where(ok, ss_tot, 1.0), np.nan)
        means.append(np.nanmean(r2[keep], axis=1))
    return np.stack(means, axis=1)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def group_bootstrap_r2(
    y: np.ndarray,
    pred: np.ndarray,
    groups: np.ndarray | Sequence,
    dims: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float | None, float | None]:
    """Bootstrap ``level`` interval of the mean R² over ``dims``, resampling whole groups.

    Each replicate draws the groups with replacement (a group drawn twice counts twice),
    recomputes each dim's R² on the pooled rows and averages over the dims in ``dims`` (bool (m,);
    default all) that vary in the replicate. Uses per-group sums, so 1000 replicates are cheap.
    Returns (low, high), or (None, None) with fewer than 2 groups or no replicates.
    """
    means = _bootstrap_means(y, [pred], groups, dims, n_boot, seed)
    return (None, None) if means is None else _interval(means[:, 0], level)


def group_bootstrap_margin(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    groups: np.ndarray | Sequence,
    dims: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    floor_b: float | None = None,
) -> dict[str, Any]:
    """Mean R² of ``pred_a`` minus that of ``pred_b`` on the same rows, with a paired interval.

    Both are scored on every group-bootstrap replicate of :func:`group_bootstrap_r2`, and the
    interval is that of the per-replicate difference. With ``floor_b``, ``pred_b``'s mean R² is
    raised to at least ``floor_b`` (0: a baseline worse than predicting the mean counts as the
    mean, so ``pred_a`` cannot beat it by overfitting less). Dims where either prediction is
    not finite are left out, as are dims that do not vary. Returns ``margin`` (on all rows;
    NaN when no dim is left) and ``ci95`` ([None, None] with fewer than 2 groups or no dim).
    """
    y = _as_2d(y)
    pa, pb = _as_2d(pred_a), _as_2d(pred_b)
    dims = np.ones(y.shape[1], dtype=bool) if dims is None else np.asarray(dims, dtype=bool)
    ok = dims & _varies(y) & np.isfinite(pa).all(0) & np.isfinite(pb).all(0)
    if not ok.any() or len(y) < 2:
        return {"margin": float("nan"), "ci95": [None, None]}
    low = -np.inf if floor_b is None else floor_b
    ra = np.mean(r2_per_dim(y[:, ok], pa[:, ok]))
    rb = max(np.mean(r2_per_dim(y[:, ok], pb[:, ok])), low)
    means = _bootstrap_means(y, [pa, pb], groups, ok, n_boot, seed)
    ci = (
        [None, None]
        if means is None
        else list(_interval(means[:, 0] - np.maximum(means[:, 1], low), level))
    )
    return {"margin": float(ra - rb), "ci95": ci}


def linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups_train: np.ndarray | Sequence,
    x_test: np.ndarray,
    y_test: np.ndarray,
    groups_test: np.ndarray | Sequence,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    folds: int = 5,
    bootstrap: int = 1000,
    seed: int = 0,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Fit a ridge probe on the training rows, score it on the held-out rows.

    Rows with a non-finite feature or target are dropped on both sides. Target dims constant on
    the training side are not fitted (their R² is NaN); dims constant on the held-out side have
    no R² either. Returns (JSON-ready; NaN where undefined):

    * ``r2``: mean held-out R² over the dims that have one; ``r2_per_dim``: per target dim;
    * ``r2_ci95``: [low, high] bootstrap interval of ``r2`` over held-out groups (``bootstrap``
      replicates, ``seed``), [None, None] with fewer than 2 held-out groups;
    * ``alpha``, ``alpha_selection``, ``cv_r2`` (from :func:`fit_probe`), ``features``,
      ``train_pairs``, ``train_groups``, ``test_pairs``, ``test_groups``;
    * with ``keep_predictions``: ``predictions``, the (n, m) array predicted for the held-out
      rows (NaN for dims not fitted; None when the probe was not fitted, or when a row was
      dropped for a non-finite value, so that it lines up with ``y_test`` or is absent).
    """
    xtr, ytr, xte, yte = _as_2d(x_train), _as_2d(y_train), _as_2d(x_test), _as_2d(y_test)
    gtr, gte = np.asarray(groups_train), np.asarray(groups_test)
    if xtr.shape[1] != xte.shape[1] or ytr.shape[1] != yte.shape[1]:
        raise ValueError(
            f"train and test shapes differ: x {xtr.shape} vs {xte.shape}, y {ytr.shape} vs "
            f"{yte.shape}"
        )
    ok = np.isfinite(xtr).all(1) & np.isfinite(ytr).all(1)
    xtr, ytr, gtr = xtr[ok], ytr[ok], gtr[ok]
    ok = np.isfinite(xte).all(1) & np.isfinite(yte).all(1)
    all_test_rows = bool(ok.all())
    xte, yte, gte = xte[ok], yte[ok], gte[ok]
    m = ytr.shape[1]
    out: dict[str, Any] = {
        "features": int(xtr.shape[1]),
        "train_pairs": int(len(ytr)),
        "train_groups": int(len(np.unique(gtr))),
        "test_pairs": int(len(yte)),
        "test_groups": int(len(np.unique(gte))),
    }
    fitted = _varies(ytr)
    if len(ytr) < 2 or len(yte) < 2 or not fitted.any():
        out.update(
            r2=float("nan"),
            r2_per_dim=[float("nan")] * m,
            r2_ci95=[None, None],
            alpha=None,
            alpha_selection="not fitted (too few rows, or no target dim varies in training)",
            cv_r2=None,
        )
        if keep_predictions:
            out["predictions"] = None
        return out
    model, sel = fit_probe(xtr, ytr[:, fitted], gtr, alphas, folds)
    pred = np.full_like(yte, np.nan)
    pred[:, fitted] = _as_2d(model.predict(xte))
    r2 = np.full(m, np.nan)
    r2[fitted] = r2_per_dim(yte[:, fitted], pred[:, fitted])
    scored = np.isfinite(r2)
    lo, hi = (None, None)
    if scored.any():
        lo, hi = group_bootstrap_r2(yte, pred, gte, scored, bootstrap, seed)
    out.update(
        r2=float(r2[scored].mean()) if scored.any() else float("nan"),
        r2_per_dim=[float(v) for v in r2],
        r2_ci95=[lo, hi],
        **sel,
    )
    if keep_predictions:
        out["predictions"] = pred if all_test_rows else None
    return out


def _labels(a: np.ndarray | Sequence) -> np.ndarray:
    """Integer label per row (rows of a 2-D array are one label)."""
    a = np.asarray(a)
    if a.ndim == 1:
        return np.unique(a, return_inverse=True)[1].reshape(-1)
    return np.unique(a.reshape(len(a), -1), axis=0, return_inverse=True)[1].reshape(-1)


def nmi(a: np.ndarray | Sequence, b: np.ndarray | Sequence) -> float:
    """Normalised mutual information I(a; b) / mean(H(a), H(b)) of two labelings.

    scikit-learn's ``normalized_mutual_info_score`` (arithmetic). Labels may be any values; the
    rows of a 2-D array are one label each. 1 for identical partitions, ~0 for independent ones
    (biased upward with few samples per category: compare with :func:`nmi_with_chance`); 1 when
    both are constant, 0 when only one is; NaN for no samples.
    """
    la, lb = _labels(a), _labels(b)
    if len(la) != len(lb):
        raise ValueError(f"labelings differ in length: {len(la)} vs {len(lb)}")
    if len(la) == 0:
        return float("nan")
    return float(normalized_mutual_info_score(la, lb, average_method="arithmetic"))


def nmi_with_chance(
    a: np.ndarray | Sequence, b: np.ndarray | Sequence, permutations: int = 5, seed: int = 0
) -> tuple[float, float]:
    """(NMI(a, b), mean NMI with a's labels permuted over the rows: the chance level)."""
    la = _labels(a)
    rng = np.random.default_rng(seed)
    chance = [nmi(rng.permutation(la), b) for _ in range(max(1, permutations))]
    return nmi(la, b), float(np.mean(chance))


def tercile_ids(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Each target dim that varies cut into 3 quantile bins: (bins (n, d'), joint id (n,), dims).

    Values equal to a bin edge go to the upper bin (so a saturated dim may fill fewer bins).
    """
    y = _as_2d(y)
    dims = [int(j) for j in np.flatnonzero(_varies(y))]
    bins = np.zeros((len(y), len(dims)), dtype=np.int64)
    for c, j in enumerate(dims):
        edges = np.quantile(y[:, j], [1 / 3, 2 / 3])
        bins[:, c] = np.digitize(y[:, j], edges)
    if not dims:
        return bins, np.zeros(len(y), dtype=np.int64), dims
    return bins, _labels(bins), dims
