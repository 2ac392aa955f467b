"""The Snakemake workflow: lint, dry runs, a real incremental run, and the demo end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from videos import moving_square, write_video

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def smk(args, cwd, env=None, check=True, timeout=900):
    proc = subprocess.run(
        [*SNAKEMAKE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            **(env or {}),
        },
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc.stdout + proc.stderr


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count} ({} when nothing is to be done)."""
    counts = {}
    if "Nothing to be done" in output:
        return counts
    table = output.split("Job stats:")[1]
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    counts.pop("total", None)
    return counts


@pytest.fixture
def project(tmp_path):
    """A copy of the workflow and configs to run in, so tests never touch the repo."""
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copy(REPO / "environment.yml", tmp_path / "environment.yml")
    shutil.copy(REPO / "lrz", tmp_path / "lrz", follow_symlinks=False)
    return tmp_path


def env_for(project):
    # HF_HUB_OFFLINE: the demo's stage 2 must not need the network (its backbone is built)
    return {"HLRP_CONFIG_DIR": str(project / "config"), "MUJOCO_GL": "egl", "HF_HUB_OFFLINE": "1"}


def test_lint_is_clean():
    out = smk(["--lint"], cwd=REPO)
    assert "Congratulations, your workflow is in a good condition" in out


def test_dry_run_lists_the_demo_pipeline(project):
    out = smk(["-n", "all"], cwd=project, env=env_for(project))
    assert job_counts(out) == {
        "demo_videos": 1,
        "preprocess": 4,
        "shard_index": 1,
        "train_laq": 1,
        "laq_report": 1,
        "label_latents": 1,
        "train_foundation": 1,
        "foundation_report": 1,
        "episodes": 2,  # the labelled few, and every episode for the oracle's pretraining
        "pretrain_oracle": 1,
        "finetune": 3,
        "evaluate": 3,
        "final_report": 1,
        "all": 1,
    }


def test_one_variant_builds_only_what_it_needs(project):
    """The scratch baseline never waits for stages 1 and 2; the oracle needs its pretraining."""
    out = smk(
        ["-n", "results/evaluation/scratch/n2/results.json"], cwd=project, env=env_for(project)
    )
    assert job_counts(out) == {"demo_videos": 1, "episodes": 1, "finetune": 1, "evaluate": 1}
    out = smk(
        ["-n", "results/low_level/oracle/n2/policy/hlrp_policy.json"],
        cwd=project,
        env=env_for(project),
    )
    assert job_counts(out) == {"demo_videos": 1, "episodes": 2, "pretrain_oracle": 1, "finetune": 1}
    out = smk(
        [
            "-n",
            "all",
            "--config",
            "finetune={episodes_per_task: [1, 4], variants: [latent, scratch]}",
        ],
        cwd=project,
        env=env_for(project),
    )
    counts = job_counts(out)
    assert counts["finetune"] == 4 and counts["evaluate"] == 4 and "pretrain_oracle" not in counts


def test_dag_renders():
    out = subprocess.run(
        [*SNAKEMAKE, "--dag", "-F", "all"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.lstrip().startswith("digraph")
    for rule in ("demo_videos", "preprocess", "shard_index"):
        assert rule in out


def test_bad_workflow_config_is_rejected(project):
    out = smk(
        ["-n", "--config", "preprocess_jobs=0"], cwd=project, env=env_for(project), check=False
    )
    assert "preprocess_jobs" in out and "minimum" in out


def test_missing_video_folder_is_named(project):
    out = smk(
        ["-n", "--config", "videos=/no/such/folder"], cwd=project, env=env_for(project), check=False
    )
    assert "/no/such/folder" in out and "is not a folder" in out


@pytest.mark.parametrize("profile", ["lrz", "workflow/profiles/lrz"])
def test_lrz_profile_dry_runs_without_slurm(project, profile):
    """`snakemake --profile lrz all`, exactly as users type it, from the repository root."""
    out = smk(
        ["--profile", profile, "-n", "all"],
        cwd=project,
        env={**env_for(project), "HLRP_SLURM_ACCOUNT": "pn00xx"},
    )
    counts = job_counts(out)
    assert counts["preprocess"] >= 1 and counts["demo_videos"] == 1
    assert "slurm_partition" in out  # the profile's resources are in effect


def test_repository_root_resolves_the_lrz_profile():
    from snakemake.cli import get_profile_dir

    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        found = get_profile_dir("lrz")
    finally:
        os.chdir(cwd)
    assert found is not None
    assert Path(found[1]).resolve() == (REPO / "workflow/profiles/lrz/config.yaml").resolve()


def test_user_override_cannot_desync_the_gpu_count(project):
    cfg = yaml.safe_load((project / "config/workflow.yaml").read_text())
    cfg["overrides"]["train_laq"] = ["cluster.devices=8"]
    (project / "test.yaml").write_text(yaml.safe_dump(cfg))
    out = smk(["-n", "--configfile", "test.yaml"], cwd=project, env=env_for(project), check=False)
    assert "cluster.devices=8" in out and "gpus_per_node" in out


@pytest.mark.slow
def test_incremental_runs(project):
    videos = project / "Robot Videos (2024), a=b $x 'q\" é"  # any name a filesystem allows
    for i in range(6):
        write_video(videos / f"v{i}.mp4", moving_square(40, 96, 64, seed=i), fps=20)
    # the preprocessing part of the DAG (LAQ on six synthetic videos is another test's topic)
    args = [
        "--cores",
        "2",
        "results/shards/index.json",
        "--config",
        f"videos={videos}",
        "preprocess_jobs=3",
    ]
    env = env_for(project)
    smk(args, cwd=project, env=env)
    index = json.loads((project / "results/shards/index.json").read_text())
    assert index["totals"]["videos"] == 6 and index["totals"]["clips"] == 6
    # every job left a log and a benchmark
    assert list((project / "logs/preprocess").glob("part-*.log"))
    assert list((project / "benchmarks/preprocess").glob("part-*.tsv"))

    # a second run has nothing to do
    assert job_counts(smk([*args, "-n"], cwd=project, env=env)) == {}

    # changing one video re-runs only its preprocess job (and the index)
    write_video(videos / "v3.mp4", moving_square(50, 96, 64, seed=33), fps=20)
    counts = job_counts(smk([*args, "-n"], cwd=project, env=env))
    assert counts == {"preprocess": 1, "shard_index": 1}

    smk(args, cwd=project, env=env)
    # a change to another stage's config (the LAQ model) changes nothing here
    model = project / "config/model/laq_demo.yaml"  # the model of experiment demo_tiny
    assert "dim: 128" in model.read_text()
    model.write_text(model.read_text().replace("dim: 128", "dim: 96"))
    assert job_counts(smk([*args, "-n"], cwd=project, env=env)) == {}

    # a change to the preprocessing config re-runs every preprocess job
    data = project / "config/preprocess/demo.yaml"
    data.write_text(data.read_text().replace("resolution: 64", "resolution: 48"))
    counts = job_counts(smk([*args, "-n"], cwd=project, env=env))
    assert counts["preprocess"] == len(list((project / "results/shards").glob("part-*")))


@pytest.mark.slow
def test_forced_rerun_trains_anew(project):
    """`--forcerun train_laq` trains again (the finished run is moved aside, not deleted);
    a plain rerun has nothing to do."""
    videos = project / "videos"
    for i in range(4):
        write_video(videos / f"v{i}.mp4", moving_square(30, 96, 64, seed=i), fps=20)
    cfg = yaml.safe_load((project / "config/workflow.yaml").read_text())
    cfg["videos"] = str(videos)
    cfg["preprocess_jobs"] = 1
    cfg["overrides"]["train_laq"] = [
        "training.max_steps=6",
        "training.checkpoint_every_n_steps=3",
        "training.validation.every_n_steps=0",
        "data.val_split=0.0",
        "cluster.wandb_mode=disabled",
    ]
    (project / "test.yaml").write_text(yaml.safe_dump(cfg))
    args = ["--cores", "2", "results/laq/laq.ckpt", "--configfile", "test.yaml"]
    env = env_for(project)
    smk(args, cwd=project, env=env)
    laq = project / "results/laq"
    first = (laq / "metrics.json").read_text()
    assert json.loads((laq / "checkpoints/finished.json").read_text())["step"] == 6
    assert job_counts(smk([*args, "-n"], cwd=project, env=env)) == {}

    smk([*args, "--forcerun", "train_laq"], cwd=project, env=env)
    log = (project / "logs/train_laq/train_laq.log").read_text()
    assert "finished run of 6 steps moved aside" in log and "resuming" not in log
    previous = laq / "previous" / "run-001"  # Snakemake removed laq.ckpt; the run is kept
    assert (previous / "metrics.json").read_text() == first
    assert (previous / "checkpoints/last.ckpt").is_file()
    assert json.loads((laq / "metrics.json").read_text())["global_step"] == 6


@pytest.mark.slow
@pytest.mark.sim
@pytest.mark.timeout(2700)
def test_demo_workflow_end_to_end(project):
    """`make demo` exactly: the default workflow config, no overrides. Its LAQ must pass the
    gate (min_probe_r2 and min_probe_margin included) on its own, without
    label.allow_failed_gate."""
    cfg = yaml.safe_load((project / "config/workflow.yaml").read_text())
    assert not any(cfg["overrides"].values())  # the demo as shipped
    smk(["--cores", "2", "all"], cwd=project, env=env_for(project), timeout=2600)
    demo = project / "results/demo"
    from hlrp.common.config import load

    dcfg = load(["experiment=demo_tiny"]).demo
    videos = len(dcfg.tasks) * dcfg.episodes_per_task
    assert len(list((demo / "videos").glob("*.mp4"))) == videos
    assert (demo / "ground_truth/episodes.csv").is_file()
    index = json.loads((project / "results/shards/index.json").read_text())
    totals, status = index["totals"], index["totals"]["videos_by_status"]
    assert totals["videos"] == videos and sum(status.values()) == videos
    # an expert that solves a task at once leaves a static clip (skipped with its reason)
    assert status["ok"] >= 0.9 * videos and totals["clips"] >= status["ok"]

    from hlrp.data.shards import iter_clips

    clips = list(iter_clips(project / "results/shards/index.json"))
    assert all(c["meta"]["has_actions"] for c in clips)

    # stage 1: the gate passed on held-out videos, the codes carry the action
    report = json.loads((project / "results/laq_report/report.json").read_text())
    assert report["gate"]["passed"], report["gate"]["failures"]
    probe = report["actions"]["probe"]
    threshold = report["gate"]["thresholds"]["min_probe_r2"]
    assert threshold is not None and probe["r2"]["codes"] >= threshold
    # the codes say more of the action than frame t alone (issue 9): the point margin above 0,
    # its paired interval's low end above the gate's min_probe_margin (checked by the gate)
    margin = probe["margin"]["pixels"]
    assert report["gate"]["thresholds"]["min_probe_margin"] is not None
    assert margin["margin"] == pytest.approx(probe["r2"]["codes"] - max(probe["r2"]["pixels"], 0.0))
    assert margin["margin"] > 0 and margin["ci95"][0] <= margin["margin"] <= margin["ci95"][1]
    assert report["code_shuffle"]["psnr_drop_db"] >= 1.0  # decoding with other codes costs
    assert (project / "results/laq_report/report.html").is_file()
    log = (project / "logs/label_latents/label_latents.log").read_text()
    assert "labelling anyway" not in log
    labels = json.loads((project / "results/labels/index.json").read_text())
    k = labels["offset"]
    assert labels["totals"]["pairs"] == sum(c["meta"]["num_frames"] - k for c in clips)
    # stage 2: the foundation model predicts the codes of held-out videos better than a
    # majority code sequence and than the instruction alone (its report says so)
    fr = json.loads((project / "results/foundation_report/report.json").read_text())
    assert fr["held_out"]["videos"] >= 10 and fr["labels_key"] == labels["labels_key"]
    assert all(fr["beats"].values()), fr["verdict"]
    lo, _ = fr["margin_over_better_baseline_ci95"]["token_acc"]
    assert lo > 0, fr["verdict"]
    assert (project / "results/foundation_report/report.html").stat().st_size > 20_000
    metrics = json.loads((project / "results/foundation/metrics.json").read_text())
    assert metrics["global_step"] == load(["experiment=vla_demo"]).foundation.training.max_steps
    # stage 3: three variants finetuned on the same episodes for the same steps, evaluated in
    # closed loop, compared in the final report (the numbers are whatever they are)
    ft = load(["experiment=ft_demo"]).low_level
    for variant in ("latent", "scratch", "oracle"):
        m = json.loads((project / f"results/low_level/{variant}/n2/metrics.json").read_text())
        assert m["global_step"] == ft.training.max_steps and m["episodes"] >= 5, variant
        ev = json.loads((project / f"results/evaluation/{variant}/n2/results.json").read_text())
        assert set(ev["tasks"]) == set(dcfg.tasks), variant
        assert ev["overall"]["episodes"] == len(dcfg.tasks) * ft.evaluation.episodes_per_task
        assert list((project / f"results/evaluation/{variant}/n2/videos").glob("*.mp4"))
    oracle = json.loads((project / "results/low_level/oracle_pretrain/metrics.json").read_text())
    assert oracle["global_step"] == metrics["global_step"]  # stage 2's budget
    summary = json.loads((project / "results/report/summary.json").read_text())
    verdict = summary["comparisons"]["2"]
    assert verdict["status"] in ("held", "not shown", "reversed") and verdict["verdict"]
    page = (project / "results/report/index.html").read_text()
    assert "../laq_report/report.html" in page and "../foundation_report/report.html" in page
    stages = ("demo_videos", "preprocess", "train_laq", "laq_report", "label_latents")
    later = ("episodes", "pretrain_oracle", "finetune", "evaluate", "final_report")
    for stage in (*stages, "train_foundation", "foundation_report", *later):
        assert list((project / "logs" / stage).glob("*.log")), stage
        assert list((project / "benchmarks" / stage).glob("*.tsv")), stage
    # a second run has nothing to do
    assert job_counts(smk(["-n", "all"], cwd=project, env=env_for(project))) == {}
