"""GPU paths: stage 1 (bf16 training, labelling, the report), stage 2 (bf16, FSDP2) and
stage 3 (bf16 finetuning, prediction) on CUDA (marked ``gpu``).

Skipped without a CUDA device; ``bench/gpu_suite.sh`` runs them on a lent GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import MICRO_LAQ, make_small_corpus

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from hlrp.common.config import load
    from hlrp.data.preprocess import preprocess

    root = tmp_path_factory.mktemp("gpu_data")
    make_small_corpus(root, n=6, frames=40)
    c = load(["data.preprocess.resolution=32", "data.preprocess.fps=10"])
    preprocess(root / "videos", root / "shards", c.data.preprocess, actions_dir=root / "actions")
    return root / "shards"


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=600
    )


MICRO = [f"model.{k}={v}" for k, v in vars(MICRO_LAQ).items() if not isinstance(v, list)]


def test_bf16_training_on_gpu(shards, tmp_path):
    out = tmp_path / "laq"
    proc = _cli(
        "hlrp.laq.train",
        "experiment=demo_tiny",
        f"data.shards={shards}",
        f"output_dir={out}",
        *MICRO,
        "data.offsets=[2]",
        "data.val_split=0.3",
        "training.precision=bf16-mixed",
        "training.max_steps=40",
        "training.checkpoint_every_n_steps=20",
        "training.validation.every_n_steps=20",
        "cluster.accelerator=gpu",
        "cluster.wandb_mode=disabled",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 40
    assert torch.isfinite(torch.tensor(metrics["val/mse"]))
    rows = (out / "logs" / "metrics.csv").read_text().splitlines()
    assert len(rows) > 2


def test_labelling_and_report_on_gpu(shards, tmp_path):
    from hlrp.common.config import LabelConfig
    from hlrp.laq.export import export_laq, load_laq
    from hlrp.laq.label import label
    from hlrp.laq.model import LAQ

    torch.manual_seed(0)
    ckpt = tmp_path / "laq.ckpt"
    export_laq(ckpt, LAQ(MICRO_LAQ), "gpu-test", 0)
    index = label(ckpt, shards, tmp_path / "labels", LabelConfig(image_size=32), offset=2)
    assert index["totals"]["pairs"] > 0
    # bf16 codes on the GPU agree with fp32 codes on the CPU for nearly every pair
    from hlrp.data.shards import decode_frames, iter_clips
    from hlrp.laq.model import to_model_input

    clip = next(iter(iter_clips(shards)))
    frames = torch.from_numpy(decode_frames(clip))
    pairs = torch.stack([frames[[t, t + 2]] for t in range(len(frames) - 2)])
    x = to_model_input(pairs, 32)
    cpu, _ = load_laq(ckpt).encode_actions(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu, _ = load_laq(ckpt, map_location="cuda").encode_actions(x.cuda())
    agree = (cpu == gpu.cpu()).float().mean().item()
    assert agree >= 0.9, agree

    proc = _cli(
        "hlrp.laq.report",
        "experiment=demo_tiny",
        f"laq_ckpt={ckpt}",
        f"data.shards={shards}",
        "data.offsets=[2]",
        "data.val_split=0.3",
        f"output_dir={tmp_path / 'report'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["reconstruction"] and "gate" in report


@pytest.mark.parametrize("strategy", ["auto", "fsdp"])
def test_foundation_bf16_on_gpu(strategy, tmp_path):
    """Stage 2 on CUDA: bf16-mixed (autocast; under FSDP2 its mixed-precision policy), the
    exported model loads and generates codes on the GPU, and the report runs there."""
    from labels import make_labels

    index, laq = make_labels(tmp_path / "data", MICRO_LAQ)
    out = tmp_path / "foundation"
    proc = _cli(
        "hlrp.foundation.train",
        "name=gpu",
        "model.backbone=tiny-smolvlm",
        f"data.labels={index}",
        f"laq_ckpt={laq}",
        f"output_dir={out}",
        "data.val_split=0.25",
        "training.max_steps=20",
        "training.log_every_n_steps=5",
        "training.optimizer.lr=3e-3",
        "cluster.accelerator=gpu",
        f"cluster.strategy={strategy}",
        "cluster.wandb_mode=disabled",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precision bf16-mixed" in proc.stderr, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 20 and metrics["train/loss"] < 10
    proc = _cli(
        "hlrp.foundation.report",
        "name=gpu",
        f"model_dir={out / 'model'}",
        f"data.labels={index}",
        f"output_dir={tmp_path / 'report'}",
        "data.val_split=0.25",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["held_out"]["pairs"] > 0


def test_finetuning_bf16_and_prediction_on_gpu(tmp_path):
    """Stage 3 on CUDA: bf16-mixed finetuning of a tiny policy (flow head: sampling on the
    GPU), its export, and prediction on the GPU matching prediction on the CPU."""
    import numpy as np

    sys.path.insert(0, str(Path(__file__).parent))
    from hlrp.foundation.export import resolve_backbone
    from hlrp.low_level.policy import VLAPolicy
    from test_low_level import SIZE, synthetic_episodes

    eps = synthetic_episodes(tmp_path / "episodes")
    backbone = resolve_backbone("tiny-smolvlm", tmp_path / "bb", SIZE)
    out = tmp_path / "ft"
    proc = _cli(
        "hlrp.low_level.train",
        "experiment=ft_demo",
        f"foundation.model.backbone={backbone}",
        f"foundation.model.image_size={SIZE}",
        "init=scratch",
        f"data.episodes={eps.folder}/index.json",
        f"output_dir={out}",
        "model.head=flow",
        "model.chunk=4",
        "training.max_steps=20",
        "training.precision=bf16-mixed",
        "cluster.accelerator=gpu",
        "cluster.wandb_mode=disabled",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ep = eps.load(eps.episodes[0])
    args = ([np.asarray(ep.frames[0])], [ep.instruction], np.asarray(ep.state[:1]))
    cpu = VLAPolicy.load(out / "policy").eval()
    a = cpu.predict(*args, generator=torch.Generator().manual_seed(0))
    gpu = VLAPolicy.load(out / "policy").cuda().eval()
    b = gpu.predict(*args, generator=torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (1, 4, 4)
    assert np.allclose(a, b, atol=1e-2), np.abs(a - b).max()
