"""LAQ report (hlrp.laq.report): values on models with KNOWN codes, the gate, the page, the CLI.

The corpus: clips of a yellow square moving on a noisy background with a random velocity per
frame; action row i is the velocity from frame i to frame i+1. Two stand-in models with the
interface the report uses:

* :class:`KnownCodes`: its codes are the square's displacement between the two frames (one
  code per axis), i.e. a deterministic function of the pair's action; its decoder paints the
  square where the codes say. Its codes probe must reach R² ~ 1 and beat frame t alone.
* a real micro LAQ whose quantizer is forced to one code: collapsed codes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MICRO_LAQ
from hlrp.common.config import DataConfig, LAQReportConfig
from hlrp.data.shards import ShardWriter, make_sample
from hlrp.data.split import is_val_video
from hlrp.laq.gate import check_gate, gate_section
from hlrp.laq.model import LAQ
from hlrp.laq.quantizers import QuantOut
from hlrp.laq.report import build_report, gather_pairs, main
from hlrp.laq.report_html import render_html

TINY = MICRO_LAQ
VAL_SPLIT = 0.5
NUM_CLIPS = 16
NUM_FRAMES = 12
SIZE = 32
SIDE = 8
SQUARE = (250, 200, 30)
PAIRS_PER_CLIP = (NUM_FRAMES - 1) + (NUM_FRAMES - 2)  # every (t, t+k), k in offsets [1, 2]


def _video(i: int) -> str:
    return f"square_{i:02d}_{i:08x}"


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def square_clip(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames of a square moving with a random velocity; action row i = the velocity i -> i+1."""
    rng = np.random.default_rng(seed)
    bg = (rng.integers(0, 40, size=(SIZE, SIZE, 3)) + 40).astype(np.uint8)
    pos = rng.integers(6, SIZE - SIDE - 6, size=2).astype(np.int64)  # (y, x)
    frames, actions = [], []
    for _ in range(NUM_FRAMES):
        f = bg.copy()
        f[pos[0] : pos[0] + SIDE, pos[1] : pos[1] + SIDE] = SQUARE
        frames.append(f)
        vel = rng.integers(-1, 2, size=2)
        new = np.clip(pos + vel, 0, SIZE - SIDE)
        actions.append(new - pos)  # the velocity actually applied (walls stop the square)
        pos = new
    return frames, np.asarray(actions, dtype=np.float32)  # (n, 2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report_shards")
    with ShardWriter(root, max_bytes=60_000) as w:  # a few shards
        for i in range(NUM_CLIPS):
            vid = _video(i)
            frames, actions = square_clip(i)
            if i == 1:
                actions[3] = np.nan  # pairs over this row have no action
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
    val = [i for i in range(NUM_CLIPS) if is_val_video(_video(i), VAL_SPLIT)]
    assert 4 <= len(val) <= NUM_CLIPS - 4, "the corpus needs held-out and training videos"
    return root


class KnownCodes(torch.nn.Module):
    """A stand-in LAQ whose codes are the square's displacement (dy + 4, dx + 4) between frames."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = dataclasses.replace(TINY, codebook_size=9)
        self.quantizer = SimpleNamespace(codebook_size=9)
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so that .to() and .train() work

    @staticmethod
    def _mask(img: torch.Tensor) -> torch.Tensor:  # (B, C, S, S) -> (B, S, S) square pixels
        return (img[:, 0] > 0.75) & (img[:, 2] < 0.35)

    def encode_actions(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        S = frames.shape[-1]
        grid = torch.arange(S, dtype=torch.float32, device=frames.device)
        centres = []
        for j in (0, 1):
            m = self._mask(frames[:, j]).float()  # (B, S, S)
            n = m.sum((1, 2)).clamp_min(1)
            centres.append(
                torch.stack([(m.sum(2) * grid).sum(1) / n, (m.sum(1) * grid).sum(1) / n], 1)
            )
        d = centres[1] - centres[0]  # (B, 2) displacement (dy, dx) in pixels
        idx = (d.round().clamp(-4, 4) + 4).long()  # (B, L=2)
        return idx, d.unsqueeze(-1)  # z_pre (B, L, 1)

    def decode_with_indices(self, first: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Frame t with the square painted where the codes move it."""
        color = torch.tensor(SQUARE, dtype=first.dtype, device=first.device).view(3, 1) / 255
        out = first.clone()
        mask = self._mask(first)  # (B, S, S)
        for b in range(len(first)):
            dy, dx = (int(v) - 4 for v in indices[b])
            moved = torch.roll(mask[b], shifts=(dy, dx), dims=(0, 1))  # (S, S)
            out[b][:, moved] = color
        return out

    def forward(self, frames: torch.Tensor) -> SimpleNamespace:
        idx, z = self.encode_actions(frames)
        return SimpleNamespace(
            recon=self.decode_with_indices(frames[:, 0], idx) + 0 * self.anchor,
            indices=idx,
            z_pre=z,
        )


def tiny_laq() -> LAQ:
    torch.manual_seed(0)
    return LAQ(TINY).eval()


def collapsed_laq() -> LAQ:
    model = tiny_laq()
    q = model.quantizer

    def collapsed(x: torch.Tensor) -> QuantOut:  # every index 0, a constant quantized vector
        idx = torch.zeros(x.shape[:2], dtype=torch.long, device=x.device)
        one = torch.ones((), device=x.device)
        return QuantOut(q.indices_to_codes(idx).float(), idx, 0 * one, one, one / 8)

    q.forward = collapsed
    return model


def report_cfg(**kw) -> LAQReportConfig:
    base = {
        "max_clips": 16,
        "pairs_per_clip": 8,
        "train_pairs_per_clip": 16,
        "batch_size": 32,
        "num_examples": 3,
        "probe_bootstrap": 200,
    }
    return LAQReportConfig(**{**base, **kw})


def data_cfg(val_split: float = VAL_SPLIT) -> DataConfig:
    return DataConfig(name="squares", offsets=[1, 2], val_split=val_split)


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _checks(report: dict) -> dict[str, dict]:
    return {c["key"]: c for c in report["gate"]["checks"]}


@pytest.fixture(scope="module")
def known_report(shards, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("known_report")
    # all 21 pairs of each clip
    cfg = report_cfg(min_probe_r2=0.5, min_probe_margin=0.3, train_pairs_per_clip=48)
    report = build_report(KnownCodes(), shards, data_cfg(), cfg, out)
    return report, out


def test_gather_pairs_splits_by_video(shards):
    seen_train = []

    def encoder(frames: np.ndarray) -> dict[str, np.ndarray]:
        seen_train.append(len(frames))
        return {"n": np.zeros(len(frames))}

    cfg = report_cfg(batch_size=20)
    val, train, heldout, _ = gather_pairs(shards, data_cfg(), cfg, encoder)
    assert heldout
    assert all(is_val_video(v, VAL_SPLIT) for v in val.video)
    assert not any(is_val_video(v, VAL_SPLIT) for v in train.video)
    n_val = sum(is_val_video(_video(i), VAL_SPLIT) for i in range(NUM_CLIPS))
    assert val.clips == n_val and train.clips == NUM_CLIPS - n_val
    assert len(train) == train.clips * 16 and len(val) == val.clips * 8
    for side in (val, train):  # distinct pairs
        assert len(set(zip(side.clip, side.t, side.k))) == len(side)
    assert sum(seen_train) == len(train) and len(train.feature("n")) == len(train)
    assert not train.frames and len(val.frames) == len(val)  # training frames are not kept
    # the NaN row of clip 1 makes its pairs over row 3 unknown, never a zero action
    for side in (val, train):
        for v, t, k, a in zip(side.video, side.t, side.k, side.action):
            assert (a is None) == (v == _video(1) and t <= 3 < t + k)
    # caps
    val, train, _, _ = gather_pairs(shards, data_cfg(), report_cfg(max_clips=2, train_max_clips=3))
    assert val.clips == 2 and train.clips == 0  # no encoder: no training side
    val, train, _, _ = gather_pairs(
        shards, data_cfg(), report_cfg(max_clips=2, train_max_clips=3), encoder
    )
    assert val.clips == 2 and train.clips == 3


def test_known_codes_predict_actions(known_report):
    report, _ = known_report
    act = report["actions"]
    assert act["available"] and act["action_dim"] == 2 and act["dims_used"] == [0, 1]
    probe = act["probe"]
    assert probe["applicable"]
    assert set(probe["r2"]) == {"codes", "z_pre", "pixels", "pixel_diff"}
    r2 = probe["r2"]
    assert r2["codes"] > 0.95, r2
    assert r2["z_pre"] > 0.9, r2
    assert r2["pixels"] < 0.2 and r2["codes"] > r2["pixels"] + 0.7  # the scene alone: ~nothing
    for name, (lo, hi) in probe["r2_ci95"].items():
        assert lo <= r2[name] <= hi, name
    assert all(len(v) == 2 for v in probe["r2_per_dim"].values())
    # fitted on training videos, scored on held-out ones
    n_val = sum(is_val_video(_video(i), VAL_SPLIT) for i in range(NUM_CLIPS))
    assert probe["heldout_videos"] == n_val and probe["train_videos"] == NUM_CLIPS - n_val
    assert probe["train_pairs"] == act["train"]["pairs"] > probe["heldout_pairs"] == act["pairs"]
    assert all(a in (0.01, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4) for a in probe["alpha"].values())
    assert act["nmi"]["nmi"] > act["nmi"]["nmi_chance"] + 0.3
    # the codes move the square: decoding another pair's codes costs PSNR
    assert report["code_shuffle"]["psnr_drop_db"] > 1.0
    assert report["codebook"]["perplexity"] > 2.0
    checks = _checks(report)
    assert checks["min_probe_r2"]["status"] == "pass"
    assert checks["min_probe_r2"]["value"] == pytest.approx(r2["codes"])
    assert report["gate"]["passed"], report["gate"]["failures"]
    assert report["gate"]["thresholds"]["min_probe_r2"] == 0.5
    # codes beat frame t alone on the same resampled held-out videos (paired interval)
    margin = probe["margin"]["pixels"]
    assert margin["margin"] == pytest.approx(r2["codes"] - max(r2["pixels"], 0.0))  # floored
    assert 0.3 < margin["ci95"][0] <= margin["ci95"][1]
    diff = probe["margin"]["pixel_diff"]["margin"]
    assert diff == pytest.approx(r2["codes"] - max(r2["pixel_diff"], 0.0))
    assert checks["min_probe_margin"]["status"] == "pass"
    assert checks["min_probe_margin"]["value"] == margin["ci95"][0]


def test_report_outputs(known_report):
    report, out = known_report
    assert json.loads((out / "report.json").read_text()) == report
    data = report["data"]
    assert data["heldout"] is True and data["pairs"] == data["clips"] * 8
    assert data["train_pairs"] == data["train_clips"] * PAIRS_PER_CLIP
    rec = report["reconstruction"]
    for v in (rec["psnr_db"], rec["psnr_copy_db"], report["code_shuffle"]["psnr_shuffled_db"]):
        assert _finite(v) and 0 < v < 100
    assert rec["psnr_gain_db"] == pytest.approx(rec["psnr_db"] - rec["psnr_copy_db"])
    assert set(rec["by_offset"]) == {"1", "2"}
    cb = report["codebook"]
    assert sum(cb["counts"]) == data["pairs"] * TINY.code_seq_len
    assert len(cb["dead_codes"]) == cb["size"] - cb["used_codes"]
    page = (out / "report.html").read_text()
    assert "<script" not in page and "http" not in page
    for rel in report["figures"].values():
        png = out / rel
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{rel}"' in page
    assert {"codebook_usage", "psnr", "probes", "examples"} <= set(report["figures"])
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_micro_laq_report_runs(shards, tmp_path):
    """A real (untrained) LAQ through the whole report: every probe measured, JSON-clean."""
    report = build_report(tiny_laq(), shards, data_cfg(), report_cfg(), tmp_path)
    probe = report["actions"]["probe"]
    assert probe["applicable"] and all(_finite(v) and v <= 1 for v in probe["r2"].values())
    assert report["gate"]["failures"] == check_gate(report, report_cfg())


def test_collapsed_laq_fails_gate(shards, tmp_path):
    cfg = report_cfg(min_probe_r2=0.2, min_probe_margin=0.0)
    report = build_report(collapsed_laq(), shards, data_cfg(), cfg, tmp_path)
    cb = report["codebook"]
    assert cb["perplexity"] == pytest.approx(1.0) and cb["sequence_perplexity"] == 1.0
    assert cb["dead_codes"] == list(range(1, 8)) and cb["distinct_sequences"] == 1
    assert abs(report["code_shuffle"]["psnr_drop_db"]) < 1e-6
    r2 = report["actions"]["probe"]["r2"]["codes"]
    assert r2 <= 0.01  # a constant feature predicts the training mean, nothing more
    assert report["gate"]["passed"] is False
    checks = _checks(report)
    assert {k for k, c in checks.items() if c["status"] == "fail"} == {
        "min_perplexity",
        "min_used_fraction",
        "min_sequence_perplexity",
        "min_psnr_drop_db",
        "min_probe_r2",
        "min_probe_margin",
    }
    failures = report["gate"]["failures"]
    assert any(f.startswith("codes collapsed: perplexity 1.000") for f in failures)
    assert any("carry almost nothing" in f for f in failures)
    assert any(f.startswith("code sequences collapsed") for f in failures)
    assert any(f.startswith("the codes do not predict the actions") for f in failures)
    assert any(f.startswith("the codes do not beat frame t alone") for f in failures)
    assert len(failures) == 6 and all("\n" not in f for f in failures)
    assert 'class="verdict fail"' in (tmp_path / "report.html").read_text()


def test_no_heldout_videos(shards, tmp_path):
    cfg = report_cfg(max_clips=6, min_probe_r2=0.5, min_probe_margin=0.0)
    report = build_report(KnownCodes(), shards, data_cfg(val_split=0.0), cfg, tmp_path)
    assert report["data"]["heldout"] is False and report["data"]["clips"] == 6
    assert any("validation split" in w for w in report["warnings"])
    probe = report["actions"]["probe"]
    assert probe["applicable"] is False and "no held-out videos" in probe["note"]
    for key in ("min_probe_r2", "min_probe_margin"):
        assert _checks(report)[key]["status"] == "not applicable"  # reported, not failed
    assert report["gate"]["passed"], report["gate"]["failures"]


def healthy() -> dict:
    return {
        "data": {"pairs": 1000},
        "codebook": {"size": 8, "perplexity": 6.5, "used_fraction": 1.0, "used_codes": 8},
        "code_shuffle": {"psnr_drop_db": 2.3},
        "actions": {
            "available": True,
            "probe": {
                "applicable": True,
                "r2": {"codes": 0.6},
                "r2_ci95": {"codes": [0.5, 0.7]},
                "margin": {"pixels": {"margin": 0.2, "ci95": [0.1, 0.3]}},
            },
        },
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
    # the probe threshold: off by default, then gated, not applicable without actions
    strict = LAQReportConfig(min_probe_r2=0.65)
    msgs = check_gate(healthy(), strict)
    assert msgs == [
        "the codes do not predict the actions: held-out probe R² 0.600, 95% interval "
        "[0.500, 0.700] < 0.65"
    ]
    assert check_gate(healthy(), LAQReportConfig(min_probe_r2=0.6)) == []
    no_actions = healthy()
    no_actions["actions"] = {"available": False, "note": "no evaluated pair has actions"}
    assert check_gate(no_actions, strict) == []
    gate = gate_section(no_actions, strict)
    probe_check = [c for c in gate["checks"] if c["key"] == "min_probe_r2"][0]
    assert (
        probe_check["status"] == "not applicable" and "no evaluated pair" in probe_check["message"]
    )
    unmeasured = healthy()
    unmeasured["actions"]["probe"]["r2"]["codes"] = None
    assert "not measured" in check_gate(unmeasured, strict)[0]
    # the margin over frame t: gated on the low end of its paired interval
    assert check_gate(healthy(), LAQReportConfig(min_probe_margin=0.1)) == []
    msgs = check_gate(healthy(), LAQReportConfig(min_probe_margin=0.15))
    assert msgs == [
        "the codes do not beat frame t alone: held-out R² margin +0.200, 95% interval "
        "[+0.100, +0.300], low end < 0.15; the codes say little about the action that the "
        "scene does not"
    ]
    no_margin = healthy()
    del no_margin["actions"]["probe"]["margin"]  # a report from before margins
    assert "not measured" in check_gate(no_margin, LAQReportConfig(min_probe_margin=0.0))[0]
    assert check_gate(no_actions, LAQReportConfig(min_probe_margin=0.0)) == []
    statuses = {c["key"]: c["status"] for c in gate_section(healthy(), cfg)["checks"]}
    assert statuses["min_probe_r2"] == statuses["min_probe_margin"] == "not gated"
    assert statuses["min_sequence_perplexity"] == "not applicable"  # not in this report


class _Table(HTMLParser):
    """Rows of the summary table: (data-check, class, [cell texts])."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str | None, str, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self.rows.append((a.get("data-check"), a.get("class") or "", []))
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1][2].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _gate_rows(page: str) -> dict[str, tuple[str, list[str]]]:
    parser = _Table()
    parser.feed(page)
    return {key: (cls, cells) for key, cls, cells in parser.rows if key}


def test_html_lists_every_gated_check(known_report):
    report, out = known_report
    rows = _gate_rows((out / "report.html").read_text())
    thresholds = report["gate"]["thresholds"]
    assert (
        set(rows)
        == set(thresholds)
        == {
            "min_perplexity",
            "min_used_fraction",
            "min_sequence_perplexity",
            "min_psnr_drop_db",
            "min_probe_r2",
            "min_probe_margin",
        }
    )
    for key, (cls, cells) in rows.items():
        assert cells[2] == f"≥ {thresholds[key]}", (key, cells)  # its own threshold
        assert cls == "pass" and cells[3] == "pass"
    # a failed, a not-gated and a not-applicable check
    bad = json.loads(json.dumps(report))
    bad["codebook"]["sequence_perplexity"] = 1.0
    cfg = LAQReportConfig(min_sequence_perplexity=1.7)
    bad["gate"] = gate_section(bad, cfg)
    rows = _gate_rows(render_html(bad))
    assert rows["min_sequence_perplexity"][0] == "fail"
    assert rows["min_sequence_perplexity"][1][1:] == ["1.000", "≥ 1.7", "FAIL"]
    assert rows["min_probe_r2"][1][2] == "not gated"
    bad["actions"] = {"available": False, "note": "no evaluated pair has ground-truth actions"}
    bad["gate"] = gate_section(bad, LAQReportConfig(min_probe_r2=0.3))
    cls, cells = _gate_rows(render_html(bad))["min_probe_r2"]
    assert cls == "na" and cells[2].startswith("≥ 0.3 (not applicable")
    # text is escaped by the template
    bad["warnings"] = ["<b>x</b> & y"]
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in render_html(bad)


def _save_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model_config": asdict(TINY),
        "state_dict": tiny_laq().state_dict(),
        "global_step": 7,
        "config_hash": "feedc0de",
    }
    torch.save(payload, path)
    return path


def test_training_config_warnings_are_surfaced(shards, tmp_path):
    ckpt = _save_checkpoint(tmp_path / "laq" / "laq.ckpt")
    cfg = report_cfg(max_clips=2, train_max_clips=2, num_examples=1)
    (ckpt.parent / "config.yaml").write_text(
        "laq:\n  data:\n    val_split: 0.1\n    offsets: [1, 2]\n"
    )
    report = build_report(KnownCodes(), shards, data_cfg(), cfg, tmp_path / "r1", checkpoint=ckpt)
    msgs = [w for w in report["warnings"] if "trained with data.val_split=0.1" in w]
    assert len(msgs) == 1
    page = (tmp_path / "r1" / "report.html").read_text()
    assert "trained with data.val_split=0.1" in page
    assert report["config_hash"] == "feedc0de" and report["laq_sha256"]
    # a config.yaml that cannot be read is a warning too, not silence
    (ckpt.parent / "config.yaml").write_text("data: [unclosed\n")
    report = build_report(KnownCodes(), shards, data_cfg(), cfg, tmp_path / "r2", checkpoint=ckpt)
    assert any(w.startswith("could not read the LAQ's training config") for w in report["warnings"])
    (ckpt.parent / "config.yaml").write_text("model: {}\n")
    report = build_report(KnownCodes(), shards, data_cfg(), cfg, tmp_path / "r3", checkpoint=ckpt)
    assert any("has no laq.data.val_split" in w for w in report["warnings"])


def test_cli(shards, tmp_path):
    ckpt = _save_checkpoint(tmp_path / "laq" / "laq.ckpt")
    out = tmp_path / "report"
    rc = main(
        [
            f"laq_ckpt={ckpt}",
            f"data.shards={shards}",
            f"output_dir={out}",
            f"data.val_split={VAL_SPLIT}",
            "data.offsets=[1]",
            "laq_report.max_clips=3",
            "laq_report.train_max_clips=4",
            "laq_report.num_examples=2",
            "laq_report.probe_bootstrap=50",
        ]
    )
    assert rc == 0  # also when the gate fails
    report = json.loads((out / "report.json").read_text())
    assert report["config_hash"] == "feedc0de" and report["global_step"] == 7
    assert report["laq_checkpoint"] == str(ckpt.resolve())
    assert report["data"]["clips"] == 3 and report["data"]["offsets"] == [1]
    assert report["data"]["train_clips"] == 4
    assert (out / "report.html").is_file()
    assert main([f"output_dir={out}"]) == 2  # laq_ckpt and data.shards are required
