# Helpers shared by all rules: config validation, the Hydra config each stage sees, and
# the list of input videos split into a bounded number of preprocess jobs.
import shlex
from pathlib import Path

from snakemake.utils import validate

from hlrp.common.config import load, result_digest
from hlrp.foundation import TRAIN_RESULT_KEYS as FOUNDATION_RESULT_KEYS
from hlrp.laq import TRAIN_RESULT_KEYS
from hlrp.low_level import TRAIN_RESULT_KEYS as LOW_LEVEL_RESULT_KEYS
from hlrp.data.preprocess import chunk_of
from hlrp.data.video import list_videos


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results_dir"]
SHARDS = config["shards_dir"]
DEMO_DIR = f"{RESULTS}/demo"
USE_DEMO = config["videos"] == "demo"
VIDEO_DIR = f"{DEMO_DIR}/videos" if USE_DEMO else config["videos"]
ACTIONS_DIR = f"{DEMO_DIR}/ground_truth" if USE_DEMO else config.get("actions_dir")
SHARD_INDEX = f"{SHARDS}/index.json"
LAQ_NODES = config["train_laq"]["nodes"]
LAQ_GPUS = config["train_laq"]["gpus_per_node"]
LAQ_TASKS = LAQ_NODES * LAQ_GPUS
VLA_NODES = config["train_foundation"]["nodes"]
VLA_GPUS = config["train_foundation"]["gpus_per_node"]
VLA_TASKS = VLA_NODES * VLA_GPUS
FT_NODES = config["finetune"]["nodes"]
FT_GPUS = config["finetune"]["gpus_per_node"]
FT_TASKS = FT_NODES * FT_GPUS


def launch_prefix(tasks):
    """`srun -n <tasks>` for a multi-process rule under Slurm (the job-step plugin drops
    SLURM_NTASKS, so the count goes on the srun line); nothing locally, where Lightning
    starts its own processes."""
    return f"{config['launcher']} -n {tasks}" if config["launcher"] and tasks > 1 else ""


# Which stage namespace each rule's command belongs to (its short keys: data.x = laq.data.x).
RULE_STAGE = {
    "demo_videos": "laq",
    "preprocess": "laq",
    "train_laq": "laq",
    "laq_report": "laq",
    "label_latents": "laq",
    "train_foundation": "foundation",
    "foundation_report": "foundation",
    "episodes": "low_level",
    "pretrain_oracle": "low_level",
    "finetune": "low_level",
    "evaluate": "low_level",
    "final_report": "low_level",
}
# Set by the workflow from its own resource settings: a user override would desync Slurm.
RESERVED = ("cluster.devices", "cluster.num_nodes")


def overrides(step):
    """Hydra overrides for a rule: its stage's experiment, then the user's extra overrides."""
    stage = RULE_STAGE[step]
    extra = list(config.get("overrides", {}).get(step, []))
    for o in extra:
        key = o.lstrip("+~").split("=", 1)[0]
        if key in RESERVED or key in {f"{stage}.{r}" for r in RESERVED}:
            raise WorkflowError(
                f"overrides.{step}: {o!r} is set by the workflow from the rule's resources "
                f"(config/workflow.yaml: {step}.nodes / gpus_per_node), so Slurm and the "
                "training processes agree; set it there instead"
            )
    return [f"experiment={config['experiment'][stage]}", *extra]


def cli_overrides(step):
    return " ".join(shlex.quote(o) for o in overrides(step))


_CFG = {}


def stage_cfg(step):
    """The validated Hydra config a rule's command will see (composed once per rule)."""
    if step not in _CFG:
        _CFG[step] = load(overrides(step), stage=RULE_STAGE[step])
    return _CFG[step]


def config_digest(step, *keys):
    """What defines a rule's result (hlrp.common.config.result_digest of the dotted ``keys``:
    no paths, workers or logging cadence). A rule parameter, so changing one of them re-runs
    the rule and what depends on it, and nothing else."""
    return result_digest(stage_cfg(step), *keys)


def _video_list():
    """Every video's name: its path relative to the folder, symlinks named by their link path
    (hlrp.data.video.relative_name, the same rule the preprocess CLI applies)."""
    from hlrp.data.video import relative_name

    if USE_DEMO:
        from hlrp.sim.demo_videos import episode_ids

        demo = stage_cfg("demo_videos").demo
        return [f"{i}.mp4" for i in episode_ids(demo.tasks, demo.episodes_per_task)]
    root = Path(VIDEO_DIR)
    if not root.is_dir():
        raise WorkflowError(f"videos={VIDEO_DIR!r} is not a folder (config/workflow.yaml)")
    exts = stage_cfg("preprocess").data.preprocess.extensions
    return [relative_name(root, p) for p in list_videos(root, exts)]


VIDEOS = _video_list()
NUM_CHUNKS = config["preprocess_jobs"]
CHUNK_VIDEOS = {}
for _rel in VIDEOS:
    CHUNK_VIDEOS.setdefault(f"{chunk_of(_rel, NUM_CHUNKS):03d}", []).append(_rel)
CHUNKS = sorted(CHUNK_VIDEOS)
if not CHUNKS:
    raise WorkflowError(f"no videos found in {VIDEO_DIR}")


def chunk_videos(wildcards):
    """The names (relative to VIDEO_DIR) of one preprocess job's videos: the job's list."""
    return CHUNK_VIDEOS[wildcards.chunk]


def chunk_inputs(wildcards):
    """The videos of one preprocess job (plus the sidecar table when there is one). A
    dangling symlink is no input file; it stays in the job's list and is recorded as skipped."""
    files = [f"{VIDEO_DIR}/{rel}" for rel in chunk_videos(wildcards)]
    if not USE_DEMO:  # the demo's videos are made by a rule
        files = [f for f in files if Path(f).exists()]
    sidecar = f"{VIDEO_DIR}/metadata.csv"
    if USE_DEMO or Path(sidecar).is_file():
        files.append(sidecar)
    return files


# --------------------------------------------------------------------------------------
# stage 3 (rules/low_level.smk)
# --------------------------------------------------------------------------------------
FT = config["finetune"]
EV = config["evaluate"]
FT_SOURCE = FT["source"]


def foundation_backbone_overrides():
    """The backbone `scratch` and the oracle start from: the foundation experiment's, so the
    variants differ only in their pretraining."""
    m = stage_cfg("train_foundation").foundation.model
    return f"foundation.model.backbone={shlex.quote(m.backbone)} foundation.model.image_size={m.image_size}"


def demo_overrides():
    """How the demo corpus was rendered and split (stage 1's settings, with the user's
    demo_videos overrides): the labelled episodes keep stage 1's held-out videos out, and
    evaluation renders with the corpus' camera, resolution and frame rate."""
    d = stage_cfg("demo_videos").demo
    split = stage_cfg("train_laq").laq.data.val_split
    return (
        f"demo.camera={d.camera} demo.resolution={d.resolution} "
        f"demo.steps_per_frame={d.steps_per_frame} laq.data.val_split={split}"
    )


def episodes_inputs(wildcards):
    if FT_SOURCE == "demo":
        return [f"{DEMO_DIR}/videos/metadata.csv", f"{DEMO_DIR}/ground_truth/episodes.csv"]
    return [f"{FT_SOURCE}/meta/info.json"]


def finetune_shell(init):
    return (
        "{params.launch} python -m hlrp.low_level.train {params.overrides} "
        f"{foundation_backbone_overrides()} init={init} data.episodes={{input.episodes:q}} "
        "output_dir={params.out:q} data.num_workers={threads} cluster.num_nodes={params.nodes} "
        "cluster.devices={params.gpus} {params.extra} > {log:q} 2>&1"
    )


FT_RESOURCES = dict(
    nodes=FT_NODES,
    gres=f"gpu:{FT_GPUS}",
    tasks_per_node=FT_GPUS if FT_GPUS > 1 else 0,
    tasks=FT_TASKS if FT_GPUS == 1 else 0,
    tasks_per_gpu=1 if FT_GPUS == 1 else 0,
    mpi=config["launcher"] if FT_TASKS > 1 else "",
    mem_mb=64000,
    runtime=24 * 60,
)


def finetune_init(wildcards):
    """What each variant starts from (a file the rule depends on; none for scratch)."""
    if wildcards.variant == "latent":
        return {"init": f"{RESULTS}/foundation/model/hlrp_foundation.json"}
    if wildcards.variant == "oracle":
        return {"init": f"{RESULTS}/low_level/oracle_pretrain/policy/hlrp_policy.json"}
    return {}


# (--config finetune=... on the command line gives the numbers as strings)
FT_RUNS = [(v, int(n)) for v in FT["variants"] for n in FT["episodes_per_task"]]
EVALUATIONS = (
    [f"{RESULTS}/evaluation/{v}/n{n}/results.json" for v, n in FT_RUNS] if EV["enabled"] else []
)
POLICIES = [f"{RESULTS}/low_level/{v}/n{n}/metrics.json" for v, n in FT_RUNS]


