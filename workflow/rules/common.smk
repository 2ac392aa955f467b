# Helpers shared by all rules: config validation, the Hydra config each stage sees, and
# the list of input videos split into a bounded number of preprocess jobs.
import shlex
from pathlib import Path

from snakemake.utils import validate

from hlrp.common.config import load, to_yaml
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


def launch_prefix(tasks):
    """`srun -n <tasks>` for a multi-process rule under Slurm (the job-step plugin drops
    SLURM_NTASKS, so the count goes on the srun line); nothing locally, where Lightning
    starts its own processes."""
    return f"{config['launcher']} -n {tasks}" if config["launcher"] and tasks > 1 else ""


def overrides(stage):
    """Hydra overrides for a stage: the experiment, then the user's extra overrides."""
    return [f"experiment={config['experiment']}", *config.get("overrides", {}).get(stage, [])]


def cli_overrides(stage):
    return " ".join(shlex.quote(o) for o in overrides(stage))


_CFG = {}


def stage_cfg(stage):
    """The validated Hydra config a stage will see (composed once per stage)."""
    if stage not in _CFG:
        _CFG[stage] = load(overrides(stage))
    return _CFG[stage]


def config_digest(stage, *sections):
    """The resolved config sections a stage depends on, as YAML. Used as a rule param, so
    changing one of them re-runs that stage (and what depends on it), and nothing else."""
    cfg = stage_cfg(stage)
    out = []
    for name in sections:
        obj = cfg
        for part in name.split("."):
            obj = getattr(obj, part)
        text = to_yaml(obj) if hasattr(obj, "__dataclass_fields__") else repr(obj)
        out.append(f"{name}: {text}")
    return "\n".join(out)


def _video_list():
    if USE_DEMO:
        from hlrp.sim.demo_videos import episode_ids

        demo = stage_cfg("demo_videos").demo
        return [f"{i}.mp4" for i in episode_ids(demo.tasks, demo.episodes_per_task)]
    root = Path(VIDEO_DIR)
    if not root.is_dir():
        raise WorkflowError(f"videos={VIDEO_DIR!r} is not a folder (config/workflow.yaml)")
    exts = stage_cfg("preprocess").data.preprocess.extensions
    return [p.relative_to(root).as_posix() for p in list_videos(root, exts)]


VIDEOS = _video_list()
NUM_CHUNKS = config["preprocess_jobs"]
CHUNK_VIDEOS = {}
for _rel in VIDEOS:
    CHUNK_VIDEOS.setdefault(f"{chunk_of(_rel, NUM_CHUNKS):03d}", []).append(_rel)
CHUNKS = sorted(CHUNK_VIDEOS)
if not CHUNKS:
    raise WorkflowError(f"no videos found in {VIDEO_DIR}")


def chunk_inputs(wildcards):
    """The videos of one preprocess job (plus the sidecar table when there is one)."""
    files = [f"{VIDEO_DIR}/{rel}" for rel in CHUNK_VIDEOS[wildcards.chunk]]
    sidecar = f"{VIDEO_DIR}/metadata.csv"
    if USE_DEMO or Path(sidecar).is_file():
        files.append(sidecar)
    return files
