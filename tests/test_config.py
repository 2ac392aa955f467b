"""Hydra composition with typed schemas: every experiment composes, mistakes are named."""

from __future__ import annotations

import shutil

import pytest

from hlrp.common import config as C
from hlrp.common.cli import run


@pytest.mark.parametrize("experiment", C.experiments())
def test_every_experiment_composes_to_dataclasses(experiment):
    cfg = C.load([f"experiment={experiment}"])
    assert cfg.name == experiment
    assert isinstance(cfg.data, C.DataConfig)
    assert isinstance(cfg.data.preprocess, C.PreprocessConfig)
    assert isinstance(cfg.training.optimizer, C.OptimizerConfig)
    assert isinstance(cfg.model, C.LAQModelConfig | C.FoundationModelConfig)
    assert max(cfg.data.offsets) >= 1


def test_required_experiments_exist():
    assert {"laq_debug", "laq_full", "vla_7b", "demo_tiny"} <= set(C.experiments())


def test_laq_full_matches_lapa():
    m = C.load(["experiment=laq_full"]).model
    assert (m.image_size, m.patch_size, m.dim, m.heads, m.dim_head) == (256, 32, 1024, 16, 64)
    assert (m.spatial_depth, m.temporal_depth, m.decoder_depth) == (8, 8, 8)
    assert (m.codebook_size, m.code_seq_len, m.quant_dim) == (8, 4, 32)


def test_cli_style_overrides():
    cfg = C.load(
        [
            "experiment=laq_debug",
            "data.batch_size=16",
            "training.optimizer.lr=5e-5",
            "data.offsets=[10,20,30]",
            "data.pair_level=true",
        ]
    )
    assert cfg.data.batch_size == 16
    assert cfg.training.optimizer.lr == pytest.approx(5e-5)
    assert cfg.data.offsets == [10, 20, 30]
    assert cfg.data.pair_level is True


@pytest.mark.parametrize(
    "override, expected",
    [
        ("data.bach_size=3", "'bach_size' not in 'DataConfig'.*Did you mean 'batch_size'"),
        ("model.dimm=3", "'dimm' not in 'LAQModelConfig'.*Did you mean 'dim'"),
        ("training.optimizer.lr=fast", "could not be converted to Float.*training.optimizer.lr"),
        ("experiment=nope", "Could not find 'experiment/nope'"),
    ],
)
def test_bad_overrides_are_named(override, expected):
    with pytest.raises(C.ConfigError, match=expected):
        C.load([override])


def test_misspelled_key_in_a_yaml_file_is_named(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "config"
    shutil.copytree(C.CONFIG_DIR, cfg_dir)
    path = cfg_dir / "data" / "demo.yaml"
    path.write_text(path.read_text().replace("batch_size:", "batchsize:"))
    with pytest.raises(C.ConfigError, match="batchsize"):
        C.to_object(C.compose_config(["experiment=demo_tiny"], config_dir=cfg_dir))


def test_cli_reports_config_errors(capsys):
    assert run(lambda cfg: 0, ["data.bach_size=3"], "usage") == 2
    assert "batch_size" in capsys.readouterr().err
    assert run(lambda cfg: 0, ["not-an-override"], "usage") == 2


def test_cli_prints_resolved_config(capsys):
    assert run(lambda cfg: 1, ["--cfg", "experiment=laq_full"], "usage") == 0
    out = capsys.readouterr().out
    assert "name: laq_full" in out and "patch_size: 32" in out


def test_cli_passes_dataclasses_to_main():
    seen = {}

    def main(cfg):
        seen["cfg"] = cfg
        return 0

    assert run(main, ["experiment=laq_debug", "workers=3"], "usage") == 0
    assert isinstance(seen["cfg"], C.RootConfig) and seen["cfg"].workers == 3
