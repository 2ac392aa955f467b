"""hlrp.common.probes: train/held-out linear probes, the group bootstrap, NMI, on known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hlrp.common.probes import (
    fit_probe,
    group_bootstrap_margin,
    group_bootstrap_r2,
    linear_probe,
    nmi,
    nmi_with_chance,
    r2_per_dim,
    tercile_ids,
)


def _data(rng, n, d=10, groups=40):
    x = rng.normal(size=(n, d))
    g = rng.integers(0, groups, size=n)
    return x, g


def test_linear_target_is_recovered_on_held_out_rows():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(10, 3))
    xtr, gtr = _data(rng, 600)
    xte, gte = _data(rng, 300)
    gte = gte + 1000  # other videos
    ytr = xtr @ w + 0.01 * rng.normal(size=(600, 3))
    yte = xte @ w + 0.01 * rng.normal(size=(300, 3))
    out = linear_probe(xtr, ytr, gtr, xte, yte, gte, bootstrap=300, seed=1)
    assert out["r2"] > 0.99 and all(v > 0.99 for v in out["r2_per_dim"])
    lo, hi = out["r2_ci95"]
    assert lo <= out["r2"] <= hi and hi - lo < 0.01
    assert out["train_pairs"] == 600 and out["test_pairs"] == 300 and out["test_groups"] == 40
    assert out["alpha"] in (1e-2, 1e-1, 1.0, 10.0)  # little shrinkage wins on a clean target
    assert "GroupKFold" in out["alpha_selection"] and out["cv_r2"] > 0.99


def test_noise_target_scores_at_most_zero():
    rng = np.random.default_rng(1)
    xtr, gtr = _data(rng, 400)
    xte, gte = _data(rng, 400)
    out = linear_probe(
        xtr, rng.normal(size=(400, 2)), gtr, xte, rng.normal(size=(400, 2)), gte, bootstrap=500
    )
    assert -0.1 < out["r2"] <= 0.02
    assert out["alpha"] >= 100  # CV on the training side prefers shrinking to the mean
    lo, hi = out["r2_ci95"]
    assert lo <= out["r2"] <= hi


def test_overfitting_frame_probe_is_caught_by_held_out_scoring():
    """Features that identify the training video fit the training side but not new videos."""
    rng = np.random.default_rng(2)
    vids = np.repeat(np.arange(20), 10)
    video_code = rng.normal(size=(20, 30))
    per_video_target = rng.normal(size=(20, 1))
    x = video_code[vids] + 0.01 * rng.normal(size=(200, 30))
    y = per_video_target[vids]
    xte = rng.normal(size=(100, 30))  # new videos: new scenes
    yte = rng.normal(size=(100, 1))
    out = linear_probe(x, y, vids, xte, yte, np.repeat(np.arange(10), 10), bootstrap=200)
    assert out["r2"] < 0.05


def test_constant_dims_and_unfittable_cases():
    rng = np.random.default_rng(3)
    xtr, gtr = _data(rng, 200)
    xte, gte = _data(rng, 100)
    ytr = np.stack([xtr[:, 0], np.ones(200)], 1)
    yte = np.stack([xte[:, 0], np.ones(100)], 1)
    out = linear_probe(xtr, ytr, gtr, xte, yte, gte, bootstrap=50)
    assert out["r2_per_dim"][0] > 0.99 and math.isnan(out["r2_per_dim"][1])
    assert out["r2"] == pytest.approx(out["r2_per_dim"][0])
    # one held-out group: a point estimate but no interval
    one = linear_probe(xtr, ytr, gtr, xte, yte, np.zeros(100), bootstrap=50)
    assert one["r2"] > 0.99 and one["r2_ci95"] == [None, None]
    # one training group: no CV, the first alpha
    _, sel = fit_probe(xtr, ytr[:, :1], np.zeros(200), alphas=(0.5, 5.0))
    assert sel["alpha"] == 0.5 and sel["cv_r2"] is None
    # non-finite rows are dropped
    yte[:5] = np.nan
    assert linear_probe(xtr, ytr, gtr, xte, yte, gte, bootstrap=0)["test_pairs"] == 95
    # nothing to fit
    flat = linear_probe(xtr, np.ones((200, 1)), gtr, xte, np.ones((100, 1)), gte)
    assert math.isnan(flat["r2"]) and flat["alpha"] is None


def test_group_bootstrap():
    rng = np.random.default_rng(4)
    y = rng.normal(size=(500, 2))
    g = np.repeat(np.arange(50), 10)
    pred = y + 0.5 * rng.normal(size=(500, 2))
    point = float(np.nanmean(r2_per_dim(y, pred)))
    lo, hi = group_bootstrap_r2(y, pred, g, n_boot=2000, seed=0)
    assert lo < point < hi and 0.0 < hi - lo < 0.2
    assert group_bootstrap_r2(y, pred, g, n_boot=2000, seed=0) == (lo, hi)  # seeded
    # a replicate drawing every group once is the point estimate: check the sums are right
    one = group_bootstrap_r2(y, pred, np.zeros(500), n_boot=10)
    assert one == (None, None)
    # wider with fewer groups
    lo2, hi2 = group_bootstrap_r2(y, pred, np.repeat(np.arange(5), 100), n_boot=2000)
    assert hi2 - lo2 > hi - lo


def test_group_bootstrap_margin_is_paired():
    """Two probes whose R² differ a little, each with a wide interval over few groups: the paired
    interval of their difference is narrow and excludes 0, the separate intervals overlap."""
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(8), 60)
    scale = np.repeat(rng.uniform(0.2, 3.0, size=8), 60)[:, None]  # groups differ a lot
    y = scale * rng.normal(size=(480, 3))
    noise = rng.normal(size=(480, 3))
    better, worse = y + 0.4 * noise, y + 0.5 * noise
    out = group_bootstrap_margin(y, better, worse, g, n_boot=2000, seed=0)
    point = np.mean(r2_per_dim(y, better)) - np.mean(r2_per_dim(y, worse))
    assert out["margin"] == pytest.approx(point) and point > 0
    lo, hi = out["ci95"]
    assert 0 < lo <= point <= hi
    (blo, bhi), (wlo, whi) = (group_bootstrap_r2(y, p, g, n_boot=2000) for p in (better, worse))
    assert blo < whi  # the separate intervals overlap: they cannot tell
    assert hi - lo < 0.7 * (bhi - blo)
    # the same prediction: margin 0 exactly; dims restricted; too few groups: no interval
    same = group_bootstrap_margin(y, better, better, g, n_boot=200)
    assert same == {"margin": 0.0, "ci95": [0.0, 0.0]}
    only0 = group_bootstrap_margin(y, better, worse, g, np.array([True, False, False]))
    r2b, r2w = r2_per_dim(y, better)[0], r2_per_dim(y, worse)[0]
    assert only0["margin"] == pytest.approx(r2b - r2w)
    assert group_bootstrap_margin(y, better, worse, np.zeros(480))["ci95"] == [None, None]
    # a baseline worse than the mean counts as the mean with floor_b=0: a constant prediction
    # (R² <= 0) cannot beat it by overfitting less
    mean_pred = np.broadcast_to(y.mean(0), y.shape)
    overfit = y + 3.0 * noise  # R² well below 0
    assert np.mean(r2_per_dim(y, overfit)) < -1
    raw = group_bootstrap_margin(y, mean_pred, overfit, g, n_boot=500)
    floored = group_bootstrap_margin(y, mean_pred, overfit, g, n_boot=500, floor_b=0.0)
    assert raw["ci95"][0] > 1 and floored["margin"] == pytest.approx(0.0, abs=1e-12)
    assert floored["ci95"][1] <= 1e-12
    assert group_bootstrap_margin(y, better, worse, g, n_boot=2000, floor_b=0.0) == out
    nan_dim = worse.copy()
    nan_dim[:, 1] = np.nan  # a dim a probe did not fit is left out
    part = group_bootstrap_margin(y, better, nan_dim, g)
    r2b, r2w = r2_per_dim(y, better), r2_per_dim(y, worse)
    assert part["margin"] == pytest.approx(np.mean(r2b[[0, 2]]) - np.mean(r2w[[0, 2]]))
    flat = np.ones((5, 1))  # no dim varies: no margin
    assert math.isnan(group_bootstrap_margin(flat, flat, 0 * flat, np.arange(5))["margin"])


def test_r2_per_dim():
    y = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    r2 = r2_per_dim(y, y)
    assert r2[0] == 1.0 and math.isnan(r2[1])
    assert r2_per_dim(y, np.full_like(y, 1.0))[0] == pytest.approx(0.0)


def test_nmi():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=5000)
    assert nmi(a, a) == pytest.approx(1.0)
    assert nmi(a, (a + 2) % 5) == pytest.approx(1.0)  # renaming labels changes nothing
    assert nmi(a, rng.integers(0, 5, size=5000)) < 0.01
    assert nmi(np.zeros(10), np.zeros(10)) == 1.0 and nmi(np.zeros(10), np.arange(10)) == 0.0
    rows = np.stack([a, a % 2], 1)  # a 2-D labeling: one label per row
    assert nmi(rows, a) == pytest.approx(1.0)
    value, chance = nmi_with_chance(a, a, permutations=3, seed=0)
    assert value == pytest.approx(1.0) and chance < 0.01
    with pytest.raises(ValueError):
        nmi(a, a[:10])


def test_tercile_ids():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(300, 3))
    y[:, 2] = 1.0  # constant dim: not binned
    bins, joint, dims = tercile_ids(y)
    assert dims == [0, 1] and bins.max() == 2 and len(np.unique(joint)) == 9
    assert np.bincount(bins[:, 0]).min() >= 90  # terciles
