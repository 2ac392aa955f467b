"""LAQ training: the overfitting recipe, exact resume after a kill, schedules, export, and the
loaders' resume (exact, without building the skipped batches)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import count_calls, make_small_corpus
from hlrp.common.config import load
from hlrp.data.preprocess import preprocess
from hlrp.data.shards import write_index
from hlrp.data.split import is_val_video
from hlrp.laq import data as laq_data
from hlrp.laq.data import LAQDataModule
from hlrp.laq.train import code_restart_due, lr_lambda, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("laq_data")
    make_small_corpus(root, n=8, frames=40)
    c = load(["data.preprocess.resolution=32", "data.preprocess.fps=10"], stage="laq")
    for part in range(2):
        videos = sorted(
            p.relative_to(root / "videos").as_posix() for p in (root / "videos").rglob("*.mp4")
        )[part::2]
        preprocess(
            root / "videos",
            root / f"shards/part-{part}",
            c.data.preprocess,
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
        ],
        stage="laq",
    ).laq.training
    f = lr_lambda(cfg, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    const = lr_lambda(load(["training.scheduler.name=constant"], stage="laq").laq.training, 100)
    assert const(99) == 1.0


def test_code_restart_schedule():
    due = [s for s in range(1, 6001) if code_restart_due(s)]
    assert due[:3] == [10, 20, 30] and 200 in due and 250 not in due and 5000 in due
    assert due[-1] == 5000


def test_datamodule_splits_by_video(shards):
    cfg = load(
        ["data.val_split=0.3", "data.num_workers=0", "data.batch_size=4"], stage="laq"
    ).laq.data
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
        ],
        stage="laq",
    ).laq.data
    dm = LAQDataModule(cfg, shards)
    dm.setup("fit")
    # 8 clips of 14 frames (40 frames at 30 fps -> 1.3 s at 10 fps): 13 + 11 pairs each
    assert len(dm.train_pairs) == 8 * (13 + 11)
    batch = next(iter(dm.train_dataloader()))
    assert batch["frames"].shape == (8 * 24, 2, 32, 32, 3)
    one = LAQDataModule(
        load(
            ["data.pair_level=true", "data.max_samples=1", "data.val_split=0.0"], stage="laq"
        ).laq.data,
        shards,
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
            ],
            stage="laq",
        )
    )
    losses = metrics_by_step(out, "train/mse")
    first, last = losses[min(losses)], losses[max(losses)]
    assert max(losses) >= 990
    assert last < 2e-3 and last < first / 100, (first, last)
    assert metrics["train/mse"] < 2e-3
    assert list((out / "samples").glob("train_step*.png"))
    assert (out / "plots" / "training.png").is_file()
    from hlrp.laq.export import load_laq

    model = load_laq(out / "laq.ckpt")
    assert model.cfg.image_size == 128


def _losses(csv_path: Path) -> dict[int, float]:
    with open(csv_path, newline="") as f:
        return {
            int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]
        }


#: conftest's MICRO_LAQ (an NSVQ with dead-code restarts), as command-line overrides
MICRO_MODEL = {
    "image_size": 32,
    "patch_size": 8,
    "dim": 32,
    "spatial_depth": 1,
    "temporal_depth": 1,
    "decoder_depth": 1,
    "heads": 2,
    "dim_head": 16,
    "codebook_size": 8,
    "code_seq_len": 2,
    "quant_dim": 8,
    "quantizer": "nsvq",
}
# A schedule that puts every kind of resume point into 30 steps: checkpoints every 8 steps,
# validation every 12, dead-code restarts at 10 and 20 (code_restart_due).
RESUME_RUN = (
    *(f"model.{k}={v}" for k, v in MICRO_MODEL.items()),
    "training.max_steps=30",
    "training.checkpoint_every_n_steps=8",
    "training.validation.every_n_steps=12",
    "training.log_every_n_steps=1",
    "data.num_workers=2",
    "data.batch_size=8",
    "data.shuffle_buffer=4",
    "data.val_split=0.3",
    "training.epochs=1000",
)
# (kill at the first batch after this step, step of the checkpoint the next attempt resumes)
KILLS = (
    (13, 8),  # mid-interval: the replay crosses the restart at 10 and the validation at 12
    (16, 16),  # right after a checkpoint that falls between two restarts (10 and 20)
    # resumed past the first validation, this attempt crosses the restart at 20 and the
    # checkpoint + validation at 24 and trains on; the next resumes from that checkpoint,
    # written before its validation ran (the reviewer's case), and trains to the end
    (26, 24),
)


def _run_cmd(shards, out):
    return [sys.executable, "-m", "hlrp.laq.train", *tiny(shards, out, *RESUME_RUN)]


def _ckpt_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.slow
def test_killed_training_resumes_bit_exactly(shards, tmp_path):
    """Killed (SIGKILL) three times at different kinds of points, the run still computes the
    uninterrupted run's losses at every step, and ends with identical weights."""
    ref = tmp_path / "ref"
    subprocess.run(_run_cmd(shards, ref), check=True, capture_output=True)
    reference = _losses(ref / "logs" / "metrics.csv")
    assert sorted(reference) == list(range(30))
    assert sorted(metrics_by_step(ref, "val/mse")) == [11, 23, 30]  # (rows: step - 1), final

    out = tmp_path / "killed"
    for kill_at, resumes_from in KILLS:
        # SIGKILL from inside at the first batch after step `kill_at` (after that step's
        # checkpoint and validation): a kill from outside, without racing the training speed
        env = {**os.environ, "HLRP_FAULT_KILL_AT_STEP": str(kill_at)}
        proc = subprocess.run(_run_cmd(shards, out), env=env, capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert _ckpt_step(out / "checkpoints" / "last.ckpt") == resumes_from
        assert not (out / "laq.ckpt").exists()
    subprocess.run(_run_cmd(shards, out), check=True, capture_output=True)

    # every step any attempt logged (the killed attempts' rows are kept as metrics.attempt*)
    # is the uninterrupted run's, bit for bit
    attempts = sorted((out / "logs").glob("metrics.attempt*.csv"))
    assert len(attempts) == len(KILLS)
    starts = [0, *(resumes_from for _, resumes_from in KILLS)]
    for path, start, (kill_at, _) in zip(attempts, starts, KILLS):  # none missing
        assert sorted(_losses(path)) == list(range(start, kill_at)), path.name
    assert sorted(_losses(out / "logs" / "metrics.csv")) == list(range(starts[-1], 30))
    for path in [*attempts, out / "logs" / "metrics.csv"]:
        got = _losses(path)
        steps = sorted(got)
        assert torch.equal(
            torch.tensor([got[s] for s in steps], dtype=torch.float64),
            torch.tensor([reference[s] for s in steps], dtype=torch.float64),
        ), (path.name, [s for s in steps if got[s] != reference[s]][:5])

    final = torch.load(out / "laq.ckpt", weights_only=False)
    ref_final = torch.load(ref / "laq.ckpt", weights_only=False)
    assert final["global_step"] == ref_final["global_step"] == 30
    assert final["state_dict"].keys() == ref_final["state_dict"].keys()
    for k, v in ref_final["state_dict"].items():
        assert torch.equal(final["state_dict"][k], v), k


def _scene_dm(shards, *extra) -> LAQDataModule:
    cfg = load(
        [
            "data.num_workers=0",
            "data.batch_size=4",
            "data.shuffle_buffer=3",
            "data.val_split=0.1",
            *extra,
        ],
        stage="laq",
    ).laq.data
    dm = LAQDataModule(cfg, shards, seed=5)
    dm.setup("fit")
    return dm


def _same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["key"] == y["key"]
        and torch.equal(x["t"], y["t"])
        and torch.equal(x["offset"], y["offset"])
        and torch.equal(x["frames"], y["frames"])
        for x, y in zip(a, b)
    )


@pytest.fixture
def count_decodes(monkeypatch) -> list[int]:
    """Counts the frame-pair decodes of this process (what skipping a batch must not do)."""
    return count_calls(monkeypatch, laq_data, "decode_frames")


@pytest.mark.parametrize("pair_level", [False, True])
def test_loader_resumes_exactly_without_decoding_skipped_batches(shards, count_decodes, pair_level):
    extra = ["data.pair_level=true"] if pair_level else []
    reference = _scene_dm(shards, *extra).train_dataloader()
    epochs = [list(reference), list(reference)]  # every iteration is the next epoch
    n = len(epochs[0])
    assert n == len(reference) >= 4 and not _same_batches(epochs[0], epochs[1])

    for epoch, served in [(0, 1), (0, n - 1), (1, 2)]:
        loader = _scene_dm(shards, *extra).train_dataloader()
        loader.load_state_dict({"epoch": epoch, "served": served})
        count_decodes[0] = 0
        it = iter(loader)
        first = next(it)
        # the resume cost does not grow with the position: one decode per pair of the first
        # batch, none for the `served` batches before it
        assert count_decodes[0] == len(first["key"]), (epoch, served, count_decodes[0])
        assert _same_batches([first, *it], epochs[epoch][served:]), (epoch, served)
        assert loader.state_dict() == {"epoch": epoch, "served": n}
    # a checkpoint written after an epoch's last batch resumes at the next epoch's first
    loader = _scene_dm(shards, *extra).train_dataloader()
    loader.load_state_dict({"epoch": 0, "served": n})
    assert _same_batches(list(loader), epochs[1])


def test_loader_batches_do_not_depend_on_workers(shards):
    """A rank's workers share one stream: the batches (and a resume) are the same for any
    data.num_workers, which is not part of the resume hash."""
    reference = list(_scene_dm(shards).train_dataloader())
    loader = _scene_dm(shards, "data.num_workers=2").train_dataloader()
    assert _same_batches(list(loader), reference)
    loader = _scene_dm(shards, "data.num_workers=2").train_dataloader()
    loader.load_state_dict({"epoch": 0, "served": 3})
    assert _same_batches(list(loader), reference[3:])
