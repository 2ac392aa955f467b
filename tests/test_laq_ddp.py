"""LAQ training under DDP with 2 CPU processes (gloo): Lightning-launched and Slurm-launched
(`srun`-style SLURM_* variables), including an exact resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from test_laq_train import metrics_by_step, shards  # noqa: F401 - fixture

pytestmark = pytest.mark.slow


def cmd(shards, out, steps=30):  # noqa: F811
    return [
        sys.executable,
        "-m",
        "hlrp.laq.train",
        f"data.shards={shards}",
        f"output_dir={out}",
        "cluster.wandb_mode=disabled",
        "cluster.accelerator=cpu",
        "cluster.devices=2",
        "cluster.strategy=ddp",
        f"training.max_steps={steps}",
        "training.epochs=1000",
        "training.checkpoint_every_n_steps=5",
        "training.log_every_n_steps=1",
        "training.validation.every_n_steps=10",
        "data.num_workers=1",
        "data.batch_size=4",
    ]


def slurm_env(rank: int, ntasks: int = 2) -> dict[str, str]:
    """What `srun -n 2` gives each task on one node."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env.update(
        SLURM_NTASKS=str(ntasks),
        SLURM_NTASKS_PER_NODE=str(ntasks),
        SLURM_TASKS_PER_NODE=str(ntasks),
        SLURM_PROCID=str(rank),
        SLURM_LOCALID=str(rank),
        SLURM_NODEID="0",
        SLURM_NNODES="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NODELIST="localhost",
        SLURM_JOB_NODELIST="localhost",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="hlrp-test",
        SLURM_STEP_ID="0",
    )
    return env


def test_ddp_kill_and_exact_resume(shards, tmp_path):  # noqa: F811
    ref = tmp_path / "ref"
    subprocess.run(cmd(shards, ref), check=True, capture_output=True, timeout=600)
    reference = metrics_by_step(ref)
    assert max(reference) == 29

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        cmd(shards, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300

    def step():
        try:
            return torch.load(last, map_location="cpu", weights_only=False)["global_step"]
        except Exception:  # noqa: BLE001
            return -1

    while step() < 10 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its DDP child
    proc.wait()
    killed_at = step()
    assert 10 <= killed_at < 30
    subprocess.run(cmd(shards, out), check=True, capture_output=True, timeout=600)
    resumed = metrics_by_step(out)
    for s in range(killed_at, 30):
        assert resumed[s] == reference[s], s  # bit-exact


def test_slurm_launched_ddp_matches_lightning_launched(shards, tmp_path):  # noqa: F811
    ref = tmp_path / "lightning"
    subprocess.run(cmd(shards, ref, steps=12), check=True, capture_output=True, timeout=600)
    out = tmp_path / "srun"
    procs = [
        subprocess.Popen(
            cmd(shards, out, steps=12),
            env=slurm_env(r),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    assert all("cluster environment SLURMEnvironment" in log for log in logs), logs[0][-2000:]
    a, b = metrics_by_step(ref), metrics_by_step(out)
    assert max(b) == 11 and all(b[s] == a[s] for s in a)  # bit-exact
    assert (out / "laq.ckpt").is_file()
