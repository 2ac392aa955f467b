"""LAQ report (hlrp.laq.report): outputs, the gate on a collapsed LAQ, probes, NMI, the CLI."""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MICRO_LAQ
from hlrp.common.config import DataConfig, LAQReportConfig
from hlrp.data.shards import ShardWriter, make_sample
from hlrp.laq.data import is_val_video
from hlrp.laq.model import LAQ
from hlrp.laq.quantizers import QuantOut
from hlrp.laq.report import (
    _pair_action,
    build_report,
    check_gate,
    main,
    nmi,
    ridge_probe,
    tercile_ids,
)

TINY = MICRO_LAQ
VAL_SPLIT = 0.5
NUM_CLIPS = 12
NUM_FRAMES = 12
SIZE = 32


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def square_clip(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames of a square moving with a random velocity; action row i = the velocity i -> i+1."""
    rng = np.random.default_rng(seed)
    bg = (rng.integers(0, 40, size=(SIZE, SIZE, 3)) + 40).astype(np.uint8)
    side = 8
    pos = rng.integers(4, SIZE - side - 4, size=2).astype(np.int64)  # (y, x)
    frames, actions = [], []
    for _ in range(NUM_FRAMES):
        f = bg.copy()
        f[pos[0] : pos[0] + side, pos[1] : pos[1] + side] = (250, 200, 30)
        frames.append(f)
        vel = rng.integers(-2, 3, size=2)
        pos = np.clip(pos + vel, 0, SIZE - side)
        actions.append(vel)
    return frames, np.asarray(actions, dtype=np.float32)  # (n, 2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_shards")
    with ShardWriter(root, max_bytes=60_000) as w:  # a few shards
        for i in range(NUM_CLIPS):
            vid = f"square_{i:02d}_{i:08x}"
            frames, actions = square_clip(i)
            if i == 1:
                actions[3] = np.nan  # rows with NaN are dropped from the pair actions
            meta = {
                "video_id": vid,
                "source": f"{vid}.mp4",
                "clip_index": 0,
                "num_frames": NUM_FRAMES,
                "fps": 10.0,
                "resolution": SIZE,
                "instruction": "move the square",
                "episode_id": vid,
                "task": "square",
                "has_actions": True,
            }
            w.write(make_sample(f"{vid}-0000", meta, [_jpeg(f) for f in frames], actions))
    val = [i for i in range(NUM_CLIPS) if is_val_video(f"square_{i:02d}_{i:08x}", VAL_SPLIT)]
    assert len(val) >= 3, "the synthetic corpus needs a few held-out videos"
    return root


def tiny_laq() -> LAQ:
    torch.manual_seed(0)
    return LAQ(TINY).eval()


def report_cfg(**kw) -> LAQReportConfig:
    base = {"max_clips": 16, "pairs_per_clip": 4, "batch_size": 16, "num_examples": 3}
    return LAQReportConfig(**{**base, **kw})


def data_cfg(val_split: float = VAL_SPLIT) -> DataConfig:
    return DataConfig(name="squares", offsets=[1, 2], val_split=val_split)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def test_report_outputs(shards, tmp_path):
    cfg = report_cfg()
    report = build_report(tiny_laq(), shards, data_cfg(), cfg, tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == report
    assert report["data"]["heldout"] is True and report["data"]["pairs"] > 0
    assert report["data"]["clips"] < NUM_CLIPS  # only the held-out videos
    rec, sh, cb = report["reconstruction"], report["code_shuffle"], report["codebook"]
    for v in (rec["psnr_db"], rec["psnr_copy_db"], sh["psnr_shuffled_db"]):
        assert _finite(v) and 0 < v < 100
    assert rec["psnr_gain_db"] == pytest.approx(rec["psnr_db"] - rec["psnr_copy_db"])
    assert set(rec["by_offset"]) <= {"1", "2"}
    assert _finite(sh["psnr_drop_db"])
    assert 1.0 <= cb["perplexity"] <= cb["size"] + 1e-9
    assert 0 < cb["used_fraction"] <= 1
    assert sum(cb["counts"]) == report["data"]["pairs"] * TINY.code_seq_len
    assert len(cb["dead_codes"]) == cb["size"] - cb["used_codes"]
    assert 1 <= cb["distinct_sequences"] <= report["data"]["pairs"]
    act = report["actions"]
    assert act["available"] and act["action_dim"] == 2
    for name in ("codes", "z_pre", "pixels"):
        assert _finite(act["probe"]["r2"][name]) and act["probe"]["r2"][name] <= 1
    assert 0 <= act["nmi"]["nmi"] <= 1 and 0 <= act["nmi"]["nmi_chance"] <= 1
    gate = report["gate"]
    assert gate["passed"] == (not gate["failures"])
    assert gate["failures"] == check_gate(report, cfg)
    assert gate["thresholds"]["min_perplexity"] == cfg.min_perplexity
    assert report["laq_checkpoint"] is None
    # figures and the page
    page = (tmp_path / "report.html").read_text()
    assert "<script" not in page and "http" not in page
    for rel in report["figures"].values():
        png = tmp_path / rel
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{rel}"' in page
    assert {"codebook_usage", "psnr", "probes", "examples"} <= set(report["figures"])
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_collapsed_laq_fails_gate(shards, tmp_path, monkeypatch):
    model = tiny_laq()
    q = model.quantizer

    def collapsed(x: torch.Tensor) -> QuantOut:  # every index 0, a constant quantized vector
        idx = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        one = torch.ones((), device=x.device)
        return QuantOut(q.indices_to_codes(idx).float(), idx, 0 * one, one, one / 8)

    monkeypatch.setattr(q, "forward", collapsed)
    cfg = report_cfg(max_clips=6)
    report = build_report(model, shards, data_cfg(val_split=0.0), cfg, tmp_path)
    assert report["data"]["heldout"] is False
    assert any("validation split" in w for w in report["warnings"])
    assert report["codebook"]["perplexity"] == pytest.approx(1.0)
    assert report["codebook"]["dead_codes"] == list(range(1, 8))
    assert report["codebook"]["distinct_sequences"] == 1
    assert abs(report["code_shuffle"]["psnr_drop_db"]) < 1e-6
    assert report["gate"]["passed"] is False
    failures = report["gate"]["failures"]
    assert any(f.startswith("codes collapsed: perplexity") for f in failures)
    assert any("carry almost nothing" in f for f in failures)
    assert any(f.startswith("code sequences collapsed") for f in failures)
    assert len(failures) == 4 and all("\n" not in f for f in failures)
    assert 'class="verdict fail"' in (tmp_path / "report.html").read_text()


def healthy() -> dict:
    return {
        "data": {"pairs": 1000},
        "codebook": {"size": 8, "perplexity": 6.5, "used_fraction": 1.0, "used_codes": 8},
        "code_shuffle": {"psnr_drop_db": 2.3},
    }


def test_check_gate():
    cfg = LAQReportConfig()
    assert check_gate(healthy(), cfg) == []
    bad = healthy()
    bad["codebook"].update(perplexity=1.1, used_fraction=0.125, used_codes=1, dead_codes=[1])
    msgs = check_gate(bad, cfg)
    assert len(msgs) == 2 and all(m.startswith("codes collapsed") for m in msgs)
    bad = healthy()
    bad["code_shuffle"]["psnr_drop_db"] = 0.01
    assert check_gate(bad, cfg)[0].startswith("the codes carry almost nothing")
    bad = healthy()
    bad["codebook"].update(
        sequence_perplexity=1.2, top_sequences=[{"codes": [2, 0, 0, 0], "fraction": 0.9}]
    )
    msgs = check_gate(bad, cfg)
    assert len(msgs) == 1 and "[2, 0, 0, 0] is 90%" in msgs[0]
    missing = healthy()
    missing["code_shuffle"]["psnr_drop_db"] = None  # NaN is written as null
    assert len(check_gate(missing, cfg)) == 1
    assert len(check_gate({}, cfg)) == 3


def test_ridge_probe_recovers_linear_relation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 10))
    w = rng.normal(size=(10, 3))
    groups = np.arange(300) // 5  # 60 "clips"
    lin = ridge_probe(x, x @ w + 0.01 * rng.normal(size=(300, 3)), groups, ridge=1e-3)
    assert lin["folds"] == 5 and lin["r2"] > 0.99
    noise = ridge_probe(x, rng.normal(size=(300, 3)), groups, ridge=1e-3)
    assert -0.2 < noise["r2"] < 0.05
    # more features than samples (dual form), and a constant target dim is left out
    xw = rng.normal(size=(40, 100))
    y = np.stack([xw[:, 0], np.ones(40)], axis=1)
    wide = ridge_probe(xw, y, np.arange(40) // 4, ridge=1e-2)
    assert math.isnan(wide["r2_per_dim"][1]) and math.isfinite(wide["r2"])
    assert math.isnan(ridge_probe(x, x @ w, np.zeros(300))["r2"])  # one clip: no folds


def test_nmi():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=5000)
    assert nmi(a, a) == pytest.approx(1.0)
    assert nmi(a, (a + 2) % 5) == pytest.approx(1.0)  # renaming labels changes nothing
    assert nmi(a, rng.integers(0, 5, size=5000)) < 0.01
    assert nmi(np.zeros(10), np.zeros(10)) == 1.0 and nmi(np.zeros(10), np.arange(10)) == 0.0
    y = rng.normal(size=(300, 3))
    y[:, 2] = 1.0  # constant dim: not binned
    bins, joint, dims = tercile_ids(y)
    assert dims == [0, 1] and bins.max() == 2 and len(np.unique(joint)) == 9
    assert np.bincount(bins[:, 0]).min() >= 90  # terciles


def test_pair_action_sums_rows_and_drops_nan():
    a = np.array([[1, 2], [np.nan, 1], [3, 4], [5, 6]], dtype=np.float32)
    np.testing.assert_allclose(_pair_action(a, 0, 3), [4, 6])
    np.testing.assert_allclose(_pair_action(a, 2, 4), [8, 10])
    assert _pair_action(a, 1, 2) is None and _pair_action(None, 0, 1) is None


def test_cli(shards, tmp_path):
    model = tiny_laq()
    ckpt = tmp_path / "laq" / "laq.ckpt"
    ckpt.parent.mkdir()
    payload = {
        "model_config": asdict(TINY),
        "state_dict": model.state_dict(),
        "global_step": 7,
        "config_hash": "feedc0de",
    }
    torch.save(payload, ckpt)
    out = tmp_path / "report"
    rc = main(
        [
            f"laq={ckpt}",
            f"data.shards={shards}",
            f"output_dir={out}",
            f"data.val_split={VAL_SPLIT}",
            "data.offsets=[1]",
            "laq_report.max_clips=3",
            "laq_report.num_examples=2",
        ]
    )
    assert rc == 0  # also when the gate fails
    report = json.loads((out / "report.json").read_text())
    assert report["config_hash"] == "feedc0de" and report["global_step"] == 7
    assert report["laq_checkpoint"] == str(ckpt.resolve())
    assert report["data"]["clips"] == 3 and report["data"]["offsets"] == [1]
    assert (out / "report.html").is_file()
    assert main([f"output_dir={out}"]) == 2  # laq and data.shards are required
