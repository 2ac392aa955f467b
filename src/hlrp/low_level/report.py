"""The final report of the pipeline: did latent pretraining help the low-level policy?

    python -m hlrp.low_level.report input_dir=results output_dir=results/report

The claim tested: with few labelled episodes, ``latent`` (finetuned from the stage-2 model)
beats ``scratch`` (the same backbone without latent pretraining) and closes part of the gap
to ``oracle`` (pretrained on true actions). For every number of labelled episodes per task
``n`` the verdict is computed from the closed-loop evaluations: the overall success of each
variant with its 95 % Wilson interval, the difference latent - scratch with a 95 % interval
from a bootstrap over episodes (each variant's episodes resampled within each task), and the
fraction of the scratch -> oracle gap that latent closes. The verdict is "held" (interval
above 0), "not shown" (interval includes 0), "reversed" (below 0) or "untested" (a variant
is missing).

Reads, under ``input_dir`` (all optional, but at least one evaluation or finetune):

* ``evaluation/{variant}/n{n}/results.json``, ``rollouts.csv`` and ``videos/*.mp4``
  (:mod:`hlrp.low_level.evaluate`);
* ``low_level/{variant}/n{n}/metrics.json``, ``logs/metrics.csv`` (and the
  ``metrics.attempt*.csv`` of resumed runs), ``config.yaml``; ``low_level/oracle_pretrain/``
  (:mod:`hlrp.low_level.train`);
* ``laq_report/report.json`` / ``report.html``, ``foundation_report/report.json`` /
  ``report.html``, ``laq/config.yaml``, ``foundation/config.yaml``.

Writes, atomically, ``output_dir/figures/*.png``, ``output_dir/summary.json`` (every number
the page states) and, last, ``output_dir/index.html`` (template
``templates/final_report.html.j2``); links to other files are relative to ``output_dir``.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml

from hlrp.common.cli import run
from hlrp.common.config import RootConfig
from hlrp.common.io import write_json, write_text
from hlrp.common.lightning import metric_series
from hlrp.common.logging import get_logger
from hlrp.common.metrics import finite, wilson_interval
from hlrp.common.plots import finish_axis, save_png

__all__ = [
    "CLAIM",
    "VARIANTS",
    "Evaluation",
    "Finetune",
    "ReportInputError",
    "Results",
    "bootstrap_difference",
    "build_summary",
    "compare",
    "find_results",
    "main",
    "read_curve",
    "render_html",
    "write_figures",
    "write_report",
]

log = get_logger("low_level.report")

VARIANTS = ("latent", "scratch", "oracle")
CLAIM = (
    "With few labelled episodes, latent (finetuned from the latent-action pretrained model) "
    "beats scratch (the same backbone without that pretraining) and closes part of the gap "
    "to oracle (pretrained on true actions)."
)
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
VIDEOS_PER_RUN = 2
COLORS = {"latent": "tab:blue", "scratch": "tab:gray", "oracle": "tab:green"}
_RUN_DIR = re.compile(r"^n(\d+|all)$")

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("hlrp.low_level", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2")),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class ReportInputError(ValueError):
    """The results folder lacks what the report needs, or holds a file it cannot read."""


# --------------------------------------------------------------------------------------
# reading the results folder
# --------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """One closed-loop evaluation: ``evaluation/{variant}/n{n}/``."""

    variant: str
    n: str  # labelled episodes per task: "2", or "all"
    folder: Path
    results: dict[str, Any]  # results.json
    outcomes: dict[str, np.ndarray]  # task -> per-episode success (0/1), in episode order
    lengths: dict[str, list[int]]  # task -> simulator steps per episode
    source: str  # where the outcomes come from: rollouts.csv or results.json's counts
    videos: list[Path]


@dataclass
class Finetune:
    """One training run: ``low_level/{variant}/n{n}/`` or ``low_level/oracle_pretrain/``."""

    variant: str  # latent | scratch | oracle | oracle_pretrain
    n: str | None  # None for the oracle's pretraining
    folder: Path
    metrics: dict[str, Any]  # metrics.json ({} while the run has not finished)
    curve: list[tuple[int, float]]  # (step, train/loss), sorted by step
    seed: int | None  # the run's seed, from its config.yaml


@dataclass
class Results:
    """Everything :func:`find_results` found under one results folder."""

    root: Path
    evaluations: dict[tuple[str, str], Evaluation] = field(default_factory=dict)
    finetunes: dict[tuple[str, str], Finetune] = field(default_factory=dict)
    oracle_pretrain: Finetune | None = None
    laq_report: dict[str, Any] | None = None
    foundation_report: dict[str, Any] | None = None
    configs: dict[str, Path] = field(default_factory=dict)  # label -> config.yaml

    def ns(self) -> list[str]:
        """Every n with an evaluation or a finetune, smallest first ("all" last)."""
        found = {n for _, n in self.evaluations} | {n for _, n in self.finetunes}
        return sorted(found, key=n_order)


def n_order(n: str) -> tuple[int, int]:
    """Sort key of an n label: numbers ascending, then "all"."""
    return (1, 0) if n == "all" else (0, int(n))


def n_text(n: str) -> str:
    return "all labelled episodes" if n == "all" else f"{n} labelled episode(s) per task"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReportInputError(f"{path}: cannot read it as JSON ({e})") from e
    if not isinstance(data, dict):
        raise ReportInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _run_dirs(parent: Path) -> list[tuple[str, str, Path]]:
    """(variant, n, folder) for every ``parent/{variant}/n{n}/`` folder."""
    found = []
    for variant in VARIANTS:
        vdir = parent / variant
        if not vdir.is_dir():
            continue
        for d in sorted(vdir.iterdir()):
            m = _RUN_DIR.match(d.name)
            if m and d.is_dir():
                found.append((variant, m.group(1), d))
    return found


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _video_order(path: Path) -> tuple[int, str]:
    """Episode 0 of every task first: the page's few videos show different tasks."""
    m = re.search(r"_ep(\d+)$", path.stem)
    return (int(m.group(1)) if m else 1 << 30), path.name


def _load_evaluation(variant: str, n: str, folder: Path) -> Evaluation:
    path = folder / "results.json"
    results = _read_json(path)
    tasks = results.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise ReportInputError(f"{path}: no per-task results ('tasks')")
    outcomes: dict[str, list[int]] = {}
    lengths: dict[str, list[int]] = {}
    rollouts = folder / "rollouts.csv"
    if rollouts.is_file():
        source = "rollouts.csv"
        rows: dict[str, list[tuple[int, int, int]]] = {}
        try:
            with open(rollouts, newline="") as f:
                for row in csv.DictReader(f):
                    rows.setdefault(row["task"], []).append(
                        (int(row["episode"]), int(_truthy(row["success"])), int(row["sim_steps"]))
                    )
        except (KeyError, ValueError, TypeError) as e:
            raise ReportInputError(
                f"{rollouts}: expected columns task, episode, success, sim_steps ({e!r})"
            ) from e
        for task, eps in rows.items():
            eps.sort()
            outcomes[task] = [s for _, s, _ in eps]
            lengths[task] = [steps for _, _, steps in eps]
        for task, t in tasks.items():
            k = sum(outcomes.get(task, []))
            if k != t.get("successes"):
                log.warning(
                    "%s: %s has %d successes in rollouts.csv, %s in results.json; using rollouts.csv",
                    folder,
                    task,
                    k,
                    t.get("successes"),
                )
    else:
        source = "per-task counts of results.json (no rollouts.csv)"
        for task, t in tasks.items():
            try:
                k, total = int(t["successes"]), int(t["episodes"])
            except (KeyError, TypeError, ValueError) as e:
                raise ReportInputError(f"{path}: task {task} lacks successes/episodes") from e
            outcomes[task] = [1] * k + [0] * (total - k)
            lengths[task] = [int(x) for x in t.get("lengths", [])]
    videos = sorted((folder / "videos").glob("*.mp4"), key=_video_order)
    return Evaluation(
        variant=variant,
        n=n,
        folder=folder,
        results=results,
        outcomes={t: np.asarray(v, dtype=np.int64) for t, v in sorted(outcomes.items())},
        lengths=lengths,
        source=source,
        videos=videos,
    )


def read_curve(log_dir: Path, key: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) of ``key`` across the attempts of a resumed run
    (:func:`hlrp.common.lightning.metric_series`)."""
    return metric_series(log_dir).get(key, [])


def _load_finetune(variant: str, n: str | None, folder: Path) -> Finetune | None:
    metrics_path = folder / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    curve = read_curve(folder / "logs")
    if not metrics and not curve:
        return None
    seed = None
    config = folder / "config.yaml"
    if config.is_file():
        try:
            seed = (yaml.safe_load(config.read_text()) or {}).get("seed")
        except yaml.YAMLError as e:
            log.warning("%s: not valid YAML (%s); its seed is unknown", config, e)
    return Finetune(variant, n, folder, metrics, curve, seed)


def _optional_report(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return _read_json(path)
    except ReportInputError as e:  # an upstream report is context, not the result
        log.warning("%s", e)
        return None


def find_results(input_dir: str | os.PathLike) -> Results:
    """Read every evaluation, finetune, upstream report and config under ``input_dir``.

    Raises :class:`ReportInputError` when the folder does not exist or holds neither an
    evaluation nor a finetune, or when a results.json cannot be read.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise ReportInputError(f"input_dir {root} is not a folder")
    res = Results(root=root)
    for variant, n, folder in _run_dirs(root / "evaluation"):
        if (folder / "results.json").is_file():
            res.evaluations[(variant, n)] = _load_evaluation(variant, n, folder)
    for variant, n, folder in _run_dirs(root / "low_level"):
        ft = _load_finetune(variant, n, folder)
        if ft is not None:
            res.finetunes[(variant, n)] = ft
    res.oracle_pretrain = _load_finetune(
        "oracle_pretrain", None, root / "low_level/oracle_pretrain"
    )
    if not res.evaluations and not res.finetunes:
        raise ReportInputError(
            f"{root} holds no evaluation/{{latent,scratch,oracle}}/n{{n}}/results.json and no "
            "low_level/{latent,scratch,oracle}/n{n}/metrics.json (or logs/metrics.csv): "
            "nothing to report; run the finetune and evaluate rules first"
        )
    res.laq_report = _optional_report(root / "laq_report/report.json")
    res.foundation_report = _optional_report(root / "foundation_report/report.json")
    candidates = [("laq", root / "laq"), ("foundation", root / "foundation")]
    if res.oracle_pretrain is not None:
        candidates.append(("low_level/oracle_pretrain", res.oracle_pretrain.folder))
    candidates += [(f"low_level/{v}/n{n}", ft.folder) for (v, n), ft in res.finetunes.items()]
    for label, folder in candidates:
        if (folder / "config.yaml").is_file():
            res.configs[label] = folder / "config.yaml"
    return res


# --------------------------------------------------------------------------------------
# statistics and the verdict
# --------------------------------------------------------------------------------------
def success_on(outcomes: Mapping[str, np.ndarray], tasks: Sequence[str]) -> dict[str, Any]:
    """Successes, episodes, rate and 95 % Wilson interval over ``tasks``."""
    k = int(sum(int(outcomes[t].sum()) for t in tasks))
    total = int(sum(len(outcomes[t]) for t in tasks))
    lo, hi = wilson_interval(k, total)
    return {
        "successes": k,
        "episodes": total,
        "success_rate": k / total if total else None,
        "ci95": [lo, hi],
    }


def bootstrap_difference(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    tasks: Sequence[str],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """95 % interval of (success rate of ``a``) - (success rate of ``b``) over ``tasks``.

    Each resample draws, for every task and each of the two, as many episodes as it has,
    with replacement, from that task's episodes (stratified by task; the two independently).
    """
    rng = np.random.default_rng(seed)
    totals = []
    for outcomes in (a, b):
        successes = np.zeros(resamples)
        episodes = 0
        for t in tasks:
            x = outcomes[t]
            if len(x):
                successes += x[rng.integers(0, len(x), size=(resamples, len(x)))].sum(1)
                episodes += len(x)
        if episodes == 0:
            raise ValueError("bootstrap_difference: no episodes on the tasks compared")
        totals.append(successes / episodes)
    diff = totals[0] - totals[1]
    return float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))


def _common_tasks(evals: Sequence[Evaluation]) -> list[str]:
    tasks = set(evals[0].outcomes)
    for ev in evals[1:]:
        tasks &= set(ev.outcomes)
    return sorted(tasks)


def _difference(
    a: Evaluation, b: Evaluation, tasks: list[str], resamples: int, seed: int
) -> dict[str, Any]:
    ra = success_on(a.outcomes, tasks)["success_rate"]
    rb = success_on(b.outcomes, tasks)["success_rate"]
    lo, hi = bootstrap_difference(a.outcomes, b.outcomes, tasks, resamples, seed)
    return {"difference": ra - rb, "ci95": [lo, hi], "tasks": tasks}


def _status(ci: Sequence[float]) -> str:
    if ci[0] > 0:
        return "held"
    if ci[1] < 0:
        return "reversed"
    return "not shown"


def _rate(s: Mapping[str, Any]) -> str:
    lo, hi = s["ci95"]
    return f"{s['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] ({s['successes']}/{s['episodes']})"


def compare(
    n: str,
    evals: Mapping[str, Evaluation],
    finetunes: Mapping[str, Finetune] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """The claim at one n: rates, latent - scratch with its interval, the gap fraction and
    the verdict sentence. ``evals`` maps the variants evaluated at this n to their results."""
    finetunes = finetunes or {}
    present = [v for v in VARIANTS if v in evals]
    missing = [v for v in VARIANTS if v not in evals]
    out: dict[str, Any] = {
        "n": n if n == "all" else int(n),
        "variants": present,
        "missing": missing,
        "success": {v: success_on(evals[v].outcomes, sorted(evals[v].outcomes)) for v in present},
        "latent_minus_scratch": None,
        "oracle_minus_scratch": None,
        "gap_fraction": None,
        "closes_gap": None,
        "status": "untested",
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "episodes within tasks"},
    }
    parts = [f"n={n} ({n_text(n)}):"]
    missing_text = [
        f"{v} missing (no evaluation/{v}/n{n}/results.json"
        + ("; it was finetuned but not evaluated)" if v in finetunes else ")")
        for v in missing
    ]
    pair = "latent" in evals and "scratch" in evals
    tasks = _common_tasks([evals["latent"], evals["scratch"]]) if pair else []
    if pair and tasks:
        lat, scr = evals["latent"], evals["scratch"]
        d = _difference(lat, scr, tasks, resamples, seed)
        out["latent_minus_scratch"] = d
        out["status"] = status = _status(d["ci95"])
        rl, rs = success_on(lat.outcomes, tasks), success_on(scr.outcomes, tasks)
        lo, hi = d["ci95"]
        parts.append(
            {
                "held": "HELD: latent beats scratch.",
                "not shown": "NOT SHOWN: the difference's interval includes 0.",
                "reversed": "REVERSED: scratch beats latent.",
            }[status]
        )
        parts.append(
            f"Success latent {_rate(rl)} vs scratch {_rate(rs)} (95 % Wilson); difference "
            f"{d['difference']:+.3f}, 95 % CI [{lo:+.3f}, {hi:+.3f}] (bootstrap over episodes "
            f"within tasks, {resamples} resamples)."
        )
        if set(tasks) != set(lat.outcomes) or set(tasks) != set(scr.outcomes):
            parts.append(f"Compared on the {len(tasks)} task(s) both were evaluated on.")
        oracle_missing = next((t for t in missing_text if t.startswith("oracle")), "")
        parts.append(_gap_text(out, evals, status, oracle_missing, resamples, seed))
    else:
        if pair:
            parts.append("UNTESTED: latent and scratch were evaluated on no common task.")
        else:
            parts.append("UNTESTED: " + "; ".join(missing_text) + ".")
        if present:
            parts.append(
                "Evaluated: " + ", ".join(f"{v} {_rate(out['success'][v])}" for v in present) + "."
            )
    parts.append(_measured_text(n, evals, finetunes))
    out["verdict"] = " ".join(p for p in parts if p)
    return out


def _gap_text(
    out: dict[str, Any],
    evals: Mapping[str, Evaluation],
    status: str,
    oracle_missing: str,
    resamples: int,
    seed: int,
) -> str:
    """Fills ``out``'s gap fields; the sentence about the scratch -> oracle gap."""
    if "oracle" not in evals:
        return f"The gap to oracle is not measured: {oracle_missing}; no gap fraction is claimed."
    tasks = _common_tasks([evals["latent"], evals["scratch"], evals["oracle"]])
    if not tasks:
        return "oracle was evaluated on other tasks: no gap fraction is claimed."
    r = {v: success_on(evals[v].outcomes, tasks) for v in VARIANTS}
    d = _difference(evals["oracle"], evals["scratch"], tasks, resamples, seed)
    out["oracle_minus_scratch"] = d
    lat, scr, ora = (r[v]["success_rate"] for v in VARIANTS)
    if ora <= scr:
        out["closes_gap"] = False
        return (
            f"oracle {_rate(r['oracle'])} does not beat scratch: there is no gap to close, "
            "so no gap fraction is claimed."
        )
    frac = (lat - scr) / (ora - scr)
    out["gap_fraction"] = frac
    out["closes_gap"] = status == "held" and frac > 0
    lo, hi = d["ci95"]
    gap = f"oracle {_rate(r['oracle'])}; oracle - scratch 95 % CI [{lo:+.3f}, {hi:+.3f}]"
    if lo <= 0:
        gap += ", itself within noise"
    if status == "held" and frac >= 1:
        return f"latent reaches or exceeds oracle (gap fraction {frac:.2f}; {gap})."
    if status == "held":
        return f"latent closes {frac:.0%} of the scratch -> oracle gap ({gap})."
    if status == "reversed":
        return f"latent widens the scratch -> oracle gap (fraction {frac:.2f}; {gap})."
    return (
        f"The point estimate closes {frac:.0%} of the scratch -> oracle gap, but latent is not "
        f"distinguishable from scratch ({gap})."
    )


def _measured_text(
    n: str, evals: Mapping[str, Evaluation], finetunes: Mapping[str, Finetune]
) -> str:
    """What was measured: tasks, episodes, evaluation and training seeds."""
    if not evals:
        return ""
    first = evals[next(iter(evals))]
    per_task = sorted({len(x) for ev in evals.values() for x in ev.outcomes.values()})
    eval_seeds = sorted({str(ev.results.get("seed", "?")) for ev in evals.values()})
    train_seeds = sorted(
        {str(finetunes[v].seed) for v in evals if v in finetunes and finetunes[v].seed is not None}
    )
    episodes = "/".join(str(k) for k in per_task)
    text = (
        f"Measured: {n_text(n)} for finetuning; {len(first.outcomes)} task(s) x {episodes} "
        f"evaluation episodes per variant, evaluation seed {', '.join(eval_seeds)}; "
        "one finetune per variant"
    )
    text += f" (training seed {', '.join(train_seeds)})" if train_seeds else ""
    return text + ": the intervals cover evaluation episodes, not training seeds."


# --------------------------------------------------------------------------------------
# the summary (summary.json)
# --------------------------------------------------------------------------------------
def _rel(path: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))).as_posix()


def _evaluation_summary(ev: Evaluation, out_dir: Path) -> dict[str, Any]:
    r = ev.results
    per_task = {}
    for task in ev.outcomes:
        s = success_on(ev.outcomes, [task])
        lengths = ev.lengths.get(task) or []
        s["mean_length"] = float(np.mean(lengths)) if lengths else None
        per_task[task] = s
    all_lengths = [x for lengths in ev.lengths.values() for x in lengths]
    return {
        "folder": _rel(ev.folder, out_dir),
        "source": ev.source,
        "policy": r.get("policy"),
        "init": r.get("init"),
        "head": r.get("head"),
        "seed": r.get("seed"),
        "device": r.get("device"),
        "overall": success_on(ev.outcomes, sorted(ev.outcomes)),
        "tasks": per_task,
        "mean_length": float(np.mean(all_lengths)) if all_lengths else None,
        "latency_ms": r.get("latency_ms", {}),
        "sim_steps": r.get("sim_steps"),
        "sim_steps_per_s": r.get("sim_steps_per_s"),
        "wall_s": r.get("wall_s"),
        "videos": [_rel(p, out_dir) for p in ev.videos[:VIDEOS_PER_RUN]],
    }


def _finetune_summary(ft: Finetune, out_dir: Path) -> dict[str, Any]:
    m = ft.metrics
    return {
        "folder": _rel(ft.folder, out_dir),
        "finished": bool(m),
        "init": m.get("init"),
        "global_step": m.get("global_step", ft.curve[-1][0] if ft.curve else None),
        "episodes": m.get("episodes"),
        "samples": m.get("samples"),
        "parameters": m.get("parameters"),
        "trainable": m.get("trainable"),
        "final_loss": m.get("train/loss", ft.curve[-1][1] if ft.curve else None),
        "seed": ft.seed,
        "curve_points": len(ft.curve),
    }


def _laq_summary(res: Results, out_dir: Path) -> dict[str, Any] | None:
    r = res.laq_report
    if r is None:
        return None
    gate = r.get("gate") or {}
    html_path = res.root / "laq_report/report.html"
    return {
        "link": _rel(html_path, out_dir) if html_path.is_file() else None,
        "gate_passed": gate.get("passed"),
        "checks": [
            {k: c.get(k) for k in ("label", "value", "threshold", "status")}
            for c in gate.get("checks", [])
        ],
    }


def _foundation_summary(res: Results, out_dir: Path) -> dict[str, Any] | None:
    r = res.foundation_report
    if r is None:
        return None
    html_path = res.root / "foundation_report/report.html"
    return {
        "link": _rel(html_path, out_dir) if html_path.is_file() else None,
        "verdict": r.get("verdict"),
        "scores": r.get("scores"),
    }


def build_summary(
    res: Results,
    out_dir: str | os.PathLike,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Every number the page states; paths are relative to ``out_dir``."""
    out = Path(out_dir)
    evaluations: dict[str, dict[str, Any]] = {}
    for (v, n), ev in sorted(res.evaluations.items(), key=lambda kv: n_order(kv[0][1])):
        evaluations.setdefault(v, {})[n] = _evaluation_summary(ev, out)
    finetunes: dict[str, dict[str, Any]] = {}
    for (v, n), ft in sorted(res.finetunes.items(), key=lambda kv: n_order(kv[0][1])):
        finetunes.setdefault(v, {})[n] = _finetune_summary(ft, out)
    comparisons = {}
    for n in res.ns():
        evals = {v: ev for (v, m), ev in res.evaluations.items() if m == n}
        if evals:
            fts = {v: ft for (v, m), ft in res.finetunes.items() if m == n}
            comparisons[n] = compare(n, evals, fts, resamples, seed)
    notes = []
    if not res.evaluations:
        notes.append(
            f"No evaluation under {res.root}/evaluation: the claim is untested; only the "
            "finetuning runs are shown."
        )
    return {
        "claim": CLAIM,
        "input_dir": str(res.root),
        "ns": res.ns(),
        "comparisons": comparisons,
        "evaluations": evaluations,
        "finetunes": finetunes,
        "oracle_pretrain": (
            _finetune_summary(res.oracle_pretrain, out) if res.oracle_pretrain else None
        ),
        "laq_report": _laq_summary(res, out),
        "foundation_report": _foundation_summary(res, out),
        "configs": {label: _rel(p, out) for label, p in res.configs.items()},
        "notes": notes,
        "figures": {},
    }


# --------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------
def _yerr(stats: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Asymmetric error bars (2, k) from success rates and their Wilson intervals."""
    rates = np.array([s["success_rate"] for s in stats], dtype=float)
    lo = np.array([s["ci95"][0] for s in stats], dtype=float)
    hi = np.array([s["ci95"][1] for s in stats], dtype=float)
    return np.stack([np.maximum(0, rates - lo), np.maximum(0, hi - rates)])


def _per_task_figure(plt, n: str, runs: Mapping[str, dict[str, Any]], path: Path) -> None:
    variants = [v for v in VARIANTS if v in runs]
    tasks = sorted({t for v in variants for t in runs[v]["tasks"]})
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks) + 2), 3.8))
    x = np.arange(len(tasks))
    for i, v in enumerate(variants):
        idx = [j for j, t in enumerate(tasks) if t in runs[v]["tasks"]]
        stats = [runs[v]["tasks"][tasks[j]] for j in idx]
        ax.bar(
            x[idx] + (i - (len(variants) - 1) / 2) * width,
            [s["success_rate"] for s in stats],
            width,
            yerr=_yerr(stats),
            capsize=3,
            color=COLORS[v],
            label=v,
        )
    ax.set_xticks(x, tasks, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.2)  # room for the legend above the bars
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("success rate")
    finish_axis(ax, f"success per task, n={n} (95 % Wilson intervals)", xlabel="")
    ax.legend(fontsize=8, ncol=len(variants), loc="upper center")
    save_png(fig, path)


def _success_vs_n_figure(plt, summary: dict[str, Any], path: Path) -> None:
    evaluations = summary["evaluations"]
    ns = [n for n in summary["ns"] if any(n in evaluations.get(v, {}) for v in VARIANTS)]
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(ns) + 2.5), 3.8))
    present = [v for v in VARIANTS if v in evaluations]
    for i, v in enumerate(present):
        pts = [(j, evaluations[v][n]["overall"]) for j, n in enumerate(ns) if n in evaluations[v]]
        xs = np.array([j for j, _ in pts]) + (i - (len(present) - 1) / 2) * 0.08
        ax.errorbar(
            xs,
            [s["success_rate"] for _, s in pts],
            yerr=_yerr([s for _, s in pts]),
            fmt="o-",
            capsize=4,
            color=COLORS[v],
            label=v,
        )
    ax.set_xticks(range(len(ns)), ns)
    ax.set_xlim(-0.5, len(ns) - 0.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("overall success rate")
    finish_axis(ax, "overall success vs labelled episodes", xlabel="labelled episodes per task (n)")
    save_png(fig, path)


def _curves_figure(plt, res: Results, path: Path) -> None:
    panels = [("finetuning: train/loss", sorted(res.finetunes.items(), key=_run_order))]
    if res.oracle_pretrain is not None and res.oracle_pretrain.curve:
        panels.append(
            ("oracle pretraining (true actions)", [(("oracle", ""), res.oracle_pretrain)])
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 3.8), squeeze=False)
    styles = ["-", "--", ":", "-."]
    ns = res.ns()
    for ax, (title, runs) in zip(axes[0], panels):
        for (v, n), ft in runs:
            if not ft.curve:
                continue
            steps, losses = zip(*ft.curve)
            style = styles[ns.index(n) % len(styles)] if n in ns else "-"
            label = f"{v} n={n}" if n else "oracle pretraining"
            ax.plot(steps, losses, style, lw=1.2, color=COLORS.get(v, "k"), label=label)
        finish_axis(ax, title, logy=True)
        ax.set_ylabel("train/loss")
    save_png(fig, path)


def _run_order(item: tuple[tuple[str, str], Any]) -> tuple[int, tuple[int, int]]:
    (v, n), _ = item
    return VARIANTS.index(v), n_order(n)


def write_figures(summary: dict[str, Any], res: Results, fig_dir: Path) -> dict[str, str]:
    """Writes the PNGs; name -> path relative to the report folder (``figures/x.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, str] = {}

    def path(name: str) -> Path:
        figs[name] = f"{fig_dir.name}/{name}.png"
        return fig_dir / f"{name}.png"

    evaluations = summary["evaluations"]
    for n in summary["ns"]:
        runs = {v: evaluations[v][n] for v in VARIANTS if n in evaluations.get(v, {})}
        if runs:
            _per_task_figure(plt, n, runs, path(f"per_task_n{n}"))
    if evaluations:
        _success_vs_n_figure(plt, summary, path("success_vs_n"))
    has_curves = any(ft.curve for ft in res.finetunes.values()) or bool(
        res.oracle_pretrain and res.oracle_pretrain.curve
    )
    if has_curves:
        _curves_figure(plt, res, path("learning_curves"))
    else:
        summary["notes"].append("No logs/metrics.csv with train/loss: no learning curves.")
    return figs


# --------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------
def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    x = finite(v)
    return "n/a" if x is None else f"{x:.{digits}f}"


def _table_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per variant and n that was evaluated or finetuned."""
    evaluations, finetunes = summary["evaluations"], summary["finetunes"]
    rows = []
    for v in VARIANTS:
        for n in summary["ns"]:
            ev, ft = evaluations.get(v, {}).get(n), finetunes.get(v, {}).get(n)
            if ev is None and ft is None:
                continue
            row = {"variant": v, "n": n}
            if ev is not None:
                o, lat = ev["overall"], ev["latency_ms"]
                row |= {
                    "success": f"{_num(o['success_rate'])} [{_num(o['ci95'][0])}, "
                    f"{_num(o['ci95'][1])}] ({o['successes']}/{o['episodes']})",
                    "length": _num(ev["mean_length"], 1),
                    "query_ms": f"{_num(lat.get('per_query_mean'), 1)} "
                    f"(p95 {_num(lat.get('per_query_p95'), 1)})",
                    "action_ms": _num(lat.get("per_action"), 2),
                    "sim_steps_per_s": _num(ev["sim_steps_per_s"], 0),
                }
            else:
                row |= {"success": "not evaluated", "length": "", "query_ms": "", "action_ms": ""}
                row["sim_steps_per_s"] = ""
            if ft is not None:
                row |= {
                    "steps": _num(ft["global_step"]) + ("" if ft["finished"] else " (unfinished)"),
                    "samples": _num(ft["samples"]),
                    "episodes": _num(ft["episodes"]),
                    "parameters": f"{_num(ft['parameters'])} ({_num(ft['trainable'])})",
                    "loss": _num(ft["final_loss"], 4),
                    "init": str(ft["init"] or ""),
                }
            else:
                row |= {k: "n/a" for k in ("steps", "samples", "episodes", "parameters", "loss")}
                row["init"] = str(ev["init"] or "") if ev else ""
            rows.append(row)
    return rows


def _configs(res: Results) -> list[dict[str, str]]:
    """(label, text) of every resolved config.yaml, then each evaluation's settings."""
    out = [
        {"label": f"{label}/config.yaml", "text": p.read_text()} for label, p in res.configs.items()
    ]
    for (v, n), ev in sorted(res.evaluations.items(), key=_run_order):
        if isinstance(ev.results.get("evaluation"), dict):
            text = yaml.safe_dump(ev.results["evaluation"], sort_keys=False)
            out.append({"label": f"evaluation/{v}/n{n} (results.json: evaluation)", "text": text})
    return out


def render_html(summary: dict[str, Any], res: Results) -> str:
    """The report page (figures and videos linked relatively; every text escaped)."""
    videos = [
        {"run": f"{v} n={n}", "src": src}
        for v in VARIANTS
        for n, ev in summary["evaluations"].get(v, {}).items()
        for src in ev["videos"]
    ]
    return _ENV.get_template("final_report.html.j2").render(
        s=summary,
        rows=_table_rows(summary),
        videos=videos,
        configs=_configs(res),
        num=_num,
    )


def write_report(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Reads ``input_dir``, writes figures, ``summary.json`` and, last, ``index.html``."""
    out = Path(output_dir)
    res = find_results(input_dir)
    summary = build_summary(res, out, resamples, seed)
    summary["figures"] = write_figures(summary, res, out / "figures")
    write_json(out / "summary.json", summary)
    write_text(out / "index.html", render_html(summary, res))
    for c in summary["comparisons"].values():
        log.info("%s", c["verdict"])
    log.info("wrote %s and %s", out / "summary.json", out / "index.html")
    return summary


USAGE = """
usage: python -m hlrp.low_level.report input_dir=RESULTS output_dir=RESULTS/report

Collects the evaluations (evaluation/{variant}/n{n}/), the finetuning runs (low_level/) and
the LAQ and foundation reports under RESULTS; writes index.html, summary.json and figures/:
does latent pretraining beat scratch, and how much of the gap to oracle does it close?
"""


def main(argv: Sequence[str] | None = None) -> int:
    def _main(cfg: RootConfig) -> int:
        if not cfg.input_dir or not cfg.output_dir:
            raise ReportInputError("the report needs input_dir=RESULTS and output_dir=DIR")
        write_report(cfg.input_dir, cfg.output_dir)
        return 0

    return run(_main, argv, USAGE, stage="low_level", expected=(ReportInputError,))


if __name__ == "__main__":
    raise SystemExit(main())
