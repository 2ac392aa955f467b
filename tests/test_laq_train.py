"""LAQ training: the overfitting recipe, exact resume after a kill, schedules, export."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_small_corpus
from hlrp.common.config import load
from hlrp.data.preprocess import preprocess
from hlrp.data.shards import write_index
from hlrp.laq.data import LAQDataModule, is_val_video
from hlrp.laq.train import code_restart_due, find_resume, load_laq, lr_lambda, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("laq_data")
    make_small_corpus(root, n=8, frames=40)
    c = load(["data.preprocess.resolution=32", "data.preprocess.fps=10", "data.offsets=[2]"])
    for part in range(2):
        videos = sorted(
            p.relative_to(root / "videos").as_posix() for p in (root / "videos").rglob("*.mp4")
        )[part::2]
        preprocess(
            root / "videos",
            root / f"shards/part-{part}",
            c.data.preprocess,
            c.data.offsets,
            videos=videos,
            workers=1,
        )
    write_index(
        root / "shards/index.json", [root / f"shards/part-{p}/manifest.json" for p in range(2)]
    )
    return root / "shards" / "index.json"


def metrics_by_step(out: Path, key: str = "train/loss") -> dict[int, float]:
    rows = {}
    with open(out / "logs" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row.get(key):
                rows[int(row["step"])] = float(row[key])
    return rows


def tiny(shards, out, *extra):
    return [
        f"data.shards={shards}",
        f"output_dir={out}",
        "data.num_workers=0",
        "cluster.wandb_mode=disabled",
        *extra,
    ]


def test_lr_schedule():
    cfg = load(
        [
            "training.scheduler.name=cosine",
            "training.scheduler.warmup_steps=10",
            "training.scheduler.min_lr_ratio=0.1",
        ]
    ).training
    f = lr_lambda(cfg, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    const = lr_lambda(load(["training.scheduler.name=constant"]).training, 100)
    assert const(99) == 1.0


def test_code_restart_schedule():
    due = [s for s in range(1, 6001) if code_restart_due(s)]
    assert due[:3] == [10, 20, 30] and 200 in due and 250 not in due and 5000 in due
    assert due[-1] == 5000


def test_datamodule_splits_by_video(shards):
    cfg = load(["data.val_split=0.3", "data.num_workers=0", "data.batch_size=4"]).data
    dm = LAQDataModule(cfg, shards)
    dm.setup("fit")
    train_keys = {k for b in dm.train_dataloader() for k in b["key"]}
    val_keys = {k for b in dm.val_dataloader() for k in b["key"]}
    assert train_keys and val_keys and not train_keys & val_keys
    for key in val_keys:
        assert is_val_video(key.rsplit("-", 1)[0], 0.3)


def test_pair_level_enumerates_every_pair(shards):
    cfg = load(
        [
            "data.pair_level=true",
            "data.offsets=[1,3]",
            "data.val_split=0.0",
            "data.batch_size=1000",
            "data.num_workers=0",
        ]
    ).data
    dm = LAQDataModule(cfg, shards)
    dm.setup("fit")
    # 8 clips of 14 frames (40 frames at 30 fps -> 1.3 s at 10 fps): 13 + 11 pairs each
    assert len(dm.train_pairs) == 8 * (13 + 11)
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (8 * 24, 2, 32, 32, 3)
    one = LAQDataModule(
        load(["data.pair_level=true", "data.max_samples=1", "data.val_split=0.0"]).data, shards
    )
    one.setup("fit")
    assert len(one.train_pairs) == 1


def test_overfitting_recipe_drives_loss_to_zero(shards, tmp_path):
    """The README's debugging recipe, on laq_debug's model (laq_small), CPU."""
    out = tmp_path / "overfit"
    metrics = train(
        load(
            [
                "experiment=laq_debug",
                "data.pair_level=true",
                "data.max_samples=1",
                "data.val_split=0.0",
                "training.epochs=1000",
                "training.validation.visualize_train=true",
                *tiny(shards, out, "training.log_every_n_steps=10", "cluster.accelerator=cpu"),
            ]
        )
    )
    losses = metrics_by_step(out, "train/mse")
    first, last = losses[min(losses)], losses[max(losses)]
    assert max(losses) >= 990
    assert last < 2e-3 and last < first / 100, (first, last)
    assert metrics["train/mse"] < 2e-3
    assert list((out / "samples").glob("train_step*.png"))
    assert (out / "plots" / "training.png").is_file()
    model = load_laq(out / "laq.ckpt")
    assert model.cfg.image_size == 128


def _run_cmd(shards, out, steps):
    return [
        sys.executable,
        "-m",
        "hlrp.laq.train",
        *tiny(
            shards,
            out,
            f"training.max_steps={steps}",
            "training.checkpoint_every_n_steps=10",
            "training.log_every_n_steps=1",
            "training.validation.every_n_steps=25",
            "data.num_workers=2",
            "data.batch_size=8",
            "training.epochs=1000",
        ),
    ]


def _ckpt_step(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["global_step"]
    except Exception:  # noqa: BLE001 - not there yet
        return -1


@pytest.mark.slow
def test_killed_training_resumes_exactly(shards, tmp_path):
    steps = 300  # long enough that the kill lands mid-run
    ref = tmp_path / "ref"
    subprocess.run(_run_cmd(shards, ref, steps), check=True, capture_output=True)
    reference = metrics_by_step(ref)
    assert max(reference) == steps - 1

    out = tmp_path / "killed"
    # SIGKILL from inside, right after step 30's checkpoint (HLRP_FAULT_KILL_AT_STEP): the
    # same as a kill from outside, without racing a poll loop against the training speed
    env = {**os.environ, "HLRP_FAULT_KILL_AT_STEP": "30"}
    proc = subprocess.run(_run_cmd(shards, out, steps), env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    killed_at = _ckpt_step(last)
    assert killed_at == 30, killed_at
    assert not (out / "laq.ckpt").exists()

    subprocess.run(_run_cmd(shards, out, steps), check=True, capture_output=True)
    resumed = metrics_by_step(out)
    after = [s for s in reference if s >= killed_at]
    assert after and all(s in resumed for s in after)
    for s in after:
        assert resumed[s] == pytest.approx(reference[s], rel=1e-5, abs=1e-7), s
    # the killed attempt's log rows are kept beside the resumed one's
    before = {}
    for path in (out / "logs").glob("metrics.attempt*.csv"):
        with open(path, newline="") as f:
            before.update({int(r["step"]): r for r in csv.DictReader(f) if r.get("train/loss")})
    assert min(before) == 0 and max(before) >= killed_at - 1
    final = torch.load(out / "laq.ckpt", weights_only=False)
    ref_final = torch.load(ref / "laq.ckpt", weights_only=False)
    assert final["global_step"] == ref_final["global_step"] == steps
    for k, v in ref_final["state_dict"].items():
        assert torch.allclose(final["state_dict"][k].float(), v.float(), atol=1e-5), k


def test_changed_config_does_not_resume(shards, tmp_path):
    out = tmp_path / "run"
    train(
        load(
            tiny(
                shards,
                out,
                "training.max_steps=5",
                "training.checkpoint_every_n_steps=5",
                "training.validation.every_n_steps=0",
            )
        )
    )
    assert find_resume(out, "different-hash") is None
    assert list(tmp_path.glob("run/checkpoints.stale-*/last.ckpt"))
    assert not (out / "checkpoints" / "last.ckpt").exists()
