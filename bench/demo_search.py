"""Search the demo's stage-1 settings for codes that carry the actions (issue 9).

    python bench/demo_search.py --root /tmp/s1 run NAME CORPUS [override ...]
    python bench/demo_search.py --root /tmp/s1 collect [--out bench/results/demo_search.json]

``run`` trains the LAQ (``experiment=demo_tiny`` plus the overrides) on the shards of a rendered
corpus ``ROOT/CORPUS/shards/index.json`` (made by ``render`` below) and writes its report, under
``ROOT/runs/NAME``; the overrides of the data (``data.`` or ``laq.data.``) are passed to the
report too (it must read the same pairs). It records the wall times of both.
``render CORPUS [demo.X=...]`` renders and preprocesses a corpus. ``baseline CORPUS [data.X=...]``
fits the report's model-free probes (frame t alone, pooled pixel difference) on a corpus with no
LAQ trained, in about a minute: how much of the action the motion shows beyond the scene
(``ROOT/CORPUS/baseline-k{offsets}.json``). ``collect`` adds every run and baseline under ROOT
to one JSON: setting -> held-out probe R² (codes, z_pre, pixels, pixel_diff) with their 95 %
intervals, the codes' paired margin over frame t and over the pixel difference, PSNR gain over
copying frame t, code-shuffle drop, perplexity, train minutes and seconds per step.

Timings are wall times on the machine it runs on; on a shared machine they are contended.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
ENV = {**os.environ, "MUJOCO_GL": "egl", "WANDB_MODE": "disabled"}


def _run(cmd: list[str], log: Path) -> float:
    """Run ``cmd``, its output to ``log``; return the wall seconds (raise on failure)."""
    start = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV, check=True)
    return time.perf_counter() - start


def render(root: Path, corpus: str, overrides: list[str]) -> None:
    out = root / corpus
    out.mkdir(parents=True, exist_ok=True)
    times = {
        "render_s": _run(
            [
                PY,
                "-m",
                "hlrp.sim.demo_videos",
                "experiment=demo_tiny",
                f"output_dir={out}/demo",
                "workers=2",
                *overrides,
            ],
            out / "render.log",
        ),
        "preprocess_s": _run(
            [
                PY,
                "-m",
                "hlrp.data.preprocess",
                "experiment=demo_tiny",
                f"input_dir={out}/demo/videos",
                f"actions_dir={out}/demo/ground_truth",
                f"output_dir={out}/shards/part-000",
                "workers=2",
            ],
            out / "preprocess.log",
        ),
    }
    _run(
        [PY, "-m", "hlrp.data.index", f"{out}/shards/index.json", f"{out}/shards/part-000"],
        out / "index.log",
    )
    (out / "corpus.json").write_text(json.dumps({"overrides": overrides, **times}, indent=1))


def run(root: Path, name: str, corpus: str, overrides: list[str]) -> None:
    out = root / "runs" / name
    out.mkdir(parents=True, exist_ok=True)
    shards = f"data.shards={root / corpus / 'shards' / 'index.json'}"
    report_keys = ("laq_report.", "laq.report.")
    data = [o for o in overrides if o.startswith(("data.", "laq.data.", *report_keys))]
    train_s = _run(
        [
            PY,
            "-m",
            "hlrp.laq.train",
            "experiment=demo_tiny",
            shards,
            f"output_dir={out}/laq",
            *[o for o in overrides if not o.startswith(report_keys)],
        ],
        out / "train.log",
    )
    report_s = _run(
        [
            PY,
            "-m",
            "hlrp.laq.report",
            "experiment=demo_tiny",
            f"laq_ckpt={out}/laq/laq.ckpt",
            shards,
            f"output_dir={out}/report",
            *data,
        ],
        out / "report.log",
    )
    (out / "setting.json").write_text(
        json.dumps(
            {"corpus": corpus, "overrides": overrides, "train_s": train_s, "report_s": report_s},
            indent=1,
        )
    )


def baseline(root: Path, corpus: str, overrides: list[str]) -> dict:
    """Model-free held-out probes of a corpus: frame t alone and the pooled pixel difference."""
    import numpy as np
    import torch

    from hlrp.common.config import load
    from hlrp.common.probes import linear_probe
    from hlrp.laq.model import to_model_input
    from hlrp.laq.report import _pixel_features, gather_pairs

    cfg = load(["experiment=demo_tiny", *overrides], stage="laq")
    rcfg, dcfg = cfg.laq.report, cfg.laq.data

    def encode(frames: np.ndarray) -> dict[str, np.ndarray]:
        x = to_model_input(torch.from_numpy(frames), cfg.laq.model.image_size)
        return _pixel_features(x)

    shards = root / corpus / "shards" / "index.json"
    val, train, heldout, _seen = gather_pairs(shards, dcfg, rcfg, encoder=encode)
    if not heldout:
        raise SystemExit(f"{shards}: no held-out video (data.val_split): nothing to score on")
    val.encoder = encode
    val.flush()
    out = {"corpus": corpus, "overrides": overrides}
    for name in ("pixels", "pixel_diff"):
        tr = [i for i, a in enumerate(train.action) if a is not None]
        te = [i for i, a in enumerate(val.action) if a is not None]
        probe = linear_probe(
            train.feature(name)[tr],
            np.stack([train.action[i] for i in tr]),
            np.array(train.video)[tr],
            val.feature(name)[te],
            np.stack([val.action[i] for i in te]),
            np.array(val.video)[te],
            folds=rcfg.probe_folds,
            bootstrap=rcfg.probe_bootstrap,
            seed=rcfg.seed,
        )
        out[name] = {
            k: probe[k] for k in ("r2", "r2_ci95", "r2_per_dim", "train_pairs", "test_pairs")
        }
        print(f"{corpus} {name}: R2 {probe['r2']:+.3f} {probe['r2_ci95']}")
        print("   per dim", " ".join(f"{v:+.2f}" for v in probe["r2_per_dim"]))
    k = "-".join(str(v) for v in dcfg.offsets)
    (root / corpus / f"baseline-k{k}.json").write_text(json.dumps(out, indent=1))
    return out


def summary(run_dir: Path) -> dict:
    setting = json.loads((run_dir / "setting.json").read_text())
    rep = json.loads((run_dir / "report" / "report.json").read_text())
    corpus = (
        json.loads((run_dir.parent.parent / setting["corpus"] / "corpus.json").read_text())
        if (run_dir.parent.parent / setting["corpus"] / "corpus.json").is_file()
        else {}
    )
    probe = rep.get("actions", {}).get("probe", {})
    steps = rep.get("global_step") or 0
    return {
        "corpus": setting["corpus"],
        "corpus_overrides": corpus.get("overrides"),
        "overrides": setting["overrides"],
        "r2": probe.get("r2"),
        "r2_ci95": probe.get("r2_ci95"),
        "margin": probe.get("margin"),  # codes minus frame t / pixel diff, paired interval
        "heldout_pairs": rep.get("actions", {}).get("pairs"),
        "train_pairs": rep.get("actions", {}).get("train", {}).get("pairs"),
        "psnr_gain_db": rep["reconstruction"]["psnr_gain_db"],
        "shuffle_drop_db": rep["code_shuffle"]["psnr_drop_db"],
        "perplexity": rep["codebook"]["perplexity"],
        "sequence_perplexity": rep["codebook"]["sequence_perplexity"],
        "gate_passed": rep.get("gate", {}).get("passed"),
        "steps": steps,
        "train_min": setting["train_s"] / 60,
        "s_per_step": setting["train_s"] / steps if steps else None,
        "render_s": corpus.get("render_s"),
        "preprocess_s": corpus.get("preprocess_s"),
    }


def collect(root: Path, out: Path) -> None:
    """Add the runs under ``root`` to ``out`` (rows of earlier searches are kept)."""
    rows = json.loads(out.read_text())["runs"] if out.is_file() else {}
    for d in sorted((root / "runs").iterdir()):
        if (d / "report" / "report.json").is_file() and (d / "setting.json").is_file():
            rows[d.name] = summary(d)
    old = json.loads(out.read_text()) if out.is_file() else {}
    baselines = old.get("baselines", {})
    for f in sorted(root.glob("*/baseline-k*.json")):
        row = json.loads(f.read_text())
        corpus = f.parent / "corpus.json"
        if corpus.is_file():  # how the corpus was rendered, and the times it took
            row["corpus_render"] = json.loads(corpus.read_text())
        baselines[f"{f.parent.name}/{f.stem.removeprefix('baseline-')}"] = row
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "baselines": baselines,
                "note": "demo_tiny stage-1 settings, held-out probe R2 (mean over varying action dims); "
                "times are wall times on 2 CPU cores, contended where another job ran beside "
                "(BENCHMARKS.md says which); baselines: model-free probes per corpus/offset",
                "runs": rows,
            },
            indent=1,
        )
    )
    for k, r in rows.items():
        if r.get("train_min") is None:
            continue
        f = {n: f"{v:+.2f}" for n, v in (r["r2"] or {}).items() if v is not None}
        m = ((r.get("margin") or {}).get("pixels") or {}).get("ci95")
        print(
            f"{k:24s} {f} margin-ci {m} gain {r['psnr_gain_db']:+.2f} "
            f"drop {r['shuffle_drop_db']:.2f} "
            f"ppl {r['perplexity']:.1f} train {r['train_min']:.1f} min"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=Path("/tmp/demo_search"))
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render")
    r.add_argument("corpus")
    r.add_argument("overrides", nargs="*")
    t = sub.add_parser("run")
    t.add_argument("name")
    t.add_argument("corpus")
    t.add_argument("overrides", nargs="*")
    b = sub.add_parser("baseline")
    b.add_argument("corpus")
    b.add_argument("overrides", nargs="*")
    c = sub.add_parser("collect")
    c.add_argument("--out", type=Path, default=Path("bench/results/demo_search.json"))
    a = ap.parse_args()
    if a.cmd == "render":
        render(a.root, a.corpus, a.overrides)
    elif a.cmd == "baseline":
        baseline(a.root, a.corpus, a.overrides)
    elif a.cmd == "run":
        run(a.root, a.name, a.corpus, a.overrides)
    else:
        collect(a.root, a.out)


if __name__ == "__main__":
    main()
