"""Stage 2: every supported backbone family round-trips offline and trains a step; the model
learns a deterministic image-to-code mapping; training resumes exactly after SIGKILL; DDP
with two CPU processes; LoRA and a frozen vision tower; clear errors for bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import MICRO_LAQ
from hlrp.common.config import load
from hlrp.foundation.data import Collator, held_out, open_labels
from hlrp.foundation.export import load_foundation
from hlrp.foundation.families import FAMILIES, build_tiny, resolve_backbone
from hlrp.foundation.model import LatentActionVLA
from hlrp.foundation.train import train
from labels import make_labels

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def labels(tmp_path_factory):
    return make_labels(tmp_path_factory.mktemp("fdata"), MICRO_LAQ)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {fam: build_tiny(fam, root / fam) for fam in FAMILIES}


def overrides(labels, out, *extra):
    index, laq = labels
    return [
        "name=test",
        "model.backbone=tiny-smolvlm",
        "model.image_size=64",
        f"data.labels={index}",
        f"laq_ckpt={laq}",
        f"output_dir={out}",
        "data.batch_size=8",
        "data.val_split=0.25",
        "data.mix_shards=2",
        "training.max_steps=8",
        "training.log_every_n_steps=2",
        "training.validation.every_n_steps=4",
        "training.checkpoint_every_n_steps=4",
        "training.optimizer.lr=3e-3",
        "training.precision=32-true",
        "cluster.wandb_mode=disabled",
        *extra,
    ]


def cfg_for(labels, out, *extra):
    return load(overrides(labels, out, *extra), stage="foundation")


def batch_of(vla, index, n=4, append=True):
    items = held_out(open_labels(str(index), None).shards, 0.25)[:n]
    return Collator(vla.processor, vla.family, vla.meta.action_token_ids, append)(items)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_round_trips_offline_and_trains_a_step(family, backbones, labels, tmp_path):
    vla = LatentActionVLA.from_backbone(str(backbones[family]), 8, 2)
    assert vla.family.name == family
    ids = vla.meta.action_token_ids
    emb = vla.backbone.get_input_embeddings().weight
    assert torch.allclose(emb[ids[0]], emb[: min(ids)].mean(0), atol=1e-6)  # mean init
    batch = batch_of(vla, labels[0])
    opt = torch.optim.AdamW(vla.parameters(), lr=1e-3)
    loss, stats = vla.loss(batch)
    assert torch.isfinite(loss) and 0 <= stats["seq_acc"] <= stats["token_acc"] <= 1
    loss.backward()
    opt.step()
    assert vla.backbone.get_input_embeddings().weight.grad is not None
    vla.eval()
    before = vla(batch)
    vla.save(tmp_path / "saved")
    again = load_foundation(tmp_path / "saved")
    assert again.meta.action_token_ids == ids
    torch.testing.assert_close(again(batch), before)
    codes, probs = again.predict(batch_of(again, labels[0], append=False))
    assert codes.shape == (4, 2) and codes.min() >= 0 and codes.max() < 8
    assert ((probs > 0) & (probs <= 1)).all()


def test_tiny_backbone_loads_through_from_pretrained(tmp_path):
    folder = resolve_backbone("tiny-qwen2_vl", tmp_path)
    assert (Path(folder) / "config.json").is_file()
    assert json.loads((Path(folder) / "config.json").read_text())["model_type"] == "qwen2_vl"
    mtime = (Path(folder) / "config.json").stat().st_mtime
    assert resolve_backbone("tiny-qwen2_vl", tmp_path) == folder  # built once
    assert (Path(folder) / "config.json").stat().st_mtime == mtime


def test_learns_a_deterministic_image_to_code_mapping(labels, tmp_path):
    """Codes are a fixed function of image and instruction: held-out full-sequence accuracy
    of constrained generation must reach 95 %."""
    out = tmp_path / "learn"
    cfg = cfg_for(
        labels,
        out,
        "training.max_steps=200",
        "training.optimizer.lr=5e-3",
        "training.validation.every_n_steps=100",
        "training.checkpoint_every_n_steps=1000",
        "training.scheduler.name=cosine",
        "training.scheduler.warmup_steps=10",
        "data.batch_size=16",
    )
    train(cfg)
    vla = load_foundation(out / "model")
    vla.eval()
    pairs = held_out(open_labels(str(labels[0]), None).shards, 0.25)
    batch = Collator(vla.processor, vla.family, vla.meta.action_token_ids, False)(pairs)
    codes, _ = vla.predict(batch)
    seq_acc = (codes == batch["codes"]).all(-1).float().mean().item()
    assert seq_acc >= 0.95, seq_acc
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 200 and metrics["val/seq_acc"] >= 0.95
    assert (out / "plots" / "training.png").stat().st_size > 10_000
    rows = (out / "logs" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,train/loss") and len(rows) > 60

    # the report on the same held-out pairs: the model beats both baselines, and says so
    from hlrp.common.config import FoundationReportConfig
    from hlrp.foundation.report import write_report

    rep = write_report(
        str(out / "model"), str(labels[0]), tmp_path / "report", 0.25, FoundationReportConfig()
    )
    assert rep["scores"]["model"]["seq_acc"] == pytest.approx(seq_acc)
    assert rep["beats"] == {"majority": True, "instruction": True}
    assert rep["verdict"].startswith("The model beats both baselines")
    # codes depend on the image (shade) too: the instruction alone gets about half right
    assert 0.2 < rep["scores"]["instruction"]["seq_acc"] < 0.8
    assert set(rep["per_task"]) == {p["meta"]["task"] for p in pairs}
    assert sum(t["pairs"] for t in rep["per_task"].values()) == len(pairs)
    assert len(rep["confusion"]) == 2 and len(rep["confusion"][0]) == 8
    assert rep["held_out"]["videos"] == len({p["meta"]["video_id"] for p in pairs})
    assert rep["calibration"]["ece"] >= 0
    html = (tmp_path / "report" / "report.html").read_text()
    assert "beats both baselines" in html and html.count("data:image/png") == 4


def run_cli(labels, out, *extra, env=None):
    cmd = [sys.executable, "-m", "hlrp.foundation.train", *overrides(labels, out, *extra)]
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=600
    )


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


FSDP = ("cluster.devices=2", "cluster.strategy=fsdp", "cluster.accelerator=cpu")


@pytest.mark.parametrize("strategy", ["single", "fsdp"])
def test_killed_training_resumes_exactly(strategy, labels, tmp_path):
    """SIGKILLed after step 6 (checkpoint at step 4), the rerun continues to the same weights
    as an uninterrupted run, bit for bit; with FSDP2 over two CPU processes too."""
    extra = ("training.max_steps=10", *(FSDP if strategy == "fsdp" else ()))
    ref = tmp_path / "ref"
    proc = run_cli(labels, ref, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "killed"
    proc = run_cli(labels, out, *extra, env={"HLRP_FAULT_KILL_AT_STEP": "6"})
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert "killing myself" in proc.stderr and not (out / "model").exists()
    proc = run_cli(labels, out, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed at step 4" in proc.stderr
    if strategy == "fsdp":  # a sharded folder: one shard file per rank, no full copy
        last = out / "checkpoints" / "last"
        assert (last / "meta.pt").is_file() and len(list(last.glob("*.distcp"))) == 2
        assert not (out / "checkpoints" / "last.ckpt").exists()
    a, b = weights(ref), weights(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    rows = [r.split(",")[0] for r in (out / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == [
        r.split(",")[0] for r in (ref / "logs" / "metrics.csv").read_text().splitlines()[1:]
    ]
    if strategy == "single":  # the same command once more: the finished run moves aside
        proc = run_cli(labels, out, *extra)
        assert proc.returncode == 0 and (out / "previous" / "run-001" / "model").is_dir()


def test_fsdp_on_one_process_exports_plain_weights(labels, tmp_path):
    """FSDP2 on one device (a one-GPU run of the cluster's config): the parameters are
    DTensors, so the export must gather them like a multi-process run does."""
    out = tmp_path / "fsdp1"
    proc = run_cli(
        labels, out, "cluster.devices=1", "cluster.strategy=fsdp", "cluster.accelerator=cpu"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sd = weights(out)
    assert sd and all(type(v) is torch.Tensor for v in sd.values())
    assert (out / "checkpoints" / "last" / "meta.pt").is_file()


def test_ddp_with_two_cpu_processes(labels, tmp_path):
    out = tmp_path / "ddp"
    proc = run_cli(
        labels, out, "cluster.devices=2", "cluster.strategy=ddp", "cluster.accelerator=cpu"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 8
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["stream_positions"].shape == (2, 2)
    assert ckpt["hlrp"]["world_size"] == 2
    load_foundation(out / "model")


def test_stream_is_per_rank_endless_and_resumes_at_its_position(labels):
    from itertools import islice

    from hlrp.foundation.data import LabelStream

    shards = open_labels(str(labels[0]), None).shards
    r0 = LabelStream(shards, rank=0, seed=0, val_split=0.25, mix=2)
    r1 = LabelStream(shards, rank=1, seed=0, val_split=0.25, mix=2)
    first = [(it["key"], pos) for it, pos in islice(r0.iterate(), 200)]  # > one pass
    assert len(first) == 200 and first[-1][1][0] > 3  # several segments
    assert [k for k, _ in first[:40]] != [it["key"] for it, _ in islice(r1.iterate(), 40)]
    assert all("video" in k for k, _ in first)
    held = {it["meta"]["video_id"] for it in held_out(shards, 0.25)}
    assert held and not held & {k.rsplit("-c0000", 1)[0] for k, _ in first}
    resumed = [(it["key"], pos) for it, pos in islice(r0.iterate(first[99][1]), 100)]
    assert resumed == first[100:]

    # batches made by worker threads come in stream order, identical to the serial ones
    from hlrp.foundation.data import batches

    def keys(items):
        return {"codes": torch.tensor([it["meta"]["codes"] for it in items]), "n": len(items)}

    serial = [(b["codes"], p) for b, p in islice(batches(r0, keys, 7), 12)]
    threaded = [(b["codes"], p) for b, p in islice(batches(r0, keys, 7, workers=3), 12)]
    assert [p for _, p in serial] == [p for _, p in threaded]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(serial, threaded))


def test_lora_and_frozen_vision(labels, tmp_path):
    out = tmp_path / "lora"
    cfg = cfg_for(labels, out, "model.lora_rank=4", "model.freeze_vision=true")
    start = load_file(
        str(resolve_backbone("tiny-smolvlm", out / "backbones")) + "/model.safetensors"
    )
    train(cfg)
    end = weights(out)
    vision = [k for k in start if "vision_model" in k]
    assert vision and all(torch.equal(start[k], end[k]) for k in vision)
    lang = [k for k in start if "text_model" in k and "q_proj" in k]
    assert any(not torch.equal(start[k], end[k]) for k in lang)  # LoRA merged into the weights
    assert not any("lora" in k for k in end)
    load_foundation(out / "model")


def test_bad_backbone_names_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no such tiny family"):
        resolve_backbone("tiny-nope", tmp_path)
    with pytest.raises(ValueError, match="backbone is not set"):
        resolve_backbone(None, tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        LatentActionVLA.from_backbone(str(tmp_path / "empty"), 8, 2)
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        LatentActionVLA.from_backbone("nobody/no-such-model-xyz", 8, 2)
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not a supported backbone family"):
        LatentActionVLA.from_backbone(str(tmp_path / "bert"), 8, 2)


def test_labels_of_another_laq_are_refused(labels, tmp_path):
    index, _ = labels
    _, other_laq = make_labels(tmp_path / "other", MICRO_LAQ, seed=1)
    with pytest.raises(ValueError, match="labelled by the LAQ with sha256"):
        open_labels(str(index), str(other_laq))
    index8, laq = make_labels(tmp_path / "k16", MICRO_LAQ, codebook_size=16)
    with pytest.raises(ValueError, match="codebook size 16"):
        open_labels(str(index8), str(laq))
    with pytest.raises(FileNotFoundError, match="run label_latents first"):
        open_labels(str(tmp_path / "nothing.json"), None)


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(labels, tmp_path):
    """scancel / a Slurm time limit: SIGTERM makes the loop save after the current step and
    exit 143; the same command then resumes from that step."""
    import time

    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "hlrp.foundation.train", *overrides(labels, out)]
    cmd += ["training.max_steps=100000", "training.checkpoint_every_n_steps=100000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 300
    for line in proc.stderr:
        lines.append(line)
        if "step 4/" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    lines += proc.stderr.readlines()
    assert proc.wait(60) == 143, "".join(lines)[-3000:]
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert saved >= 4
    rerun = run_cli(labels, out, f"training.max_steps={saved + 2}")
    assert rerun.returncode == 0 and f"resumed at step {saved}" in rerun.stderr


def test_baselines_and_the_bootstrap():
    import numpy as np

    from hlrp.foundation.report import bootstrap_margin, majority_baselines, scores

    def pair(instr, codes):
        return {"meta": {"instruction": instr, "codes": codes}}

    train = [pair("a", [1, 2]), pair("a", [1, 2]), pair("b", [3, 3]), pair("b", [3, 3])]
    train += [pair("b", [3, 3]), pair("a", [0, 0])]
    overall, per = majority_baselines(train)
    assert overall == (3, 3) and per == {"a": (1, 2), "b": (3, 3)}
    s = scores(np.array([[1, 2], [3, 0]]), np.array([[1, 2], [3, 3]]))
    assert s["token_acc"] == 0.75 and s["seq_acc"] == 0.5
    assert s["token_acc_per_position"] == [1.0, 0.5]
    videos = np.array(["v1", "v1", "v2", "v2", "v3", "v3"])
    better = np.array([1, 1, 1, 1, 1, 0.0])
    lo, hi = bootstrap_margin(better, np.zeros(6), videos, 500, 0)
    assert 0 < lo <= hi <= 1
    assert bootstrap_margin(better, better, videos, 500, 0) == [0.0, 0.0]


def test_long_instructions_are_cut_to_max_text_tokens(backbones):
    vla = LatentActionVLA.from_backbone(str(backbones["qwen2_vl"]), 8, 2)
    tok = vla.processor.tokenizer
    long = "open the drawer " * 50
    short = Collator(vla.processor, vla.family, vla.meta.action_token_ids, False, 5)
    assert len(tok(short.instruction(long), add_special_tokens=False)["input_ids"]) <= 5
    assert short.instruction("open it") == "open it"
    item = {"jpg": held_out_jpg(), "meta": {"instruction": long, "codes": [0, 1]}}
    full = Collator(vla.processor, vla.family, vla.meta.action_token_ids, False)([item])
    cut = short([item])
    assert cut["input_ids"].shape[1] < full["input_ids"].shape[1] - 100


def held_out_jpg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_threaded_batches_match_serial_ones(backbones, labels):
    """Worker threads make the same batches as the main thread: each has its own processor
    (a shared fast tokenizer pads one thread's batch with another's settings)."""
    from itertools import islice

    from hlrp.foundation.data import LabelStream, batches

    vla = LatentActionVLA.from_backbone(str(backbones["smolvlm"]), 8, 2)
    collate = Collator.for_model(vla, append_codes=True)
    stream = LabelStream(open_labels(str(labels[0]), None).shards, 0, 0, 0.25, 2)
    serial = list(islice(batches(stream, collate, 8), 40))
    threaded = list(islice(batches(stream, collate, 8, workers=4), 40))
    for (a, pa), (b, pb) in zip(serial, threaded, strict=True):
        assert pa == pb and a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the mechanism: every thread its own processor, the main thread the model's
    import threading

    seen = []
    workers = [threading.Thread(target=lambda: seen.append(collate._processor())) for _ in "ab"]
    for w in workers:
        w.start()
        w.join()
    assert collate._processor() is vla.processor
    assert len({id(p) for p in seen}) == 2 and vla.processor not in seen
