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

import dataclasses
import difflib
import os
from collections.abc import Sequence
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


# Field metadata read by :func:`result_config`, the one definition of "what changes a stage's
# result" behind both the Snakemake rule digests and the resume hashes of training runs.
PATH = {"path": True, "result": False}  # a file or folder: taken literally, never hashed
NOT_RESULT = {"result": False}  # speed, logging, cadence: the same run, faster or chattier
NOT_RESUME = {"resume": False}  # a run that only differs here continues (e.g. max_steps)


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
    min_clip_frames: int = 2  # shorter clips are dropped (a pair (t, t+k) needs k+1 frames)


@dataclass
class DataConfig:
    """How stage 1 reads frame pairs from the preprocess shards (``laq.data``)."""

    name: str = "custom"
    shards: str | None = field(default=None, metadata=PATH)  # shard index.json, folder or pattern
    offsets: list[int] = field(
        default_factory=lambda: [1]
    )  # frame offsets k of pairs (t, t+k), at data fps
    pair_level: bool = (
        False  # True: every valid (t, t+k) pair is one sample; False: one clip per sample
    )
    max_samples: int | None = None  # keep only the first N samples (clips or pairs)
    val_split: float = 0.05  # fraction of videos held out for validation
    batch_size: int = 8  # per process
    num_workers: int = field(default=2, metadata=NOT_RESULT)
    shuffle_buffer: int = 256  # samples kept in the streaming shuffle buffer
    pairs_per_clip: int = 4  # scene-level mode: pairs drawn from each clip per visit


@dataclass
class SharedDataConfig:
    """Settings every stage shares (``data``): how videos become shards."""

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
    # the decoder predicts the change frame t+k - frame t (recon = frame t + output), not the
    # whole frame: its capacity goes to what moved, and the codes carry it (LAPA: False)
    decode_residual: bool = False
    compile: bool = field(default=False, metadata=NOT_RESULT)  # torch.compile the model


@dataclass
class FoundationModelConfig:
    """Vision-language model that predicts latent action codes (stage 2)."""

    name: str = "vla"
    backbone: str | None = None  # Hugging Face model id or local folder (stage 2 needs one)
    dtype: str = "bfloat16"  # weights that do not train (under fp32 compute: float32)
    max_text_tokens: int = 64  # instructions are cut to this many tokens (0: never)
    image_size: int = 224  # of the tiny-<family> backbones; a hub backbone's processor decides
    gradient_checkpointing: bool = False
    freeze_vision: bool = False  # keep the vision tower's weights (the connector still trains)
    lora_rank: int = 0  # > 0: train LoRA adapters (peft) on the language model, not its weights
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    attn_implementation: str | None = None  # sdpa | flash_attention_2 | eager (None: default)


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
    """When to validate and what to draw: cadence only, so none of it is part of a result."""

    every_n_steps: int = field(default=1000, metadata=NOT_RESULT)
    visualize_every_n_steps: int = field(default=1000, metadata=NOT_RESULT)
    visualize_train: bool = field(default=False, metadata=NOT_RESULT)
    num_visualize: int = field(default=8, metadata=NOT_RESULT)


@dataclass
class TrainingConfig:
    epochs: int = field(default=1, metadata=NOT_RESUME)
    max_steps: int = field(default=-1, metadata=NOT_RESUME)  # -1: train for `epochs`
    grad_clip: float = 0.5
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, fp32 on CPU
    accumulate_grad_batches: int = 1
    checkpoint_every_n_steps: int = field(default=1000, metadata=NOT_RESULT)
    log_every_n_steps: int = field(default=50, metadata=NOT_RESULT)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


@dataclass
class ClusterConfig:
    """Where a stage runs. Slurm resources live in the Snakemake profiles; the workflow sets
    ``devices`` and ``num_nodes`` from the same values it gives Slurm."""

    name: str = "local_cpu"
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: int = 1  # GPUs (or CPU processes) per node
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp
    wandb_mode: str = field(default="offline", metadata=NOT_RESULT)  # offline | online | disabled


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
    # Correlation time of that noise in simulator steps: an AR(1) process with coefficient
    # exp(-1 / action_noise_steps) per step and stationary std action_noise (0: independent
    # noise at every step, which largely averages out over the steps of a frame pair).
    action_noise_steps: float = 0.0
    action_noise_gripper: bool = True  # False: noise on the hand's motion only, not the gripper
    crf: int = 18  # libx264 constant rate factor of the rendered videos (lower: better quality)


@dataclass
class LAQReportConfig:
    """The LAQ quality report (``hlrp.laq.report``) and the gate it puts before stage 2."""

    max_clips: int = 256  # held-out clips evaluated (the data.val_split videos)
    pairs_per_clip: int = 4  # (t, t+k) pairs drawn per clip
    batch_size: int = field(default=64, metadata=NOT_RESULT)
    num_examples: int = 8  # rows in the example grids
    # action probes: fitted on pairs of training videos, scored on the held-out pairs
    train_max_clips: int = 512  # training clips (videos not in data.val_split) read for probes
    train_pairs_per_clip: int = 16  # (t, t+k) pairs drawn per training clip
    probe_folds: int = 5  # GroupKFold over training videos that picks the ridge penalty
    probe_bootstrap: int = 1000  # resamples of held-out videos for the R² 95 % interval
    seed: int = 0
    # gate thresholds: label_latents refuses to run when one fails (see label.allow_failed_gate)
    min_perplexity: float = 1.5  # codes collapsed: perplexity over all held-out pairs below this
    min_used_fraction: float = 0.25  # fraction of the codebook used on held-out pairs
    min_sequence_perplexity: float = 1.5  # whole code sequences (LAPA's "[2,0,0,0] always")
    min_psnr_drop_db: float = 0.05  # decoding another pair's codes must cost at least this PSNR
    min_probe_r2: float | None = None  # held-out R² of the codes probe (None: not gated)
    # the codes must beat frame t alone: the low end of the paired 95 % interval of (codes R²
    # minus frame-t R², the latter floored at 0) on held-out videos must reach this (None: not
    # gated)
    min_probe_margin: float | None = None


@dataclass
class LabelConfig:
    """Latent-action labelling of the shards for stage 2 (``hlrp.laq.label``)."""

    image_size: int = 224  # frame t is stored at the foundation model's input resolution
    offset: int | None = None  # frame offset k of the labelled pairs (None: data.offsets[0])
    batch_size: int = field(default=256, metadata=NOT_RESULT)  # pairs per encoder batch
    jpeg_quality: int = 95
    allow_failed_gate: bool = field(default=False, metadata=NOT_RESULT)  # label despite the gate


# --------------------------------------------------------------------------------------
# stages: one namespace each (the seed's names), each with model / data / training / cluster
# --------------------------------------------------------------------------------------
@dataclass
class LAQStageConfig:
    """Stage 1 (``laq``): train the LAQ, report on it (the gate), label the shards."""

    model: LAQModelConfig = field(default_factory=LAQModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    report: LAQReportConfig = field(default_factory=LAQReportConfig)
    label: LabelConfig = field(default_factory=LabelConfig)


@dataclass
class FoundationDataConfig:
    """How stage 2 reads the labelled shards (``foundation.data``). The latent vocabulary
    (codebook size, codes per pair) is read from the LAQ checkpoint, never set here."""

    name: str = "labels"
    labels: str | None = field(default=None, metadata=PATH)  # labels index.json (label_latents)
    val_split: float = 0.05  # fraction of videos held out (the same split function as stage 1)
    batch_size: int = 8  # per process
    num_workers: int = field(default=2, metadata=NOT_RESULT)  # threads making batches
    mix_shards: int = 8  # shards read and shuffled together per stream segment (per process)
    max_val_pairs: int = field(default=512, metadata=NOT_RESULT)  # held-out pairs in training


@dataclass
class FoundationReportConfig:
    """The foundation report (``hlrp.foundation.report``) on held-out videos."""

    max_pairs: int = 4096  # held-out pairs evaluated (0: all)
    baseline_pairs: int = 1_000_000  # training pairs the baselines are counted on (0: all)
    batch_size: int = field(default=32, metadata=NOT_RESULT)
    calibration_bins: int = 10
    bootstrap: int = 1000  # resamples of held-out videos for the 95 % intervals
    seed: int = 0


@dataclass
class FoundationStageConfig:
    """Stage 2 (``foundation``): a vision-language model that predicts the latent codes."""

    model: FoundationModelConfig = field(default_factory=FoundationModelConfig)
    data: FoundationDataConfig = field(default_factory=FoundationDataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    report: FoundationReportConfig = field(default_factory=FoundationReportConfig)


@dataclass
class LowLevelModelConfig:
    """The policy of stage 3: a VLM (the foundation model, or its backbone for ``scratch``)
    with an action head. The backbone's own settings mirror ``foundation.model``'s."""

    name: str = "low_level"
    head: str = "l1_chunk"  # l1_chunk (UniVLA-style L1 chunk) | bins (LAPA/OpenVLA tokens) | flow
    chunk: int = 8  # actions predicted per query (H)
    bins: int = 256  # quantile bins per action dimension (head=bins)
    normalization: str = "mean_std"  # mean_std | quantile (q01/q99 to [-1, 1])
    use_state: bool = True  # feed the proprioceptive state to the head (when the data has one)
    hidden: int = 256  # width of the head's MLP (l1_chunk, flow)
    head_layers: int = 2  # hidden layers of the head's MLP
    flow_steps: int = 10  # Euler steps of the flow head at inference
    dtype: str = "float32"  # weights that do not train (LoRA runs: bfloat16)
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    lora_rank: int = 0  # > 0: LoRA adapters on the language model (one 24-32 GB GPU)
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    attn_implementation: str | None = None


@dataclass
class LowLevelDataConfig:
    """The action-labelled episodes stage 3 learns from (``low_level.data``)."""

    name: str = "episodes"
    source: str | None = field(default=None, metadata=PATH)  # demo | a LeRobotDataset v3 folder
    episodes: str | None = field(default=None, metadata=PATH)  # episodes index.json (training)
    episodes_per_task: int = 5  # labelled episodes per task (0: all)
    image_size: int = 224  # frames are stored at this size (the policy's processor resizes)
    camera: str | None = None  # LeRobot video key (None: the first camera)
    batch_size: int = 8  # per process
    num_workers: int = field(default=2, metadata=NOT_RESULT)


@dataclass
class EvaluationConfig:
    """Closed-loop evaluation in Meta-World (``low_level.evaluation``): the demo's camera,
    resolution and frame rate (``demo.*``) on seeds the demo corpus never used."""

    tasks: list[str] = field(default_factory=list)  # Meta-World v3 tasks ([]: the policy's)
    episodes_per_task: int = 10
    seed: int = 1000  # the demo corpus uses demo.seed (0): keep them apart
    max_steps: int = 300  # simulator steps before an episode counts as failed
    execute: int = 0  # actions executed per policy query (0: the whole chunk)
    temporal_ensemble: float | None = None  # ACT's m: query every frame, average the chunks
    videos_per_task: int = 1  # rollout mp4s kept per task
    device: str = field(default="auto", metadata=NOT_RESULT)  # auto | cpu | cuda


@dataclass
class LowLevelStageConfig:
    """Stage 3 (``low_level``): finetune to continuous actions, evaluate in closed loop."""

    model: LowLevelModelConfig = field(default_factory=LowLevelModelConfig)
    data: LowLevelDataConfig = field(default_factory=LowLevelDataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# --------------------------------------------------------------------------------------
# root
# --------------------------------------------------------------------------------------
@dataclass
class RootConfig:
    """Everything one run sees. ``experiment=<name>`` picks a file in config/experiment/."""

    name: str = MISSING  # experiment name, written next to outputs
    seed: int = 0
    data: SharedDataConfig = field(default_factory=SharedDataConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    laq: LAQStageConfig = field(default_factory=LAQStageConfig)
    foundation: FoundationStageConfig = field(default_factory=FoundationStageConfig)
    low_level: LowLevelStageConfig = field(default_factory=LowLevelStageConfig)
    # run-specific paths, passed by Snakemake (or by hand); each entry point checks what it needs
    input_dir: str | None = field(default=None, metadata=PATH)
    output_dir: str | None = field(default=None, metadata=PATH)
    input_list: str | None = field(default=None, metadata=PATH)  # one input path per line
    actions_dir: str | None = field(default=None, metadata=PATH)  # per-video {stem}.npz actions
    workers: int = field(default=0, metadata=NOT_RESULT)  # worker processes; 0: all CPUs allowed
    laq_ckpt: str | None = field(default=None, metadata=PATH)  # a trained LAQ (laq.ckpt)
    report: str | None = field(default=None, metadata=PATH)  # the laq_report JSON labelling checks
    model_dir: str | None = field(default=None, metadata=PATH)  # a trained foundation model
    init: str | None = field(default=None, metadata=PATH)  # stage 3's start: scratch | a folder
    policy_dir: str | None = field(default=None, metadata=PATH)  # a trained stage-3 policy
    chunk: int | None = None  # preprocess only the videos of this chunk (see num_chunks)
    num_chunks: int = 1  # the workflow splits a corpus into this many preprocess jobs


#: Stage namespaces, and the short forms their commands accept: in ``python -m hlrp.laq.train``
#: ``data.batch_size=16`` means ``laq.data.batch_size=16`` (the seed notes' commands).
STAGES = ("laq", "foundation", "low_level")
STAGE_ALIASES = {
    "laq": {
        "model": "laq.model",
        "data": "laq.data",
        "training": "laq.training",
        "cluster": "laq.cluster",
        "laq_report": "laq.report",
        "label": "laq.label",
    },
    "foundation": {
        "model": "foundation.model",
        "data": "foundation.data",
        "training": "foundation.training",
        "cluster": "foundation.cluster",
        "report": "foundation.report",
    },
    "low_level": {
        "model": "low_level.model",
        "data": "low_level.data",
        "training": "low_level.training",
        "cluster": "low_level.cluster",
        "evaluation": "low_level.evaluation",
    },
}
SHARED_DATA_KEYS = ("preprocess",)  # ``data.preprocess.*`` stays shared in every stage
CONFIG_GROUPS = ("model", "data", "training", "cluster")  # folders of config/


def register_schemas() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RootConfig)
    cs.store(group="schema", name="data", node=DataConfig)
    cs.store(group="schema", name="preprocess", node=PreprocessConfig)
    cs.store(group="schema", name="laq", node=LAQModelConfig)
    cs.store(group="schema", name="foundation", node=FoundationModelConfig)
    cs.store(group="schema", name="foundation_data", node=FoundationDataConfig)
    cs.store(group="schema", name="low_level", node=LowLevelModelConfig)
    cs.store(group="schema", name="demo", node=DemoConfig)
    cs.store(group="schema", name="training", node=TrainingConfig)
    cs.store(group="schema", name="cluster", node=ClusterConfig)


register_schemas()


def experiments() -> list[str]:
    """Names of all experiment files in config/experiment/."""
    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def configured_stages(cfg: RootConfig) -> list[str]:
    """The stage namespaces an experiment sets (those that differ from their defaults)."""
    defaults = RootConfig()
    return [s for s in STAGES if getattr(cfg, s) != getattr(defaults, s)]


def expand_aliases(overrides: Sequence[str], stage: str | None) -> list[str]:
    """Rewrite a stage command's short keys to their namespace (``data.x`` -> ``laq.data.x``)."""
    if stage is None:
        return list(overrides)
    if stage not in STAGE_ALIASES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    aliases = STAGE_ALIASES[stage]
    out = []
    for o in overrides:
        prefix = o[: len(o) - len(o.lstrip("+~"))]
        key, sep, value = o[len(prefix) :].partition("=")
        head, _, rest = key.partition(".")
        shared = head == "data" and rest.split(".")[0] in SHARED_DATA_KEYS
        if head in aliases and not rest and head in CONFIG_GROUPS:
            key = f"{head}@{aliases[head]}"  # a group choice: model=laq_small
        elif head in aliases and not shared:
            key = aliases[head] + (f".{rest}" if rest else "")
        out.append(f"{prefix}{key}{sep}{value}")
    return out


def path_keys(schema: type = RootConfig, prefix: str = "") -> set[str]:
    """Dotted keys of every path field (``metadata=PATH``) below ``schema``."""
    keys: set[str] = set()
    for f in fields(schema):
        if f.metadata.get("path"):
            keys.add(prefix + f.name)
        sub = _dataclass_type(f)
        if sub is not None:
            keys |= path_keys(sub, f"{prefix}{f.name}.")
    return keys


def _dataclass_type(f) -> type | None:
    """The dataclass a field holds (its default factory's), or None for a plain value."""
    if f.default_factory is dataclasses.MISSING:
        return None
    obj = f.default_factory()
    return type(obj) if is_dataclass(obj) else None


def split_path_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Separate ``key=value`` overrides of path fields: their values are taken literally
    (spaces, parentheses, quotes, ``,`` ``=`` ``$``, non-ASCII), not parsed by Hydra's
    override grammar, which would reject ``/data/Robot Videos (2024)``."""
    paths = path_keys()
    rest, literal = [], {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key in paths:
            literal[key] = value
        else:
            rest.append(o)
    return rest, literal


def compose_config(
    overrides: list[str] | None = None,
    config_dir: Path | None = None,
    stage: str | None = None,
) -> DictConfig:
    """Compose ``config/config.yaml`` with Hydra overrides, outside of ``@hydra.main``.

    ``stage`` lets a stage's command use the short keys of the seed notes
    (``data.batch_size`` for ``laq.data.batch_size``). Path values are set literally.
    """
    config_dir = Path(config_dir or CONFIG_DIR).resolve()
    hydra_overrides, literal = split_path_overrides(expand_aliases(overrides or [], stage))
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = compose(config_name="config", overrides=hydra_overrides)
    except (ConfigAttributeError, ConfigKeyError, ValidationError, HydraException) as e:
        cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
        raise ConfigError(_explain(cause)) from e
    for key, value in literal.items():
        # "${" would start an OmegaConf interpolation: escape it so the path stays literal
        OmegaConf.update(cfg, key, value.replace("${", "\\${"), merge=False)
    return cfg


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
    return root


def load(overrides: list[str] | None = None, stage: str | None = None) -> RootConfig:
    """Compose and validate in one step (what tests and helpers use)."""
    return to_object(compose_config(overrides, stage=stage))


def to_yaml(obj: Any) -> str:
    """A dataclass (or DictConfig) as YAML, for writing the resolved config next to outputs."""
    node = obj if isinstance(obj, DictConfig) else OmegaConf.structured(obj)
    return OmegaConf.to_yaml(node, resolve=True)


# --------------------------------------------------------------------------------------
# what defines a result: rule digests and resume hashes
# --------------------------------------------------------------------------------------
def result_config(obj: Any, resume: bool = False) -> Any:
    """The part of a config that changes a result, as plain data.

    Drops fields marked ``PATH`` or ``NOT_RESULT`` (where inputs live, speed, logging
    cadence); with ``resume=True`` also those marked ``NOT_RESUME`` (``max_steps``: a longer
    run of the same config continues the shorter one). Snakemake's rule digests use the full
    result, training's resume hash the ``resume=True`` form: one definition for both.
    """
    if is_dataclass(obj):
        out = {}
        for f in fields(obj):
            if f.metadata.get("result") is False or (resume and f.metadata.get("resume") is False):
                continue
            out[f.name] = result_config(getattr(obj, f.name), resume)
        return out
    if isinstance(obj, list | tuple):
        return [result_config(v, resume) for v in obj]
    if isinstance(obj, dict):
        return {k: result_config(v, resume) for k, v in sorted(obj.items())}
    return obj


def select(cfg: RootConfig, dotted: str) -> Any:
    """``select(cfg, "laq.data.offsets")``: a value by its dotted key."""
    obj: Any = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def result_digest(cfg: RootConfig, *keys: str, resume: bool = False) -> str:
    """Canonical JSON of the result-defining parts of ``keys`` (dotted): a rule parameter in
    the workflow, and (hashed) the resume hash of a training run."""
    import json

    return json.dumps(
        {k: result_config(select(cfg, k), resume) for k in keys}, sort_keys=True, default=str
    )


def result_hash(cfg: RootConfig, *keys: str, resume: bool = False) -> str:
    """16 hex digits of :func:`result_digest`."""
    import hashlib

    return hashlib.sha256(result_digest(cfg, *keys, resume=resume).encode()).hexdigest()[:16]
