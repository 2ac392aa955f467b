"""The final report (hlrp.low_level.report) on synthetic results folders: the verdict, the gap
fraction, missing variants, figures, relative links, escaping and the CLI. No simulator, no
model: the folders hold what evaluation and finetuning write, with chosen numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hlrp.low_level.report import (
    bootstrap_difference,
    build_summary,
    find_results,
    main,
    read_curve,
    write_report,
)

TASKS = ("button-press-topdown-v3", "drawer-open-v3", "reach-v3", "push-v3", "door-open-v3")
PNG = b"\x89PNG\r\n\x1a\n"


def write_evaluation(
    root: Path,
    variant: str,
    n: int | str,
    successes: int,
    episodes: int = 10,
    rollouts: bool = True,
    tasks: tuple[str, ...] = TASKS,
) -> Path:
    """evaluation/{variant}/n{n}/ with ``successes`` of ``episodes`` solved in every task."""
    folder = root / "evaluation" / variant / f"n{n}"
    (folder / "videos").mkdir(parents=True)
    per_task, rows = {}, []
    for task in tasks:
        lengths = [120 if k < successes else 300 for k in range(episodes)]
        per_task[task] = {
            "episodes": episodes,
            "successes": successes,
            "success_rate": successes / episodes,
            "ci95": [0.0, 1.0],
            "lengths": lengths,
            "mean_length": float(np.mean(lengths)),
        }
        rows += [
            {
                "task": task,
                "episode": k,
                "success": str(k < successes),
                "sim_steps": lengths[k],
                "actions": lengths[k],
                "queries": lengths[k] // 8,
            }
            for k in range(episodes)
        ]
        for k in range(3):  # more videos than the page shows
            (folder / "videos" / f"{task}_ep{k:03d}.mp4").write_bytes(b"\0" * 16)
    total = episodes * len(tasks)
    results = {
        "policy": f"results/low_level/{variant}/n{n}/policy",
        "init": "scratch" if variant == "scratch" else "results/foundation/model",
        "head": "l1_chunk",
        "seed": 1000,
        "device": "cpu",
        "tasks": per_task,
        "overall": {
            "episodes": total,
            "successes": successes * len(tasks),
            "success_rate": successes / episodes,
            "ci95": [0.0, 1.0],
        },
        "latency_ms": {
            "per_query_mean": 6.7,
            "per_query_p50": 6.5,
            "per_query_p95": 8.0,
            "per_action": 0.84,
        },
        "sim_steps": 12000,
        "sim_steps_per_s": 202.0,
        "wall_s": 60.0,
        "evaluation": {"episodes_per_task": episodes, "seed": 1000, "max_steps": 300},
    }
    (folder / "results.json").write_text(json.dumps(results))
    if rollouts:
        with open(folder / "rollouts.csv", "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return folder


def write_finetune(root: Path, variant: str, n: int | str | None, config: str = "") -> Path:
    """low_level/{variant}/n{n}/ (or low_level/oracle_pretrain/ for n=None): metrics.json,
    a loss curve with lr rows, a resumed attempt and config.yaml."""
    folder = root / "low_level" / (variant if n is None else f"{variant}/n{n}")
    (folder / "logs").mkdir(parents=True)
    header = "epoch,lr-AdamW,step,train/loss\n"
    (folder / "logs" / "metrics.attempt1.csv").write_text(
        header + "".join(f"0,,{s},{2.0 / s:.4f}\n" for s in (10, 20, 30))
    )
    (folder / "logs" / "metrics.csv").write_text(
        header + "".join(f"0,0.001,{s},\n0,,{s},{1.0 / s:.4f}\n" for s in (30, 40, 50))
    )
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "global_step": 50,
                "init": "scratch",
                "episodes": 10,
                "samples": 900,
                "parameters": 1_000_000,
                "trainable": 250_000,
                "train/loss": 0.02,
            }
        )
    )
    (folder / "config.yaml").write_text(config or f"name: ft_demo\nseed: 0\n# {variant}\n")
    return folder


def write_upstream(root: Path) -> None:
    """laq_report/, foundation_report/ (JSON and HTML) and the stages' config.yaml files."""
    (root / "laq_report").mkdir(parents=True)
    (root / "laq_report" / "report.json").write_text(
        json.dumps(
            {
                "gate": {
                    "passed": True,
                    "failures": [],
                    "checks": [
                        {
                            "key": "min_perplexity",
                            "label": "code perplexity",
                            "value": 8.07,
                            "threshold": 1.5,
                            "status": "pass",
                            "message": "",
                        }
                    ],
                },
                "actions": {"available": True},
            }
        )
    )
    (root / "laq_report" / "report.html").write_text("<html></html>")
    (root / "foundation_report").mkdir()
    (root / "foundation_report" / "report.json").write_text(
        json.dumps(
            {
                "verdict": "The model beats both baselines: per-token accuracy 0.612",
                "scores": {"model": {"token_acc": 0.612, "seq_acc": 0.26}},
            }
        )
    )
    (root / "foundation_report" / "report.html").write_text("<html></html>")
    for stage in ("laq", "foundation"):
        (root / stage).mkdir()
        (root / stage / "config.yaml").write_text(f"name: {stage}_demo\nseed: 0\n")


def results_folder(
    root: Path, latent: int, scratch: int, oracle: int | None, episodes: int = 10, n: int = 2
) -> Path:
    """A complete results folder: three variants at one n (oracle optional), upstream reports."""
    for variant, k in (("latent", latent), ("scratch", scratch), ("oracle", oracle)):
        if k is not None:
            write_evaluation(root, variant, n, k, episodes)
            write_finetune(root, variant, n)
    write_finetune(root, "oracle_pretrain", None)
    write_upstream(root)
    return root


def report(tmp_path: Path, **kw) -> tuple[dict, str, Path]:
    root = results_folder(tmp_path / "results", **kw)
    out = root / "report"
    summary = write_report(root, out)
    return summary, (out / "index.html").read_text(), out


# --------------------------------------------------------------------------------------
# the verdict
# --------------------------------------------------------------------------------------
def test_held_when_latent_clearly_beats_scratch(tmp_path):
    summary, page, out = report(tmp_path, latent=9, scratch=1, oracle=10)  # 45/50 vs 5/50
    assert (out / "index.html").is_file() and (out / "summary.json").is_file()
    c = summary["comparisons"]["2"]
    assert c["status"] == "held"
    assert c["success"]["latent"]["successes"] == 45 and c["success"]["scratch"]["successes"] == 5
    d = c["latent_minus_scratch"]
    assert d["difference"] == pytest.approx(0.8)
    assert 0 < d["ci95"][0] < 0.8 < d["ci95"][1]
    assert "HELD" in c["verdict"] and "5 task(s) x 10" in c["verdict"]
    assert "evaluation seed 1000" in c["verdict"] and "training seed 0" in c["verdict"]
    assert json.loads((out / "summary.json").read_text())["comparisons"]["2"]["status"] == "held"
    assert 'data-status="held"' in page


def test_not_shown_when_equal(tmp_path):
    summary, page, _ = report(tmp_path, latent=5, scratch=5, oracle=8)
    c = summary["comparisons"]["2"]
    assert c["status"] == "not shown"
    lo, hi = c["latent_minus_scratch"]["ci95"]
    assert lo < 0 < hi
    assert c["closes_gap"] is False and c["gap_fraction"] == pytest.approx(0.0)
    assert "NOT SHOWN" in page


def test_reversed_when_scratch_wins(tmp_path):
    summary, _, _ = report(tmp_path, latent=1, scratch=9, oracle=10)
    c = summary["comparisons"]["2"]
    assert c["status"] == "reversed"
    assert c["latent_minus_scratch"]["ci95"][1] < 0
    assert "REVERSED" in c["verdict"]


def test_gap_fraction(tmp_path):
    # 5 tasks x 20 episodes: scratch 0.2, latent 0.5, oracle 0.8 -> latent closes half the gap
    summary, _, _ = report(tmp_path, latent=10, scratch=4, oracle=16, episodes=20)
    c = summary["comparisons"]["2"]
    assert c["success"]["scratch"]["success_rate"] == pytest.approx(0.2)
    assert c["success"]["oracle"]["success_rate"] == pytest.approx(0.8)
    assert c["gap_fraction"] == pytest.approx(0.5)
    assert c["status"] == "held" and c["closes_gap"] is True
    assert "closes 50% of the scratch -> oracle gap" in c["verdict"]
    assert c["oracle_minus_scratch"]["ci95"][0] > 0


def test_no_gap_fraction_when_oracle_does_not_beat_scratch(tmp_path):
    summary, _, _ = report(tmp_path, latent=9, scratch=5, oracle=5)
    c = summary["comparisons"]["2"]
    assert c["gap_fraction"] is None
    assert "no gap to close" in c["verdict"]


def test_missing_oracle_is_named_and_no_gap_is_claimed(tmp_path):
    summary, page, _ = report(tmp_path, latent=9, scratch=1, oracle=None)
    c = summary["comparisons"]["2"]
    assert c["missing"] == ["oracle"] and c["variants"] == ["latent", "scratch"]
    assert c["status"] == "held"
    assert c["gap_fraction"] is None and c["closes_gap"] is None
    assert c["oracle_minus_scratch"] is None
    assert "oracle missing (no evaluation/oracle/n2/results.json" in c["verdict"]
    assert "no gap fraction is claimed" in c["verdict"]
    assert "missing" in page


def test_missing_scratch_leaves_the_claim_untested(tmp_path):
    root = tmp_path / "results"
    write_evaluation(root, "latent", 2, 7)
    write_finetune(root, "scratch", 2)  # trained, never evaluated
    summary = write_report(root, root / "report")
    c = summary["comparisons"]["2"]
    assert c["status"] == "untested" and c["latent_minus_scratch"] is None
    assert "scratch missing" in c["verdict"] and "finetuned but not evaluated" in c["verdict"]
    assert "latent 0.700" in c["verdict"]


def test_different_task_sets_are_compared_on_the_common_tasks(tmp_path):
    root = tmp_path / "results"
    write_evaluation(root, "latent", 2, 9)
    write_evaluation(root, "scratch", 2, 1, tasks=TASKS[:3])
    c = write_report(root, root / "report")["comparisons"]["2"]
    assert c["latent_minus_scratch"]["tasks"] == sorted(TASKS[:3])
    assert c["success"]["latent"]["episodes"] == 50  # its own overall, on all its tasks
    assert "Compared on the 3 task(s)" in c["verdict"]


def test_without_rollouts_the_per_task_counts_are_used(tmp_path):
    root = tmp_path / "results"
    write_evaluation(root, "latent", 2, 9, rollouts=False)
    write_evaluation(root, "scratch", 2, 1, rollouts=False)
    summary = write_report(root, root / "report")
    c = summary["comparisons"]["2"]
    assert c["status"] == "held" and c["success"]["latent"]["episodes"] == 50
    assert summary["evaluations"]["latent"]["2"]["source"].startswith("per-task counts")


def test_bootstrap_is_seeded_and_stratified():
    a = {"t1": np.array([1] * 9 + [0]), "t2": np.array([1, 0] * 5)}
    b = {"t1": np.array([0] * 10), "t2": np.array([0] * 10)}
    assert bootstrap_difference(a, b, ["t1", "t2"], 500, 3) == bootstrap_difference(
        a, b, ["t1", "t2"], 500, 3
    )
    lo, hi = bootstrap_difference(a, b, ["t1", "t2"], 2000, 0)
    assert 0 < lo < 0.7 < hi <= 1.0
    # a task where every episode has the same outcome adds no noise
    assert bootstrap_difference(b, b, ["t1", "t2"]) == (0.0, 0.0)


# --------------------------------------------------------------------------------------
# the page: figures, tables, links, videos, configs
# --------------------------------------------------------------------------------------
def test_figures_are_written(tmp_path):
    summary, page, out = report(tmp_path, latent=9, scratch=1, oracle=10)
    assert set(summary["figures"]) == {"per_task_n2", "success_vs_n", "learning_curves"}
    for rel in summary["figures"].values():
        data = (out / rel).read_bytes()
        assert data.startswith(PNG) and len(data) > 1000
        assert f'src="{rel}"' in page


def test_several_n_and_all(tmp_path):
    root = tmp_path / "results"
    for n, (lat, scr) in {1: (3, 2), 5: (8, 4), "all": (9, 9)}.items():
        write_evaluation(root, "latent", n, lat)
        write_evaluation(root, "scratch", n, scr)
        write_finetune(root, "latent", n)
    summary = write_report(root, root / "report")
    assert summary["ns"] == ["1", "5", "all"]
    assert list(summary["comparisons"]) == ["1", "5", "all"]
    assert summary["comparisons"]["all"]["n"] == "all"
    assert summary["comparisons"]["all"]["status"] == "not shown"
    assert {f"per_task_n{n}" for n in ("1", "5", "all")} <= set(summary["figures"])


def test_table_and_learning_curve_values(tmp_path):
    summary, page, _ = report(tmp_path, latent=9, scratch=1, oracle=10)
    ft = summary["finetunes"]["latent"]["2"]
    assert ft["global_step"] == 50 and ft["samples"] == 900 and ft["trainable"] == 250_000
    ev = summary["evaluations"]["latent"]["2"]
    assert ev["mean_length"] == pytest.approx(0.9 * 120 + 0.1 * 300)
    assert ev["latency_ms"]["per_action"] == 0.84 and ev["sim_steps_per_s"] == 202.0
    assert summary["oracle_pretrain"]["global_step"] == 50
    assert "1,000,000 (250,000)" in page and "202" in page


def test_read_curve_merges_attempts_and_skips_lr_rows(tmp_path):
    folder = write_finetune(tmp_path, "latent", 2)
    curve = read_curve(folder / "logs")
    assert [s for s, _ in curve] == [10, 20, 30, 40, 50]
    assert dict(curve)[30] == pytest.approx(0.0333)  # the resumed run's 1/30, not 2/30


def test_links_are_relative(tmp_path):
    summary, page, out = report(tmp_path, latent=9, scratch=1, oracle=10)
    assert '<a href="../laq_report/report.html">' in page
    assert '<a href="../foundation_report/report.html">' in page
    assert summary["laq_report"]["gate_passed"] is True
    assert summary["laq_report"]["checks"][0]["value"] == 8.07
    assert "code perplexity" in page and "8.070" in page
    assert "The model beats both baselines" in page
    videos = summary["evaluations"]["latent"]["2"]["videos"]
    assert len(videos) == 2  # at most two per variant and n
    assert videos == [  # episode 0 of two different tasks
        f"../evaluation/latent/n2/videos/{task}_ep000.mp4" for task in sorted(TASKS)[:2]
    ]
    assert page.count("<video controls") == 2 * 3
    for src in videos:
        assert f'src="{src}"' in page and (out / src).is_file()
    assert str(tmp_path) not in page.replace(summary["input_dir"], "")


def test_config_text_is_escaped(tmp_path):
    root = tmp_path / "results"
    write_evaluation(root, "latent", 2, 9)
    write_evaluation(root, "scratch", 2, 1)
    write_finetune(root, "latent", 2, config="name: x\nnote: <script>alert('x')</script> & co\n")
    write_upstream(root)
    write_report(root, root / "report")
    page = (root / "report" / "index.html").read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co" in page
    assert "<details><summary>low_level/latent/n2/config.yaml</summary>" in page
    for label in ("laq/config.yaml", "foundation/config.yaml"):
        assert f"<summary>{label}</summary>" in page


def test_only_finetunes(tmp_path):
    root = tmp_path / "results"
    write_finetune(root, "latent", 2)
    summary = write_report(root, root / "report")
    assert summary["comparisons"] == {} and summary["evaluations"] == {}
    assert set(summary["figures"]) == {"learning_curves"}
    assert "the claim is untested" in (root / "report" / "index.html").read_text()


def test_summary_paths_are_relative_to_the_report(tmp_path):
    root = results_folder(tmp_path / "results", latent=9, scratch=1, oracle=10)
    summary = build_summary(find_results(root), root / "report")
    assert summary["configs"]["laq"] == "../laq/config.yaml"
    assert summary["evaluations"]["oracle"]["2"]["folder"] == "../evaluation/oracle/n2"


# --------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------
def test_cli(tmp_path, capsys):
    root = results_folder(tmp_path / "results", latent=9, scratch=1, oracle=10)
    out = root / "report"
    assert main([f"input_dir={root}", f"output_dir={out}"]) == 0
    assert (out / "index.html").is_file() and (out / "summary.json").is_file()
    assert not list(out.rglob(".*.tmp"))


def test_cli_without_results_says_so(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "laq_report").mkdir(parents=True)
    assert main([f"input_dir={empty}", f"output_dir={empty / 'report'}"]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "nothing to report" in err
    assert "evaluation/" in err and "low_level/" in err
    assert not (empty / "report" / "index.html").exists()
    assert main([f"input_dir={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'r'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main([f"output_dir={tmp_path / 'r'}"]) == 2


def test_a_broken_results_json_is_named(tmp_path, capsys):
    root = tmp_path / "results"
    folder = write_evaluation(root, "latent", 2, 9)
    (folder / "results.json").write_text("{not json")
    assert main([f"input_dir={root}", f"output_dir={root / 'report'}"]) == 2
    assert str(folder / "results.json") in capsys.readouterr().err
