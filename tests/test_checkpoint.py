"""hlrp.common.checkpoint: atomic saves, safe loads, RNG streams, and how a run starts."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import MICRO_LAQ
from hlrp.common import checkpoint as C
from hlrp.laq.export import export_laq, laq_vocabulary, load_laq, read_laq_config
from hlrp.laq.model import LAQ


class NotAllowed:
    """A pickled object that weights_only loading must refuse."""

    def __init__(self):
        self.x = 1


def test_save_is_atomic_and_load_is_weights_only(tmp_path):
    path = tmp_path / "ck" / "a.ckpt"
    C.save({"w": torch.ones(3), "step": 4, "name": "x", "t": (1, 2.0)}, path)
    got = C.load(path)
    assert torch.equal(got["w"], torch.ones(3)) and got["step"] == 4 and got["t"] == (1, 2.0)
    assert not list(path.parent.glob(".*.tmp"))
    evil = tmp_path / "evil.ckpt"
    torch.save({"obj": NotAllowed()}, evil)
    with pytest.raises(C.ResumeError, match="evil.ckpt"):
        C.load(evil)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        C.load(tmp_path / "nope.ckpt")


def test_partial_saves_are_cleaned(tmp_path):
    (tmp_path / ".last.ckpt.abc123.tmp").write_bytes(b"x" * 100)
    (tmp_path / "last.ckpt").write_bytes(b"keep")
    removed = C.clean_partial(tmp_path)
    assert [p.name for p in removed] == [".last.ckpt.abc123.tmp"]
    assert (tmp_path / "last.ckpt").read_bytes() == b"keep"


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # a cached Gaussian is part of numpy's state
    C.save({"rng": C.rng_state()}, tmp_path / "r.ckpt")
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    C.set_rng_state(C.load(tmp_path / "r.ckpt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2:] == again[2:]
    states = C.gather_rng_states()
    assert len(states) == 1 and C.rng_state_for_rank(states, 0) is states[0]


def _ckpt(out, step, rhash="h1", world=1):
    C.save(
        {"global_step": step, C.META_KEY: C.stamp(rhash, world), "w": torch.zeros(1)},
        out / "checkpoints" / "last.ckpt",
    )


def test_empty_folder_starts_from_scratch(tmp_path):
    plan = C.prepare_run(tmp_path, "h1", 1, 10)
    assert plan.resume is None


def test_unfinished_run_resumes(tmp_path):
    _ckpt(tmp_path, 5)
    plan = C.prepare_run(tmp_path, "h1", 1, 10)
    assert plan.resume == str(tmp_path / "checkpoints" / "last.ckpt") and plan.step == 5


def test_finished_run_with_the_same_steps_is_moved_aside(tmp_path):
    _ckpt(tmp_path, 10)
    (tmp_path / "laq.ckpt").write_bytes(b"model")
    (tmp_path / "logs").mkdir()
    C.mark_finished(tmp_path, "h1", 10)
    plan = C.prepare_run(tmp_path, "h1", 1, 10)
    assert plan.resume is None
    prev = tmp_path / "previous" / "run-001"
    assert (prev / "laq.ckpt").read_bytes() == b"model"
    assert (prev / "checkpoints" / "last.ckpt").is_file() and (prev / "logs").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]
    # a second finished run goes beside the first
    _ckpt(tmp_path, 10)
    C.mark_finished(tmp_path, "h1", 10)
    C.prepare_run(tmp_path, "h1", 1, 8)
    assert (tmp_path / "previous" / "run-002" / "checkpoints" / "last.ckpt").is_file()


def test_finished_run_with_more_steps_continues(tmp_path):
    _ckpt(tmp_path, 10)
    C.mark_finished(tmp_path, "h1", 10)
    plan = C.prepare_run(tmp_path, "h1", 1, 20)
    assert plan.resume and plan.step == 10
    assert not (tmp_path / "checkpoints" / C.FINISHED).exists()


def test_checkpoint_of_another_config_is_set_aside(tmp_path):
    _ckpt(tmp_path, 5, rhash="other")
    plan = C.prepare_run(tmp_path, "h1", 1, 10)
    assert plan.resume is None
    assert (tmp_path / "checkpoints.stale-other" / "last.ckpt").is_file()


def test_another_world_size_is_refused(tmp_path):
    _ckpt(tmp_path, 5, world=4)
    with pytest.raises(C.ResumeError, match="4 processes and this run has 8"):
        C.prepare_run(tmp_path, "h1", 8, 10)


def test_only_rank_zero_moves_files(tmp_path, monkeypatch):
    _ckpt(tmp_path, 10)
    C.mark_finished(tmp_path, "h1", 10)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert not C.is_global_rank_zero()
    plan = C.prepare_run(tmp_path, "h1", 1, 10)
    assert plan.resume is None  # the same decision as rank 0 ...
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # ... but nothing moved


def sharded(folder, step, rhash="h", world=2):
    """A sharded checkpoint folder as the training loops write it (shards + meta.pt)."""
    folder.mkdir(parents=True)
    (folder / "__0_0.distcp").write_bytes(b"shard")
    C.save({"global_step": step, C.META_KEY: C.stamp(rhash, world)}, folder / C.SHARDED_META)
    return folder


def test_sharded_folders_resume_and_commit_atomically(tmp_path):
    ckpts = tmp_path / "checkpoints"
    C.commit_folder(sharded(ckpts / ".last.tmp", 3), ckpts / "last")
    plan = C.prepare_run(tmp_path, "h", 2, 10, candidates=("checkpoints/last",))
    assert plan.resume == str(ckpts / "last") and plan.step == 3
    C.commit_folder(sharded(ckpts / ".last.tmp", 6), ckpts / "last")  # replaces step 3
    assert C.read_meta(ckpts / "last")["global_step"] == 6
    assert sorted(p.name for p in ckpts.iterdir()) == ["last"]
    # an incomplete folder (no meta.pt) is not a checkpoint
    (ckpts / "half").mkdir()
    assert not C.is_checkpoint(ckpts / "half")
    with pytest.raises(C.ResumeError, match="is not complete"):
        C.commit_folder(ckpts / "half", ckpts / "last")


def test_a_save_killed_between_renames_is_recovered(tmp_path):
    ckpts = tmp_path / "checkpoints"
    sharded(ckpts / ".last.old", 4)  # killed after moving the old one aside...
    sharded(ckpts / ".last.tmp", 8)  # ...with the new one complete but not in place
    (ckpts / ".other.ckpt.tmp").write_bytes(b"partial file")
    plan = C.prepare_run(tmp_path, "h", 2, 10, candidates=("checkpoints/last",))
    assert plan.step == 4 and C.is_checkpoint(ckpts / "last")
    assert sorted(p.name for p in ckpts.iterdir()) == ["last"]


def test_exported_laq_round_trips_weights_only(tmp_path):
    torch.manual_seed(0)
    model = LAQ(MICRO_LAQ)
    export_laq(tmp_path / "laq.ckpt", model, "abc", 7)
    loaded = load_laq(tmp_path / "laq.ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert read_laq_config(tmp_path / "laq.ckpt") == MICRO_LAQ
    assert laq_vocabulary(tmp_path / "laq.ckpt") == (8, 2)
    with pytest.raises(FileNotFoundError, match="run train_laq"):
        load_laq(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="not an exported LAQ"):
        load_laq(tmp_path / "bad.ckpt")


def test_inference_imports_no_lightning():
    code = (
        "import sys, hlrp.laq.export, hlrp.laq.label, hlrp.laq.gate;"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json;" + code], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == []
