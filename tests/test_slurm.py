"""The workflow on a real Slurm cluster: the one-node cluster of
ci/slurm/start_local_slurm.sh (CI starts it in .ci/run), driven through the lrz profile.

Every job goes through sbatch with the lrz profile's resources; a cancelled training job
is resubmitted by Snakemake and resumes from its checkpoint; and the multi-node train_laq
submission the Slurm executor builds is checked by slurmctld with `sbatch --test-only`.

Skipped unless a Slurm cluster with the partition $HLRP_SLURM_PARTITION (default `local`)
answers `sinfo`; deselect with `-m "not slurm"`. Locally:

    sudo bash ci/slurm/start_local_slurm.sh
    .venv/bin/python -m pytest -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PARTITION = os.environ.get("HLRP_SLURM_PARTITION", "local")
CI_PROFILE = REPO / "ci" / "slurm" / "profile"
SUBMITTED = re.compile(
    r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: .*/slurm_logs/rule_(\w+)/"
)
NOT_AVAILABLE = "Requested node configuration is not available"


def _slurm_partitions() -> list[str] | None:
    if shutil.which("sinfo") is None:
        return None
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%R %a"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return None
    if proc.returncode != 0:
        return None
    return [line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" up")]


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    partitions = _slurm_partitions()
    if partitions is None:
        pytest.skip("no Slurm cluster (start one: sudo bash ci/slurm/start_local_slurm.sh)")
    if PARTITION not in partitions:
        pytest.skip(f"Slurm runs, but has no partition {PARTITION!r} (up: {partitions})")


def slurm_env(project: Path) -> dict[str, str]:
    """The test process's environment without Slurm job variables, plus what the lrz
    profile reads (ci/slurm/profile/env.sh: partitions `local`, no account)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        HLRP_CONFIG_DIR=str(project / "config"),
        HLRP_SLURM_PARTITION=PARTITION,
        MUJOCO_GL="egl",
        WANDB_MODE="offline",
    )
    dump = subprocess.run(
        ["bash", "-c", f"source {CI_PROFILE / 'env.sh'} && env -0"],
        env=env,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)


def smk_cmd(*args: str, profile: str = "lrz") -> list[str]:
    """snakemake with the lrz profile, then the local-cluster additions (last one wins)."""
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        profile,
        "--profile",
        str(CI_PROFILE),
        *args,
    ]


def smk(project: Path, *args: str, env=None, timeout=600) -> str:
    proc = subprocess.run(
        smk_cmd(*args),
        cwd=project,
        env=env or slurm_env(project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"snakemake {args} failed:\n{out[-6000:]}")
    return out


def submissions(output: str) -> list[tuple[str, str]]:
    """(rule, Slurm job id) of every job the executor submitted, in order."""
    return [(m.group(2), m.group(1)) for m in SUBMITTED.finditer(output)]


def job_info(jobid: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge, an hour on
    the test cluster)."""
    proc = subprocess.run(
        ["scontrol", "show", "job", "-o", jobid], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, f"slurmctld does not know job {jobid}: {proc.stderr}"
    return dict(kv.split("=", 1) for kv in proc.stdout.split() if "=" in kv)


def tres_mem_mb(tres: str) -> float:
    """The mem= of a TRES string (e.g. cpu=4,mem=62.50G,node=1) in MB."""
    value = re.search(r"mem=([\d.]+)([MGT])", tres)
    assert value, tres
    return float(value.group(1)) * {"M": 1, "G": 1024, "T": 1024**2}[value.group(2)]


def copy_project(dest: Path) -> Path:
    shutil.copytree(REPO / "workflow", dest / "workflow")
    shutil.copytree(REPO / "config", dest / "config")
    shutil.copy(REPO / "environment.yml", dest / "environment.yml")
    shutil.copy(REPO / "lrz", dest / "lrz", follow_symlinks=False)  # `--profile lrz`
    return dest


# The demo's training epoch is one batch, and the LAQ data module builds a new DataLoader
# (new worker processes) every epoch: with the rule's data.num_workers={threads} each step
# forks workers, 5x slower on 2 CPUs than reading in the training process.
TRAIN_FAST = ["data.num_workers=0"]


def write_config(project: Path, **changes) -> None:
    """test.yaml: the workflow config with a tiny demo and short LAQ training."""
    cfg = yaml.safe_load((project / "config/workflow.yaml").read_text())
    cfg["overrides"]["demo_videos"] = [
        "demo.tasks=[drawer-open-v3,button-press-topdown-v3]",
        "demo.episodes_per_task=2",
        "demo.resolution=64",
    ]
    cfg["overrides"]["train_laq"] = TRAIN_FAST + [
        "training.max_steps=40",
        "training.checkpoint_every_n_steps=10",
        "training.validation.every_n_steps=20",
    ]
    # 40 steps of the tiny LAQ do not pass the LAQ gate (its codes carry nothing yet:
    # "decoding with another pair's codes costs only -0.000 dB"); label anyway, the gate
    # itself is tested in tests/test_laq_report.py.
    cfg["overrides"]["label_latents"] = ["label.allow_failed_gate=true"]
    cfg["preprocess_jobs"] = 2
    cfg.update(changes)
    (project / "test.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The tiny demo pipeline, up to the latent labels, run once through Slurm."""
    project = copy_project(tmp_path_factory.mktemp("slurm_pipeline"))
    write_config(project)
    start = time.time()
    out = smk(project, "results/labels/index.json", "--jobs", "4", "--configfile", "test.yaml")
    return project, out, time.time() - start


def test_tiny_pipeline_runs_through_sbatch(pipeline):
    project, out, seconds = pipeline
    jobs = submissions(out)
    rules = sorted(rule for rule, _ in jobs)
    assert rules == sorted(
        [
            "demo_videos",
            "preprocess",
            "preprocess",
            "shard_index",
            "train_laq",
            "laq_report",
            "label_latents",
        ]
    ), out[-4000:]
    for rule, jobid in jobs:
        # the Slurm log of every job (kept: slurm-keep-successful-logs) says it finished
        logs = list((project / ".snakemake/slurm_logs" / f"rule_{rule}").rglob(f"{jobid}.log"))
        assert logs and "1 of 1 steps (100%) done" in logs[0].read_text(), (rule, jobid)
    # the lrz profile's requests reached Slurm unchanged (partitions from env.sh)
    by_rule = {rule: job_info(jobid) for rule, jobid in jobs if rule != "preprocess"}
    for rule, info in by_rule.items():
        assert info["JobState"] == "COMPLETED" and info["Partition"] == PARTITION, (rule, info)
    assert tres_mem_mb(by_rule["train_laq"]["TRES"]) == pytest.approx(240000, rel=1e-3)
    assert by_rule["train_laq"]["TresPerNode"] == "gres:gpu:1"
    assert by_rule["laq_report"]["TresPerJob"] == "gres:gpu:1"
    assert by_rule["label_latents"]["TresPerJob"] == "gres:gpu:1"
    assert "cpu=8" in by_rule["demo_videos"]["TRES"]  # cpus_per_task: 8

    results = project / "results"
    assert len(list((results / "demo/videos").glob("*.mp4"))) == 4
    for path in (
        "shards/index.json",
        "laq/laq.ckpt",
        "laq_report/report.json",
        "laq_report/report.html",
        "labels/index.json",
    ):
        assert (results / path).is_file(), path
    print(f"pipeline through Slurm: {seconds:.0f} s")


def _global_step(ckpt: Path) -> int:
    import torch

    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # noqa: BLE001 - missing, or being replaced
        return -1


def test_cancelled_training_job_is_resubmitted_and_resumes(pipeline):
    project, _, _ = pipeline
    max_steps = 100
    cfg = yaml.safe_load((project / "test.yaml").read_text())
    cfg["overrides"]["train_laq"] = TRAIN_FAST + [
        f"training.max_steps={max_steps}",
        "training.checkpoint_every_n_steps=10",
        "training.validation.every_n_steps=0",
        "training.log_every_n_steps=1",
    ]
    (project / "test.yaml").write_text(yaml.safe_dump(cfg))
    shutil.rmtree(project / "results/laq")
    log_path = project / "snakemake_train.log"
    with open(log_path, "w") as log:
        # restart-times: 1 comes from the lrz profile
        proc = subprocess.Popen(
            smk_cmd("results/laq/laq.ckpt", "--jobs", "1", "--configfile", "test.yaml"),
            cwd=project,
            env=slurm_env(project),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        last = project / "results/laq/checkpoints/last.ckpt"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if _global_step(last) >= 10:
                break
            time.sleep(0.5)
        assert proc.poll() is None, log_path.read_text()[-4000:]
        first = submissions(log_path.read_text())
        assert [rule for rule, _ in first] == ["train_laq"], first
        killed_job = first[0][1]
        subprocess.run(["scancel", killed_job], check=True)
        # COMPLETING while its processes get SIGTERM (SIGKILL after KillWait), then CANCELLED
        deadline = time.time() + 60
        while time.time() < deadline and job_info(killed_job)["JobState"] != "CANCELLED":
            time.sleep(0.5)
        killed_at = _global_step(last)  # what the next attempt resumes from
        assert 10 <= killed_at < max_steps
        proc.wait(timeout=480)
    finally:
        if proc.poll() is None:
            proc.terminate()  # Snakemake cancels its Slurm jobs on SIGTERM
            proc.wait(timeout=60)
    out = log_path.read_text()
    assert proc.returncode == 0, out[-6000:]
    jobs = submissions(out)
    assert [rule for rule, _ in jobs] == ["train_laq", "train_laq"], jobs
    assert f"SLURM-job '{killed_job}' failed, SLURM status is: 'CANCELLED'" in out
    assert "Trying to restart job" in out
    assert job_info(killed_job)["JobState"] == "CANCELLED"
    assert job_info(jobs[1][1])["JobState"] == "COMPLETED"

    laq = project / "results/laq"
    train_log = (project / "logs/train_laq/train_laq.log").read_text()  # the second attempt
    assert "resuming from results/laq/checkpoints/last.ckpt" in train_log, train_log[-3000:]
    # the second attempt trained on from the checkpoint, not from step 0
    logged = [int(n) for n in re.findall(rf"step (\d+)/{max_steps} ", train_log)]
    assert logged and killed_at < logged[0] <= killed_at + 5 and logged[-1] == max_steps, logged
    assert _global_step(laq / "laq.ckpt") == max_steps
    steps = metric_steps(laq / "logs/metrics.csv")
    assert set(range(killed_at, max_steps)) <= steps, (killed_at, sorted(steps))


def metric_steps(csv_path: Path) -> set[int]:
    with open(csv_path, newline="") as f:
        return {int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")}


# --- the multi-node train_laq submission, checked by slurmctld -----------------------------

SBATCH_SHIM = """#!/usr/bin/env bash
# Records the sbatch call of the Slurm executor (one file per call) instead of submitting.
f="$(mktemp "$SBATCH_CALLS/call.XXXXXX")"
printf '%s\\0' "$@" > "$f"
echo "sbatch shim: recorded in $f" >&2
exit 1
"""


#: per training rule: its target and the inputs it needs (with --allowed-rules nothing
#: upstream is considered, so placeholders do)
TRAIN_RULES = {
    "train_laq": ("results/laq/laq.ckpt", ["results/shards/index.json"]),
    "train_foundation": (
        "results/foundation/metrics.json",
        ["results/labels/index.json", "results/laq/laq.ckpt"],
    ),
}


@pytest.fixture
def sbatch_calls(tmp_path):
    """Runs the workflow's train_laq (or train_foundation) for a geometry and returns the
    sbatch argv the Slurm executor built for it (a shim sbatch records it; nothing is
    submitted)."""
    project = copy_project(tmp_path / "project")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sbatch").write_text(SBATCH_SHIM)
    (shim / "sbatch").chmod(0o755)
    count = 0

    def build(nodes: int, gpus_per_node: int, rule: str = "train_laq") -> list[str]:
        nonlocal count
        count += 1
        calls = tmp_path / f"calls{count}"
        calls.mkdir()
        target, inputs = TRAIN_RULES[rule]
        for path in inputs:
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_text("{}")
        (project / target).unlink(missing_ok=True)
        write_config(project, **{rule: {"nodes": nodes, "gpus_per_node": gpus_per_node}})
        env = slurm_env(project)
        env.update(PATH=f"{shim}:{env['PATH']}", SBATCH_CALLS=str(calls))
        proc = subprocess.run(
            smk_cmd(
                target,
                "--allowed-rules",
                rule,
                "--restart-times",
                "0",
                "--configfile",
                "test.yaml",
                profile="workflow/profiles/lrz",
            ),
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        recorded = sorted(calls.iterdir())
        assert len(recorded) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        return recorded[0].read_bytes().decode().split("\0")[:-1]

    return build


def sbatch_test_only(argv: list[str]) -> subprocess.CompletedProcess:
    """slurmctld's answer to the call, without submitting (`sbatch --test-only`)."""
    return subprocess.run(
        ["sbatch", "--test-only", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))},
    )


def test_single_gpu_train_laq_submission_is_accepted(sbatch_calls):
    argv = sbatch_calls(1, 1)
    assert {"--nodes=1", "--gres=gpu:1", "--ntasks-per-gpu=1"} <= set(argv), argv
    answer = sbatch_test_only(argv)
    assert answer.returncode == 0 and f"in partition {PARTITION}" in answer.stderr, answer


def test_multinode_train_laq_geometry_is_validated_by_slurmctld(sbatch_calls):
    """The geometry of train_laq: {nodes: 2, gpus_per_node: 4} as the executor submits it
    with the lrz profile. slurmctld parses and validates it against the partition: 2 such nodes do not
    exist on a one-node cluster, which is the answer it must give ("Requested node
    configuration is not available"), while the same request on one node is accepted."""
    argv = sbatch_calls(2, 4)
    expected = {"--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4", "--cpus-per-gpu=16"}
    assert expected <= set(argv) and "--ntasks-per-gpu=1" not in argv, argv
    assert argv[argv.index("--mem") + 1] == "240000" and argv[argv.index("-t") + 1] == "2880"
    assert argv[argv.index("-p") + 1] == PARTITION, argv
    answer = sbatch_test_only(argv)
    assert answer.returncode != 0 and NOT_AVAILABLE in answer.stderr, answer

    argv = sbatch_calls(1, 4)
    assert {"--nodes=1", "--ntasks-per-node=4", "--gres=gpu:4"} <= set(argv), argv
    answer = sbatch_test_only(argv)
    assert answer.returncode == 0, answer
    # 4 GPUs x cpus_per_gpu 16 of the lrz profile
    assert re.search(rf"using 64 processors on nodes \S+ in partition {PARTITION}", answer.stderr)


def test_multinode_train_foundation_submission(sbatch_calls):
    """Stage 2 on 2 nodes x 4 GPUs as the executor submits it with the lrz profile: the same
    geometry form as train_laq, with the lrz profile's resources for the rule."""
    argv = sbatch_calls(2, 4, rule="train_foundation")
    expected = {"--nodes=2", "--ntasks-per-node=4", "--gres=gpu:4", "--cpus-per-gpu=16"}
    assert expected <= set(argv), argv
    assert argv[argv.index("--mem") + 1] == "240000", argv
    answer = sbatch_test_only(argv)
    assert answer.returncode != 0 and NOT_AVAILABLE in answer.stderr, answer
    argv = sbatch_calls(1, 1, rule="train_foundation")
    assert {"--nodes=1", "--gres=gpu:1", "--ntasks-per-gpu=1"} <= set(argv), argv
    answer = sbatch_test_only(argv)
    assert answer.returncode == 0 and f"in partition {PARTITION}" in answer.stderr, answer
