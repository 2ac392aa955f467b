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
    assert isinstance(cfg.data, C.SharedDataConfig)
    assert isinstance(cfg.data.preprocess, C.PreprocessConfig)
    for stage in C.STAGES:
        ns = getattr(cfg, stage)
        assert isinstance(ns.training.optimizer, C.OptimizerConfig)
        assert isinstance(ns.cluster, C.ClusterConfig)
    assert isinstance(cfg.laq.model, C.LAQModelConfig)
    assert isinstance(cfg.foundation.model, C.FoundationModelConfig)
    assert max(cfg.laq.data.offsets) >= 1


def test_stage_experiments_set_their_own_namespace():
    laq = C.load(["experiment=laq_full"])
    vla = C.load(["experiment=vla_7b"])
    assert vla.foundation.model.backbone and vla.foundation.cluster.strategy == "fsdp"
    assert laq.foundation.model.backbone is None  # a stage-1 experiment leaves stage 2 alone
    assert vla.laq == C.LAQStageConfig()  # and the other way round
    # stage 2's vocabulary comes from the LAQ checkpoint: no copy in its config
    names = {f.name for f in C.fields(C.FoundationModelConfig)} | {
        f.name for f in C.fields(C.FoundationDataConfig)
    }
    assert not names & {"codebook_size", "code_seq_len"}


def test_required_experiments_exist():
    assert {"laq_debug", "laq_full", "vla_7b", "demo_tiny"} <= set(C.experiments())


def test_laq_full_matches_lapa():
    m = C.load(["experiment=laq_full"]).laq.model
    assert (m.image_size, m.patch_size, m.dim, m.heads, m.dim_head) == (256, 32, 1024, 16, 64)
    assert (m.spatial_depth, m.temporal_depth, m.decoder_depth) == (8, 8, 8)
    assert (m.codebook_size, m.code_seq_len, m.quant_dim) == (8, 4, 32)


def test_cli_style_overrides():
    """The seed notes' command line: short keys mean the stage's namespace."""
    cfg = C.load(
        [
            "experiment=laq_debug",
            "data.batch_size=16",
            "training.optimizer.lr=5e-5",
            "data.offsets=[10,20,30]",
            "data.pair_level=true",
            "data.preprocess.fps=15",
            "laq_report.min_perplexity=2",
            "label.image_size=96",
        ],
        stage="laq",
    )
    assert cfg.laq.data.batch_size == 16
    assert cfg.laq.training.optimizer.lr == pytest.approx(5e-5)
    assert cfg.laq.data.offsets == [10, 20, 30]
    assert cfg.laq.data.pair_level is True
    assert cfg.data.preprocess.fps == 15  # shared, not stage 1's
    assert cfg.laq.report.min_perplexity == 2 and cfg.laq.label.image_size == 96
    full = C.load(["experiment=laq_debug", "laq.data.batch_size=16"])
    assert full.laq.data.batch_size == 16
    group = C.load(["experiment=laq_debug", "model=laq_tiny", "training=laq_tiny"], stage="laq")
    assert group.laq.model.dim == 64 and group.laq.training.max_steps == 1500


def test_short_keys_follow_the_stage():
    cfg = C.load(
        ["experiment=vla_7b", "data.batch_size=3", "model.max_text_tokens=7"], "foundation"
    )
    assert cfg.foundation.data.batch_size == 3 and cfg.foundation.model.max_text_tokens == 7
    assert cfg.laq.data.batch_size == C.DataConfig().batch_size


WEIRD_PATHS = [
    "/data/Robot Videos (2024)",
    "/data/a,b=c/$HOME/${oc.env:HOME}/x",
    '/data/it\'s "quoted"/[1,2]',
    "/data/vidéos/日本/ü",
]


@pytest.mark.parametrize("path", WEIRD_PATHS)
@pytest.mark.parametrize(
    "key, get",
    [
        ("input_dir", lambda c: c.input_dir),
        ("output_dir", lambda c: c.output_dir),
        ("actions_dir", lambda c: c.actions_dir),
        ("data.shards", lambda c: c.laq.data.shards),
        ("laq_ckpt", lambda c: c.laq_ckpt),
    ],
)
def test_any_path_is_taken_literally(key, get, path):
    cfg = C.load(["experiment=demo_tiny", f"{key}={path}"], stage="laq")
    assert get(cfg) == path


def test_cli_takes_paths_literally(capsys):
    seen = {}
    path = "/data/Robot Videos (2024)/a,b=c $x"
    assert run(lambda c: seen.setdefault("c", c) and 0, [f"output_dir={path}"], "u", "laq") == 0
    assert seen["c"].output_dir == path


def test_result_config_leaves_out_paths_cadence_and_workers():
    base = C.load(["experiment=demo_tiny"])
    other = C.load(
        [
            "experiment=demo_tiny",
            "laq.data.shards=/elsewhere/index.json",
            "laq.data.num_workers=9",
            "laq.training.log_every_n_steps=3",
            "laq.training.checkpoint_every_n_steps=7",
            "laq.training.validation.every_n_steps=11",
            "laq.cluster.wandb_mode=disabled",
            "foundation.training.optimizer.lr=1",  # another stage
            "data.preprocess.fps=3",  # the shared preprocessing: its own rule
        ]
    )
    keys = ("laq.model", "laq.data", "laq.training", "seed")
    assert C.result_digest(base, *keys) == C.result_digest(other, *keys)
    longer = C.load(["experiment=demo_tiny", "laq.training.max_steps=99999"])
    assert C.result_hash(base, *keys, resume=True) == C.result_hash(longer, *keys, resume=True)
    assert C.result_hash(base, *keys) != C.result_hash(longer, *keys)  # the rule reruns
    lr = C.load(["experiment=demo_tiny", "laq.training.optimizer.lr=0.5"])
    assert C.result_hash(base, *keys, resume=True) != C.result_hash(lr, *keys, resume=True)


@pytest.mark.parametrize(
    "override, expected",
    [
        ("laq.data.bach_size=3", "'bach_size' not in 'DataConfig'.*Did you mean 'batch_size'"),
        ("laq.model.dimm=3", "'dimm' not in 'LAQModelConfig'.*Did you mean 'dim'"),
        (
            "laq.training.optimizer.lr=fast",
            "could not be converted to Float.*laq.training.optimizer.lr",
        ),
        ("experiment=nope", "Could not find 'experiment/nope'"),
    ],
)
def test_bad_overrides_are_named(override, expected):
    with pytest.raises(C.ConfigError, match=expected):
        C.load([override])


def test_misspelled_key_in_a_yaml_file_is_named(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "config"
    shutil.copytree(C.CONFIG_DIR, cfg_dir)
    path = cfg_dir / "data" / "demo.yaml"  # stage 1's data preset
    path.write_text(path.read_text().replace("batch_size:", "batchsize:"))
    with pytest.raises(C.ConfigError, match="batchsize"):
        C.to_object(C.compose_config(["experiment=demo_tiny"], config_dir=cfg_dir))


def test_cli_reports_config_errors(capsys):
    assert run(lambda cfg: 0, ["data.bach_size=3"], "usage", stage="laq") == 2
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
