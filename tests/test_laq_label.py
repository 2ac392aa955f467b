"""Latent labelling: contents, the LAQ gate, resume after a crash or a kill, no mixing."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from conftest import MICRO_LAQ, make_small_corpus
from hlrp.common.config import LabelConfig, load
from hlrp.data.preprocess import preprocess
from hlrp.data.shards import iter_clips, resolve_shards
from hlrp.laq import label as LB
from hlrp.laq.export import export_laq, load_laq
from hlrp.laq.model import LAQ

TINY = MICRO_LAQ


def save_laq(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    export_laq(path, LAQ(TINY), f"seed{seed}", 0)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_data")
    make_small_corpus(root, n=6, frames=30)
    c = load(
        [
            "data.preprocess.resolution=32",
            "data.preprocess.fps=10",
            "data.preprocess.min_clip_frames=3",
            "data.preprocess.shard_size_mb=0.001",
        ]
    )  # one clip per shard: 6 shards
    preprocess(
        root / "videos",
        root / "shards",
        c.data.preprocess,
        workers=1,
        actions_dir=root / "actions",
    )
    return root / "shards", save_laq(root / "laq.ckpt")


def read_labels(out: Path) -> list[dict]:
    index = json.loads((out / "index.json").read_text())
    samples = []
    for s in index["shards"]:
        for sample in wds.tariterators.tarfile_samples([{"url": str(out / s["path"])}]):
            samples.append(sample)
    return samples


def test_labels_every_pair_with_codes_and_metadata(corpus, tmp_path):
    shards, ckpt = corpus
    cfg = LabelConfig(image_size=48, batch_size=5)
    index = LB.label(ckpt, shards, tmp_path / "labels", cfg, offset=2)
    clips = list(iter_clips(shards))
    expected = sum(c["meta"]["num_frames"] - 2 for c in clips)
    assert index["totals"]["pairs"] == expected
    samples = read_labels(tmp_path / "labels")
    assert len(samples) == expected
    meta = json.loads(samples[0]["json"])
    assert len(meta["codes"]) == TINY.code_seq_len
    assert all(0 <= c < TINY.codebook_size for s in samples for c in json.loads(s["json"])["codes"])
    assert meta["offset"] == 2 and meta["instruction"].startswith("move the square")
    assert meta["laq_hash"] == index["laq_hash"] and len(index["laq_hash"]) == 64
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(samples[0]["jpg"])).size == (48, 48)
    # actions: the sum over frames t..t+k-1 of the per-frame rows (column 0 = source frame)
    clip = next(c for c in clips if c["__key__"] == meta["clip_key"])
    actions = np.load(io.BytesIO(samples[0]["actions.npy"]))
    src = clip["meta"]["source_frames"]
    assert actions[0] == pytest.approx(src[meta["t"]] + src[meta["t"] + 1])


def test_codes_match_the_model(corpus, tmp_path):
    shards, ckpt = corpus
    LB.label(ckpt, shards, tmp_path / "labels", LabelConfig(image_size=32), offset=2)
    sample = read_labels(tmp_path / "labels")[3]
    meta = json.loads(sample["json"])
    clip = next(c for c in iter_clips(shards) if c["__key__"] == meta["clip_key"])
    from hlrp.data.shards import decode_frames
    from hlrp.laq.model import to_model_input

    frames = torch.from_numpy(decode_frames(clip, (meta["t"], meta["t"] + 2)))[None]
    codes, _ = load_laq(ckpt).encode_actions(to_model_input(frames, 32))
    assert codes[0].tolist() == meta["codes"]


def test_another_checkpoint_writes_elsewhere(corpus, tmp_path):
    shards, ckpt = corpus
    out = tmp_path / "labels"
    first = LB.label(ckpt, shards, out, LabelConfig(image_size=32), offset=2)
    other = LB.label(
        save_laq(tmp_path / "other.ckpt", seed=1), shards, out, LabelConfig(image_size=32), offset=2
    )
    assert first["laq_hash"] != other["laq_hash"]
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == sorted({f"labels-{first['labels_key']}", f"labels-{other['labels_key']}"})
    # the top index points at the newest labels only, and every sample carries that hash
    assert {json.loads(s["json"])["laq_hash"] for s in read_labels(out)} == {other["laq_hash"]}


def test_labels_are_keyed_by_everything_that_defines_them(corpus, tmp_path):
    """Another image size, offset or JPEG quality with the same LAQ writes a new folder,
    and index.json states what the labels were made with; a faster batch size does not."""
    shards, ckpt = corpus
    out = tmp_path / "labels"
    base = LB.label(ckpt, shards, out, LabelConfig(image_size=32), offset=2)
    keys = {base["labels_key"]}
    for cfg, offset in [
        (LabelConfig(image_size=24), 2),
        (LabelConfig(image_size=32), 1),
        (LabelConfig(image_size=32, jpeg_quality=80), 2),
    ]:
        index = LB.label(ckpt, shards, out, cfg, offset=offset)
        assert index["labels_key"] not in keys and index["totals"]["labelled_now"] > 0
        keys.add(index["labels_key"])
        top = json.loads((out / "index.json").read_text())
        assert (top["image_size"], top["offset"]) == (cfg.image_size, offset)
        sample = read_labels(out)[0]
        from PIL import Image

        assert Image.open(io.BytesIO(sample["jpg"])).size == (cfg.image_size,) * 2
    again = LB.label(ckpt, shards, out, LabelConfig(image_size=32, batch_size=3), offset=2)
    assert again["labels_key"] == base["labels_key"] and again["totals"]["labelled_now"] == 0
    assert (again["codebook_size"], again["code_seq_len"]) == (8, 2)


def test_a_crash_keeps_finished_shards(corpus, tmp_path, monkeypatch):
    shards, ckpt = corpus
    out = tmp_path / "labels"
    real = LB.label_shard
    calls = []
    crashed = []

    def crash_on_third(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3 and not crashed:
            crashed.append(True)
            raise RuntimeError("node died")
        return real(*args, **kwargs)

    monkeypatch.setattr(LB, "label_shard", crash_on_third)
    with pytest.raises(RuntimeError, match="node died"):
        LB.label(ckpt, shards, out, LabelConfig(image_size=32), offset=2)
    done = sorted((out).glob("labels-*/*.tar"))
    assert len(done) == 2 and not list(out.glob("labels-*/.*"))  # no half-written shard visible
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in done}

    calls.clear()
    index = LB.label(ckpt, shards, out, LabelConfig(image_size=32), offset=2)
    assert len(calls) == len(resolve_shards(shards)) - 2  # finished shards are not redone
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == stamps[p] for p in done)
    assert index["totals"]["labelled_now"] < index["totals"]["pairs"]

    calls.clear()
    again = LB.label(ckpt, shards, out, LabelConfig(image_size=32), offset=2)
    assert calls == [] and again["totals"]["pairs"] == index["totals"]["pairs"]


@pytest.mark.slow
def test_killed_labelling_resumes(corpus, tmp_path):
    shards, ckpt = corpus
    out = tmp_path / "labels"
    cmd = [
        sys.executable,
        "-m",
        "hlrp.laq.label",
        f"laq_ckpt={ckpt}",
        f"data.shards={shards}",
        f"output_dir={out}",
        "label.batch_size=2",
        "label.image_size=96",
        "workers=1",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    while not list(out.glob("labels-*/*.tar")) and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in out.glob("labels-*/*.tar")}
    assert 1 <= len(before) < len(resolve_shards(shards))
    subprocess.run(cmd, check=True, capture_output=True)
    after = {p: p.stat().st_mtime_ns for p in out.glob("labels-*/*.tar")}
    assert len(after) == len(resolve_shards(shards))
    assert all(after[p] == t for p, t in before.items())
    assert not list(out.glob("labels-*/.*.tmp"))


def test_gate_blocks_labelling(corpus, tmp_path):
    shards, ckpt = corpus
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {"gate": {"passed": False, "failures": ["codes collapsed: perplexity 1.00 < 1.5"]}}
        )
    )
    args = [
        f"laq_ckpt={ckpt}",
        f"data.shards={shards}",
        f"output_dir={tmp_path / 'labels'}",
        f"report={report}",
    ]
    assert LB.main(args) == LB.GATE_FAILED_EXIT
    assert not (tmp_path / "labels").exists()
    assert LB.main([*args, "label.allow_failed_gate=true", "label.image_size=32"]) == 0
    assert (tmp_path / "labels" / "index.json").is_file()
    with pytest.raises(LB.GateFailed, match="collapsed"):
        LB.check_report_gate(report, allow_failed=False)
    with pytest.raises(FileNotFoundError, match="laq_report"):
        LB.check_report_gate(tmp_path / "missing.json", allow_failed=False)


def test_collapsed_laq_is_stopped_by_the_gate(corpus, tmp_path):
    """End to end: a LAQ whose codes cannot depend on the frames -> report -> labelling stops."""
    from hlrp.laq import report as R

    shards, _ = corpus
    torch.manual_seed(0)
    model = LAQ(TINY)
    with torch.no_grad():  # z_pre = cnn(proj_in(enc_t+k)) - cnn(proj_in(enc_t)) == 0 always
        model.action.proj_in.weight.zero_()
        model.action.proj_in.bias.zero_()
    ckpt = tmp_path / "collapsed.ckpt"
    torch.save(
        {
            "model_config": asdict(TINY),
            "state_dict": model.state_dict(),
            "global_step": 0,
            "config_hash": "collapsed",
        },
        ckpt,
    )
    common = [f"laq_ckpt={ckpt}", f"data.shards={shards}", "data.offsets=[2]", "data.val_split=0.0"]
    assert R.main([*common, f"output_dir={tmp_path / 'report'}"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["gate"]["passed"] is False
    assert report["codebook"]["distinct_sequences"] == 1
    rc = LB.main(
        [
            *common,
            f"output_dir={tmp_path / 'labels'}",
            f"report={tmp_path / 'report' / 'report.json'}",
        ]
    )
    assert rc == LB.GATE_FAILED_EXIT and not (tmp_path / "labels").exists()


def test_a_report_of_other_weights_is_stale(corpus, tmp_path):
    shards, ckpt = corpus
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"laq_sha256": "0" * 64, "gate": {"passed": True}}))
    with pytest.raises(LB.GateFailed, match="stale report"):
        LB.check_report_gate(report, allow_failed=False, laq_path=ckpt)
