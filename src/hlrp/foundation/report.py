"""The foundation report: how well the VLA predicts latent actions on held-out videos.

    python -m hlrp.foundation.report model_dir=results/foundation/model \\
        data.labels=results/labels/index.json output_dir=results/foundation_report

Protocol: the pairs of the held-out videos (``foundation.data.val_split``, the split function
every stage uses) are labelled by the LAQ; the model writes their codes by constrained greedy
generation from frame t and the instruction alone. Scores: per-token accuracy (each of the L
positions and their mean) and full-sequence accuracy, against two baselines computed from the
*training* pairs and scored on the same held-out pairs:

* ``majority``: the most frequent code sequence of the training pairs, for every pair;
* ``instruction``: the most frequent training sequence of the pair's instruction (a model that
  reads the text and ignores the image; the overall majority for an unseen instruction).

Both are counted on the training pairs in file order, at most ``report.baseline_pairs`` of
them (a million by default: one pass over the label shards of a large corpus is not needed
to find a majority).

Also: accuracy per task, a confusion matrix of the codes per position, calibration (the
probability of the chosen code against how often it is right; expected calibration error),
and 95 % intervals over held-out videos (bootstrap) for the model's margin over the better
baseline. Writes ``report.json``, ``report.html`` and ``figures/*.png`` (atomically).
"""

from __future__ import annotations

import base64
import html
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from hlrp.common.cli import run
from hlrp.common.config import FoundationReportConfig, RootConfig
from hlrp.common.io import write_json, write_text
from hlrp.common.logging import get_logger
from hlrp.common.plots import save_png
from hlrp.foundation.data import Collator, held_out, open_labels, training_pairs
from hlrp.foundation.export import load_foundation

log = get_logger("foundation.report")


def majority_baselines(pairs) -> tuple[tuple[int, ...], dict[str, tuple[int, ...]]]:
    """The most frequent code sequence overall and per instruction (ties: the smallest)."""
    overall: Counter = Counter()
    per: dict[str, Counter] = defaultdict(Counter)
    for it in pairs:
        seq = tuple(it["meta"]["codes"])
        overall[seq] += 1
        per[it["meta"].get("instruction", "")][seq] += 1

    def top(c: Counter) -> tuple[int, ...]:
        best = max(c.values())
        return min(s for s, n in c.items() if n == best)

    if not overall:
        raise ValueError("no training pairs to compute the baselines from")
    return top(overall), {k: top(v) for k, v in per.items()}


def scores(pred: np.ndarray, gold: np.ndarray) -> dict[str, Any]:
    """Per-token (each position, mean) and full-sequence accuracy of (N, L) code arrays."""
    hit = pred == gold
    return {
        "token_acc": float(hit.mean()) if hit.size else float("nan"),
        "token_acc_per_position": [float(x) for x in hit.mean(0)] if hit.size else [],
        "seq_acc": float(hit.all(1).mean()) if hit.size else float("nan"),
    }


def bootstrap_margin(
    model_hit: np.ndarray, base_hit: np.ndarray, videos: np.ndarray, n: int, seed: int
) -> list[float]:
    """95 % interval of mean(model_hit - base_hit), resampling whole held-out videos."""
    uniq = np.unique(videos)
    if n <= 0 or len(uniq) < 2:
        return [float("nan"), float("nan")]
    diff = model_hit.astype(float) - base_hit.astype(float)
    by_video = [diff[videos == v] for v in uniq]
    sums = np.array([d.sum() for d in by_video])
    counts = np.array([len(d) for d in by_video])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(uniq), size=(n, len(uniq)))
    means = sums[idx].sum(1) / counts[idx].sum(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def calibration(conf: np.ndarray, correct: np.ndarray, bins: int) -> dict[str, Any]:
    edges = np.linspace(0, 1, bins + 1)
    rows, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        if m.any():
            acc, mean_conf = float(correct[m].mean()), float(conf[m].mean())
            ece += m.mean() * abs(acc - mean_conf)
            rows.append({"lo": lo, "hi": hi, "n": int(m.sum()), "acc": acc, "conf": mean_conf})
    return {"bins": rows, "ece": float(ece)}


@torch.no_grad()
def predict_pairs(vla, pairs, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    collate = Collator.for_model(vla, append_codes=False)
    device = next(vla.parameters()).device
    codes, probs = [], []
    for i in tqdm(range(0, len(pairs), batch_size), desc="foundation_report", unit="batch"):
        batch = {k: v.to(device) for k, v in collate(pairs[i : i + batch_size]).items()}
        c, p = vla.predict(batch)
        codes.append(c.cpu().numpy())
        probs.append(p.cpu().numpy())
    return np.concatenate(codes), np.concatenate(probs)


def evaluate(
    model_dir: str, labels_index: str, val_split: float, cfg: FoundationReportConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Scores of the model and the baselines on held-out pairs; (report, arrays for figures)."""
    t0 = time.perf_counter()
    labels = open_labels(labels_index, None)
    vla = load_foundation(model_dir)
    if vla.meta.laq_hash and vla.meta.laq_hash != labels.laq_hash:
        raise ValueError(
            f"{model_dir} learnt from the codes of LAQ {vla.meta.laq_hash[:16]}..., but "
            f"{labels_index} holds codes of LAQ {labels.laq_hash[:16]}...: they are different "
            "vocabularies"
        )
    if torch.cuda.is_available():
        vla = vla.cuda()
    vla.eval()
    pairs = held_out(labels.shards, val_split, cfg.max_pairs)
    if not pairs:
        raise ValueError(
            f"{labels_index}: no held-out pairs (data.val_split={val_split}): nothing to report on"
        )
    majority, per_instruction = majority_baselines(
        training_pairs(labels.shards, val_split, cfg.baseline_pairs)
    )
    gold = np.array([it["meta"]["codes"] for it in pairs])  # (N, L)
    pred, prob = predict_pairs(vla, pairs, cfg.batch_size)
    instr = [it["meta"].get("instruction", "") for it in pairs]
    tasks = np.array(
        [it["meta"].get("task", "") or it["meta"].get("instruction", "") for it in pairs]
    )
    videos = np.array([it["meta"]["video_id"] for it in pairs])
    base = {
        "majority": np.tile(np.array(majority), (len(pairs), 1)),
        "instruction": np.array([per_instruction.get(s, majority) for s in instr]),
    }
    result = {"model": scores(pred, gold), **{k: scores(v, gold) for k, v in base.items()}}
    best = max(base, key=lambda k: result[k]["token_acc"])
    margins = {
        metric: bootstrap_margin(
            (pred == gold).mean(1) if metric == "token_acc" else (pred == gold).all(1),
            (base[best] == gold).mean(1) if metric == "token_acc" else (base[best] == gold).all(1),
            videos,
            cfg.bootstrap,
            cfg.seed,
        )
        for metric in ("token_acc", "seq_acc")
    }
    per_task = {}
    for task in sorted(set(tasks)):
        m = tasks == task
        per_task[str(task)] = {
            "pairs": int(m.sum()),
            "model": scores(pred[m], gold[m]),
            "instruction": scores(base["instruction"][m], gold[m]),
        }
    K, L = vla.meta.codebook_size, vla.meta.code_seq_len
    confusion = np.zeros((L, K, K), dtype=np.int64)
    for j in range(L):
        np.add.at(confusion[j], (gold[:, j], pred[:, j]), 1)
    calib = calibration(prob.ravel(), (pred == gold).ravel(), cfg.calibration_bins)
    beats = {
        k: result["model"]["token_acc"] > result[k]["token_acc"]
        and result["model"]["seq_acc"] >= result[k]["seq_acc"]
        for k in base
    }
    report = {
        "model_dir": str(model_dir),
        "labels": str(labels_index),
        "labels_key": labels.labels_key,
        "laq_hash": labels.laq_hash,
        "family": vla.family.name,
        "backbone": vla.meta.backbone,
        "global_step": vla.meta.global_step,
        "vocabulary": {"codebook_size": K, "code_seq_len": L},
        "protocol": (
            f"held-out videos (val_split={val_split:g}); constrained greedy generation from frame t and "
            "the instruction; baselines from the training pairs"
        ),
        "held_out": {"pairs": len(pairs), "videos": int(len(set(videos)))},
        "scores": result,
        "better_baseline": best,
        "margin_over_better_baseline_ci95": margins,
        "beats": beats,
        "per_task": per_task,
        "calibration": calib,
        "mean_confidence": float(prob.mean()),
        "confusion": confusion.tolist(),
        "majority_sequence": list(majority),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    report["verdict"] = verdict(report)
    return report, {"confusion": confusion, "calibration": calib}


def verdict(r: dict[str, Any]) -> str:
    s = r["scores"]
    m, best = s["model"], r["better_baseline"]
    lo, hi = r["margin_over_better_baseline_ci95"]["token_acc"]
    text = (
        f"per-token accuracy {m['token_acc']:.3f} (majority {s['majority']['token_acc']:.3f}, "
        f"instruction-only {s['instruction']['token_acc']:.3f}); full sequence "
        f"{m['seq_acc']:.3f} (majority {s['majority']['seq_acc']:.3f}, instruction-only "
        f"{s['instruction']['seq_acc']:.3f}); margin over the {best} baseline per token "
        f"[{lo:+.3f}, {hi:+.3f}] (95 % over held-out videos)"
    )
    if all(r["beats"].values()):
        if lo > 0:
            return "The model beats both baselines: " + text
        return "The model scores above both baselines, within noise of the better one: " + text
    return (
        "The model does NOT beat both baselines: " + text + ". The image adds nothing the "
        "instruction does not already say; see the per-task table and the confusion matrices"
    )


# --------------------------------------------------------------------------------------
# figures and page
# --------------------------------------------------------------------------------------
def write_figures(report: dict[str, Any], arrays: dict[str, Any], out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figs: dict[str, str] = {}

    def save(fig, name: str) -> None:
        save_png(fig, out / name, dpi=100)
        figs[name.removesuffix(".png")] = f"{out.name}/{name}"

    s = report["scores"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = ["model", "instruction", "majority"]
    x = np.arange(2)
    for i, n in enumerate(names):
        ax.bar(x + (i - 1) * 0.27, [s[n]["token_acc"], s[n]["seq_acc"]], 0.27, label=n)
    ax.set_xticks(x, ["per-token", "full sequence"])
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("model vs baselines (held-out videos)")
    save(fig, "accuracy.png")

    tasks = list(report["per_task"])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks)), 3.5))
    x = np.arange(len(tasks))
    pt = report["per_task"]
    ax.bar(x - 0.2, [pt[t]["model"]["token_acc"] for t in tasks], 0.4, label="model")
    ax.bar(x + 0.2, [pt[t]["instruction"]["token_acc"] for t in tasks], 0.4, label="instruction")
    ax.set_xticks(x, tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("per-token accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("per task")
    save(fig, "per_task.png")

    conf = arrays["confusion"]
    L = conf.shape[0]
    fig, axes = plt.subplots(1, L, figsize=(3.2 * L, 3.2), squeeze=False)
    for j, ax in enumerate(axes[0]):
        rows = conf[j] / np.maximum(1, conf[j].sum(1, keepdims=True))
        ax.imshow(rows, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"position {j}")
        ax.set_xlabel("predicted code")
        ax.set_ylabel("LAQ code")
    save(fig, "confusion.png")

    cal = arrays["calibration"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    if cal["bins"]:
        ax.plot([b["conf"] for b in cal["bins"]], [b["acc"] for b in cal["bins"]], "o-")
    ax.set_xlabel("probability of the chosen code")
    ax.set_ylabel("accuracy")
    ax.set_title(f"calibration (ECE {cal['ece']:.3f})")
    save(fig, "calibration.png")
    return figs


def render_html(report: dict[str, Any], figures: dict[str, str], out_dir: Path) -> str:
    e = html.escape
    s = report["scores"]
    rows = "".join(
        f"<tr><td>{e(n)}</td><td>{s[n]['token_acc']:.3f}</td><td>{s[n]['seq_acc']:.3f}</td>"
        f"<td>{', '.join(f'{a:.3f}' for a in s[n]['token_acc_per_position'])}</td></tr>"
        for n in ("model", "instruction", "majority")
    )
    tasks = "".join(
        f"<tr><td>{e(t)}</td><td>{v['pairs']}</td><td>{v['model']['token_acc']:.3f}</td>"
        f"<td>{v['instruction']['token_acc']:.3f}</td><td>{v['model']['seq_acc']:.3f}</td>"
        f"<td>{v['instruction']['seq_acc']:.3f}</td></tr>"
        for t, v in report["per_task"].items()
    )
    imgs = "".join(
        f'<figure><img alt="{e(n)}" src="data:image/png;base64,'
        f'{base64.b64encode((out_dir / p).read_bytes()).decode()}"><figcaption>{e(n)}'
        "</figcaption></figure>"
        for n, p in figures.items()
    )
    ok = all(report["beats"].values())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Foundation report</title><style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: .9em; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: .25em .6em; }}
.verdict {{ padding: .5em .8em; border-radius: 4px; background: {"#c8e6c9" if ok else "#ffcdd2"}; }}
figure {{ display: inline-block; margin: .5em; }} img {{ max-width: 40em; border: 1px solid #ddd; }}
.meta {{ color: #555; font-size: .85em; }}
</style></head><body>
<h1>Foundation VLA: latent actions on held-out videos</h1>
<p class="verdict">{e(report["verdict"])}</p>
<p class="meta">{e(report["protocol"])}. {report["held_out"]["pairs"]} pairs of
{report["held_out"]["videos"]} held-out videos; family {e(report["family"])}, backbone
<code>{e(report["backbone"])}</code>, step {report["global_step"]}; vocabulary
{report["vocabulary"]["codebook_size"]} codes x {report["vocabulary"]["code_seq_len"]} positions;
labels {e(report["labels_key"])}; mean confidence {report["mean_confidence"]:.3f},
ECE {report["calibration"]["ece"]:.3f}.</p>
<table><tr><th>predictor</th><th>per-token acc</th><th>full-sequence acc</th>
<th>per position</th></tr>{rows}</table>
<table><tr><th>task</th><th>pairs</th><th>model token</th><th>instruction token</th>
<th>model sequence</th><th>instruction sequence</th></tr>{tasks}</table>
{imgs}
</body></html>
"""


def write_report(
    model_dir: str,
    labels_index: str,
    out_dir: str | Path,
    val_split: float,
    cfg: FoundationReportConfig,
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report, arrays = evaluate(model_dir, labels_index, val_split, cfg)
    figures = write_figures(report, arrays, out / "figures")
    report["figures"] = figures
    write_text(out / "report.html", render_html(report, figures, out))
    write_json(out / "report.json", report)
    log.info("%s", report["verdict"])
    log.info("wrote %s and %s", out / "report.json", out / "report.html")
    return report


USAGE = """
usage: python -m hlrp.foundation.report model_dir=DIR data.labels=LABELS/index.json
                                        output_dir=DIR [key=value ...]

Scores the foundation model's latent-action predictions on held-out videos against the
majority and instruction-only baselines; writes report.json, report.html and figures/.
"""


def main(argv: Sequence[str] | None = None) -> int:
    def _main(cfg: RootConfig) -> int:
        st = cfg.foundation
        if not (cfg.model_dir and st.data.labels and cfg.output_dir):
            log.error("report needs model_dir=PATH, data.labels=PATH and output_dir=PATH")
            return 2
        write_report(cfg.model_dir, st.data.labels, cfg.output_dir, st.data.val_split, st.report)
        return 0

    return run(_main, argv, USAGE, stage="foundation")


if __name__ == "__main__":
    raise SystemExit(main())
