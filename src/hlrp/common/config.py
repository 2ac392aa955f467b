"""Typed configuration: the dataclass schemas behind every Hydra config file.

Hydra composes YAML files from ``config/``; each group file lists its schema first in
its defaults list (``- /schema/data@_here_``), so the composed config is a *structured*
config: a misspelled key in a YAML file or on the command line fails at compose time
with a message that names the key. Entry points convert the composed config to these
dataclasses (:func:`to_object`) and code below the entry point never sees a raw dict.

Resources (GPUs, memory, wall time) are deliberately absent: they belong to the
Snakemake rules and profiles, not to experiments.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

#: The repository's ``config/`` folder; ``HLRP_CONFIG_DIR`` points elsewhere.
CONFIG_DIR = Path(os.environ.get("HLRP_CONFIG_DIR", Path(__file__).resolve().parents[3] / "config"))


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
@dataclass
class PreprocessConfig:
    """Video -> WebDataset shards (``hlrp.data.preprocess``)."""

    fps: float = 10.0  # target frame rate; frames are picked by timestamp, so VFR input is handled
    resolution: int = (
        128  # output frames are resolution x resolution: shorter side resized, then center-cropped
    )
    decoders: list[str] = field(default_factory=lambda: ["decord", "pyav"])  # tried in this order
    scene_cut_threshold: float = (
        40.0  # mean |diff| (0..255) of 32x32 grey thumbnails that starts a new scene
    )
    min_motion: float = (
        1.0  # clips whose mean |diff| between consecutive frames is below this are static
    )
    max_clip_frames: int = 256  # longer scenes are split into several clips
    jpeg_quality: int = 95  # frames are stored as JPEG inside the shards
    shard_size_mb: float = (
        256.0  # a shard is closed once it holds this many MB (GPFS likes large files)
    )
    decode_chunk: int = 64  # frames decoded per batch (bounds memory for long or 4K videos)
    max_duration_s: float | None = (
        None  # longer videos are cut at this length (None: keep everything)
    )
    extensions: list[str] = field(
        default_factory=lambda: [".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg"]
    )


@dataclass
class DataConfig:
    """A dataset of clips in WebDataset shards, and how training reads pairs from it."""

    name: str = MISSING
    shards: str | None = None  # shard index.json, folder or brace pattern; set by the workflow
    offsets: list[int] = field(
        default_factory=lambda: [1]
    )  # frame offsets k of pairs (t, t+k), at data fps
    pair_level: bool = (
        False  # True: every valid (t, t+k) pair is one sample; False: one clip per sample
    )
    max_samples: int | None = None  # keep only the first N samples (clips or pairs)
    val_split: float = 0.05  # fraction of clips held out for validation
    batch_size: int = 8
    num_workers: int = 2
    shuffle_buffer: int = 256  # samples kept in the streaming shuffle buffer
    pairs_per_clip: int = 4  # scene-level mode: pairs drawn from each clip per visit
    seed: int = 0
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------
@dataclass
class LAQModelConfig:
    """Latent action quantizer (LAPA's LAQ: https://arxiv.org/abs/2410.11758)."""

    name: str = "laq"
    image_size: int = 256  # input frames are image_size x image_size
    patch_size: int = 32  # (image_size / patch_size)^2 spatial tokens per frame
    channels: int = 3
    dim: int = 1024  # transformer width
    spatial_depth: int = 8
    temporal_depth: int = 8
    decoder_depth: int = 8
    heads: int = 16
    dim_head: int = 64
    mlp_ratio: float = 4.0
    codebook_size: int = 8  # number of distinct latent action codes
    code_seq_len: int = 4  # codes per transition
    quant_dim: int = 32  # dimension the quantizer works in
    quantizer: str = "nsvq"  # nsvq | fsq | vq_ema
    fsq_levels: list[int] = field(
        default_factory=lambda: [8]
    )  # FSQ levels (product = codebook size)
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    compile: bool = False  # torch.compile the model


@dataclass
class FoundationModelConfig:
    """Vision-language model that predicts latent action codes (stage 2)."""

    name: str = "vla"
    backbone: str = MISSING  # Hugging Face model id or local folder
    build_from_config: bool = False  # True: random init from the backbone's config (tests, demo)
    tiny_overrides: dict[str, Any] = field(
        default_factory=dict
    )  # config fields changed before a random init
    dtype: str = "bfloat16"
    max_text_tokens: int = 64
    image_size: int = 224
    gradient_checkpointing: bool = False
    freeze_vision: bool = False


# --------------------------------------------------------------------------------------
# training and cluster
# --------------------------------------------------------------------------------------
@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    name: str = "constant"  # constant | cosine (after warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio


@dataclass
class ValidationConfig:
    every_n_steps: int = 1000
    visualize_every_n_steps: int = 1000
    visualize_train: bool = False  # also save reconstruction grids of training batches
    num_visualize: int = 8


@dataclass
class TrainingConfig:
    epochs: int = 1
    max_steps: int = -1  # -1: train for `epochs`
    grad_clip: float = 0.5
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, fp32 on CPU
    accumulate_grad_batches: int = 1
    checkpoint_every_n_steps: int = 1000
    log_every_n_steps: int = 50
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class ClusterConfig:
    """Where a job runs. Slurm resources live in the Snakemake profiles, not here."""

    name: str = "local_cpu"
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: int = 1  # GPUs (or CPU processes) per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp
    wandb_mode: str = "offline"  # offline | online | disabled


@dataclass
class DemoConfig:
    """The embedded demo corpus rendered from Meta-World expert policies (``hlrp.sim``)."""

    tasks: list[str] = field(
        default_factory=lambda: [
            "drawer-open-v3",
            "drawer-close-v3",
            "button-press-topdown-v3",
            "door-open-v3",
            "window-open-v3",
        ]
    )
    episodes_per_task: int = 10
    resolution: int = 128  # rendered frames are resolution x resolution
    steps_per_frame: int = 2  # simulator steps (80 Hz) per video frame: 2 -> 40 fps video
    camera: str = "corner"
    max_steps: int = 300  # simulator steps before an episode is cut
    steps_after_success: int = 20  # keep recording a little after the task is solved
    seed: int = 0
    action_noise: float = 0.0  # std of Gaussian noise added to the expert's actions (0: none)
    crf: int = 18  # libx264 constant rate factor of the rendered videos (lower: better quality)


@dataclass
class LAQReportConfig:
    """The LAQ quality report (``hlrp.laq.report``) and the gate it puts before stage 2."""

    max_clips: int = 256  # held-out clips evaluated (the data.val_split videos)
    pairs_per_clip: int = 4  # (t, t+k) pairs drawn per clip
    batch_size: int = 64
    num_examples: int = 8  # rows in the example grids
    probe_ridge: float = 1e-3  # L2 penalty of the linear probes
    seed: int = 0
    # gate thresholds: label_latents refuses to run when one fails (see label.allow_failed_gate)
    min_perplexity: float = 1.5  # codes collapsed: perplexity over all held-out pairs below this
    min_used_fraction: float = 0.25  # fraction of the codebook used on held-out pairs
    min_sequence_perplexity: float = 1.5  # whole code sequences (LAPA's "[2,0,0,0] always")
    min_psnr_drop_db: float = 0.05  # decoding another pair's codes must cost at least this PSNR


@dataclass
class LabelConfig:
    """Latent-action labelling of the shards for stage 2 (``hlrp.laq.label``)."""

    image_size: int = 224  # frame t is stored at the foundation model's input resolution
    offset: int | None = None  # frame offset k of the labelled pairs (None: data.offsets[0])
    batch_size: int = 256  # pairs per encoder batch
    jpeg_quality: int = 95
    allow_failed_gate: bool = False  # label even though the laq_report gate failed


# --------------------------------------------------------------------------------------
# root
# --------------------------------------------------------------------------------------
@dataclass
class RootConfig:
    """Everything one run sees. ``experiment=<name>`` picks a file in config/experiment/."""

    name: str = MISSING  # experiment name, written next to outputs
    seed: int = 0
    model: Any = None  # LAQModelConfig or FoundationModelConfig, chosen by the model group file
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    laq_report: LAQReportConfig = field(default_factory=LAQReportConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    # run-specific paths, passed by Snakemake (or by hand); each entry point checks what it needs
    input_dir: str | None = None
    output_dir: str | None = None
    input_list: str | None = None  # a text file with one input path per line (instead of input_dir)
    actions_dir: str | None = None  # optional per-video ground-truth actions ({stem}.npz)
    workers: int = 0  # parallel worker processes; 0: all CPUs this process may use
    laq: str | None = None  # a trained LAQ (laq.ckpt) for labelling and the report
    report: str | None = None  # the laq_report JSON whose gate labelling checks
    chunk: int | None = None  # preprocess only the videos of this chunk (see num_chunks)
    num_chunks: int = 1  # the workflow splits a corpus into this many preprocess jobs


def register_schemas() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    cs.store(group="schema", name="data", node=DataConfig)
    cs.store(group="schema", name="laq", node=LAQModelConfig)
    cs.store(group="schema", name="foundation", node=FoundationModelConfig)
    cs.store(group="schema", name="training", node=TrainingConfig)
    cs.store(group="schema", name="cluster", node=ClusterConfig)


register_schemas()

MODEL_SCHEMAS: dict[str, type] = {"laq": LAQModelConfig, "vla": FoundationModelConfig}


def experiments() -> list[str]:
    """Names of all experiment files in config/experiment/."""
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_config(
    overrides: list[str] | None = None, config_dir: Path | None = None
) -> DictConfig:
    """Compose ``config/config.yaml`` with Hydra overrides, outside of ``@hydra.main``."""
    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name="config", overrides=list(overrides or []))
    except (ConfigAttributeError, ConfigKeyError, ValidationError, HydraException) as e:
        cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
        raise ConfigError(_explain(cause)) from e


def _explain(e: Exception) -> str:
    """Turn an OmegaConf error into one clear line, with a spelling suggestion."""
    if not isinstance(e, OmegaConfBaseException):  # Hydra's own messages list the options
        return " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    msg = str(e).splitlines()[0].rstrip(".")
    key = getattr(e, "key", None)
    node = getattr(e, "full_key", None)
    obj = getattr(e, "object_type", None)
    hint = ""
    unknown = isinstance(e, ConfigAttributeError | ConfigKeyError)
    if unknown and key is not None and obj is not None and is_dataclass(obj):
        close = difflib.get_close_matches(str(key), [f.name for f in fields(obj)], n=1)
        if close:
            hint = f" Did you mean '{close[0]}'?"
    where = f" (at '{node}')" if node else ""
    return f"{msg}{where}.{hint}"


def to_object(cfg: DictConfig) -> RootConfig:
    """Validate a composed config and convert it to :class:`RootConfig` dataclasses."""
    try:
        root: RootConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except (ConfigAttributeError, ConfigKeyError, ValidationError) as e:
        raise ConfigError(_explain(e)) from e
    if isinstance(root.model, dict):  # a model file without its schema: validate it now
        kind = root.model.get("name")
        schema = MODEL_SCHEMAS.get(kind)
        if schema is None:
            raise ConfigError(f"model.name={kind!r} is not one of {sorted(MODEL_SCHEMAS)}")
        try:
            merged = OmegaConf.merge(OmegaConf.structured(schema), root.model)
        except (ConfigAttributeError, ConfigKeyError, ValidationError) as e:
            raise ConfigError(_explain(e)) from e
        root.model = OmegaConf.to_object(merged)
    return root


def load(overrides: list[str] | None = None) -> RootConfig:
    """Compose and validate in one step (what tests and helpers use)."""
    return to_object(compose_config(overrides))


def to_yaml(obj: Any) -> str:
    """A dataclass (or DictConfig) as YAML, for writing the resolved config next to outputs."""
    node = obj if isinstance(obj, DictConfig) else OmegaConf.structured(obj)
    return OmegaConf.to_yaml(node, resolve=True)
