"""Figures of the LAQ report (``figures/*.png``): code usage, PSNR, action probes, examples.

Drawn with matplotlib's object API (no pyplot state), each written atomically.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from hlrp.common.io import atomic_open
from hlrp.common.metrics import psnr
from hlrp.laq.report_html import PROBE_LABELS, fmt

__all__ = ["write_figures"]


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


def write_figures(
    report: dict, res: dict, pairs: Any, keep: list[int], partner: np.ndarray, fig_dir: Path
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
        d = psnr(res["mse_own"]) - psnr(res["mse_shuffled"])
        ax2.hist(d, bins=30, color="tab:red", alpha=0.8)
        ax2.axvline(0, color="black", lw=1)
    ax2.set_xlabel("per-pair PSNR drop, own - shuffled codes (dB)")
    ax2.set_ylabel("pairs")
    _save(fig, fig_dir / "psnr.png")
    figs["psnr"] = "figures/psnr.png"

    # probes
    probe = report.get("actions", {}).get("probe") or {}
    r2 = probe.get("r2") if probe.get("applicable") else None
    if r2 and any(fmt(v) != "n/a" for v in r2.values()):
        act = report["actions"]
        fig = Figure(figsize=(6.5, 3.8), layout="constrained")
        ax = fig.subplots()
        names = list(PROBE_LABELS)
        raw = [r2.get(k) for k in names]
        shown = [max(-0.5, v) if v is not None else 0.0 for v in raw]
        ci = probe.get("r2_ci95") or {}
        lo = [max(-0.5, (ci.get(k) or [None])[0] or s) for k, s in zip(names, shown)]
        hi = [max(-0.5, (ci.get(k) or [None, None])[1] or s) for k, s in zip(names, shown)]
        err = np.array(
            [
                [max(0.0, s - a) for s, a in zip(shown, lo)],
                [max(0.0, b - s) for s, b in zip(shown, hi)],
            ]
        )
        labels = ["\n".join(textwrap.wrap(PROBE_LABELS[k], 16)) for k in names]
        bars = ax.bar(
            labels, shown, yerr=err, capsize=4, color=["tab:blue", "tab:cyan", "grey", "silver"]
        )
        for b, v in zip(bars, raw):
            ax.text(
                b.get_x() + b.get_width() / 2,
                max(b.get_height(), 0),
                "n/a" if v is None else f"{v:.3f}",
                ha="left",
                va="bottom",
                fontsize=8,
            )
        ax.axhline(0, color="black", lw=1)
        ax.set_ylim(-0.5, 1.05)
        ax.set_ylabel("held-out R² (mean over action dims)")
        nm = act.get("nmi", {})
        ax.set_title(
            f"linear probes -> actions: fitted on {probe.get('train_pairs')} training pairs "
            f"({probe.get('train_videos')} videos),\nscored on {probe.get('heldout_pairs')} "
            f"held-out pairs ({probe.get('heldout_videos')} videos); whiskers: 95% interval\n"
            f"NMI(codes, actions) {fmt(nm.get('nmi'))} (chance {fmt(nm.get('nmi_chance'))})",
            fontsize=8,
        )
        ax.tick_params(axis="x", labelsize=7)
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
            own_p = psnr(res["mse_own"][i])
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
                    p = psnr(res["mse_shuffled"][i])
                    ax.set_xlabel(f"{idx[partner[i]].tolist()}  {p:.1f} dB", fontsize=8)
            name = "\n".join(textwrap.wrap(pairs.clip[i], 22)[:3])
            axes[r, 0].set_ylabel(f"{name}\nt={pairs.t[i]} k={pairs.k[i]}", fontsize=6)
        _save(fig, fig_dir / "examples.png")
        figs["examples"] = "figures/examples.png"
    return figs
