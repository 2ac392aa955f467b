"""The setup check (``python -m hlrp.doctor``): exit codes, JSON output and single checks."""

from __future__ import annotations

import json
import re
import sys
from types import SimpleNamespace

import pytest

from hlrp import doctor


def summary_line(out: str) -> str:
    return [ln for ln in out.splitlines() if ln.startswith("doctor:")][-1]


def test_preprocess_passes_here(capsys: pytest.CaptureFixture[str]) -> None:
    rc = doctor.main(["--stages", "preprocess", "--skip-render"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert summary_line(out).startswith("doctor: OK")
    assert "decoder: decord" in out  # the table lists the decoder rows


def test_json_output(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "doctor.json"
    rc = doctor.main(["--stages", "preprocess", "--skip-render", "--json", str(path)])
    capsys.readouterr()
    assert rc == 0
    rows = json.loads(path.read_text())
    assert all(set(r) == {"check", "status", "detail", "needed_by"} for r in rows)
    by_name = {r["check"]: r for r in rows}
    for name in ("decoder: decord", "decoder: pyav", "decoder: torchcodec"):
        assert name in by_name
    assert by_name["decoder: decord"]["status"] == "ok"
    assert by_name["decoder: pyav"]["needed_by"] == ["preprocess"]
    assert by_name["render (Meta-World)"]["status"] == "skip"
    assert {r["status"] for r in rows} <= {"ok", "warn", "FAIL", "skip"}


def test_missing_decoders_block_preprocess(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)  # importing them now raises ImportError
    monkeypatch.setitem(sys.modules, "av", None)
    rc = doctor.main(["--stages", "preprocess", "--skip-render"])
    line = summary_line(capsys.readouterr().out)
    assert rc == 1
    assert "FAIL" in line and "preprocess" in line
    assert "decoder: decord" in line and "decoder: pyav" in line


def test_one_missing_decoder_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)
    rows = {c.name: c for c in doctor.check_decoders(["decord", "pyav"])}
    assert rows["decoder: decord"].status == "warn"
    assert "pyav" in rows["decoder: decord"].detail
    assert rows["decoder: pyav"].status == "ok"


def test_gpu_experiment_needs_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = doctor.main(["--experiment", "laq_full", "--stages", "train_laq", "--skip-render"])
    line = summary_line(capsys.readouterr().out)
    assert rc == 1
    assert "CUDA" in line and "train_laq" in line


def test_gpu_failure_does_not_block_other_stages(capsys: pytest.CaptureFixture[str]) -> None:
    rc = doctor.main(["--experiment", "laq_full", "--stages", "preprocess", "--skip-render"])
    capsys.readouterr()
    assert rc == 0


def test_disk_check_reports_a_number(tmp_path) -> None:
    check = doctor.check_disk("results", tmp_path)
    assert check.status in ("ok", "warn", "FAIL")
    assert re.search(r"\d+\.\d+ GB free", check.detail), check.detail

    missing = tmp_path / "not" / "there"
    check = doctor.check_disk("data", missing, ["preprocess"])
    assert re.search(r"\d+\.\d+ GB free", check.detail), check.detail
    assert str(tmp_path) in check.detail  # measured at the nearest existing parent
    assert not (tmp_path / "not").exists()  # nothing was created
    assert check.needed_by == ["preprocess"]


def test_disk_thresholds(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    def usage(free_gb: float):
        return lambda _path: SimpleNamespace(
            total=100e9, used=100e9 - free_gb * 1e9, free=free_gb * 1e9
        )

    monkeypatch.setattr(doctor.shutil, "disk_usage", usage(5.0))
    assert doctor.check_disk("results", tmp_path).status == "warn"
    monkeypatch.setattr(doctor.shutil, "disk_usage", usage(0.5))
    assert doctor.check_disk("results", tmp_path).status == "FAIL"


def test_wandb_mode_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    check = doctor.check_wandb("online")
    assert check.status == "ok" and "WANDB_MODE" in check.detail and check.needed_by == []


def test_unknown_stage_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        doctor.main(["--stages", "train_lap"])
    assert e.value.code == 2
    assert "train_lap" in capsys.readouterr().err


@pytest.mark.sim
def test_render_check_runs() -> None:
    check = doctor.check_render()
    assert check.status == "ok", check.detail
    assert "fps" in check.detail
