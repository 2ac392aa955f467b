"""Setup check: what this machine can do for the pipeline, and what is missing.

``python -m hlrp.doctor [--experiment demo_tiny] [--stages preprocess,train_laq]`` prints one
table row per check (check, status, detail, needed by) and a one-line summary, and exits 0 when
every check needed by a selected stage passes (warnings allowed), 1 otherwise.

Statuses:

* ``ok``: works.
* ``warn``: missing or degraded, but no stage needs it (or another option covers it).
* ``FAIL``: missing and some stage needs it; it blocks the run only when such a stage is selected.
* ``skip``: not checked (``--skip-render``) or only informational and absent (``sbatch``).

This is a plain argparse tool, not a Hydra entry point: it creates nothing, writes only the
``--json`` file when asked, and imports the heavy packages (torch, decoders) inside the checks.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import netrc
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"

#: Every pipeline stage, in workflow order (the default selection).
STAGES: tuple[str, ...] = (
    "demo_videos",
    "preprocess",
    "train_laq",
    "label_latents",
    "laq_report",
    "train_foundation",
    "foundation_report",
    "finetune",
    "evaluate",
)
#: Stages that run models and therefore need torch (and CUDA when the experiment asks for GPUs).
TORCH_STAGES: tuple[str, ...] = (
    "train_laq",
    "label_latents",
    "laq_report",
    "train_foundation",
    "foundation_report",
    "finetune",
    "evaluate",
)
#: Stages that render Meta-World headlessly.
RENDER_STAGES: tuple[str, ...] = ("demo_videos", "evaluate")
#: Stages that write under the data folder.
DATA_STAGES: tuple[str, ...] = ("demo_videos", "preprocess")

#: Config names of video decoders (``data.preprocess.decoders``) -> (module, distribution).
DECODERS: dict[str, tuple[str, str]] = {
    "decord": ("decord", "decord"),
    "pyav": ("av", "av"),
    "torchcodec": ("torchcodec", "torchcodec"),
}

MIN_PYTHON = (3, 11)
DISK_WARN_GB = 10.0
DISK_FAIL_GB = 1.0
RENDER_TIMEOUT_S = 60.0
GIB = 1024**3


@dataclass
class Check:
    """One row of the report. ``needed_by`` lists the stages that cannot run without it."""

    name: str
    status: str  # ok | warn | FAIL | skip
    detail: str
    needed_by: list[str] = field(default_factory=list)

    def blocks(self, stages: Iterable[str]) -> list[str]:
        """The selected stages this check blocks (none unless it failed)."""
        if self.status != FAIL:
            return []
        selected = set(stages)
        return [s for s in self.needed_by if s in selected]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {"check": d["name"], **{k: d[k] for k in ("status", "detail", "needed_by")}}


def one_line(e: BaseException | str, limit: int = 200) -> str:
    """A short single line: an exception's type and first line (plus the line naming a missing
    shared library, as in torchcodec's long OSError), or a text's last non-empty line."""
    if isinstance(e, BaseException):
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        msg = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        lib = next((ln for ln in lines[1:] if "shared object" in ln or ".so" in ln), None)
        if lib:
            msg += f" ... {lib}"
    else:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        msg = lines[-1] if lines else ""
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------
def experiment_cluster(cfg: Any, stages: list[str]) -> Any:
    """Where the experiment's stage runs (its ``<stage>.cluster``; stage 1's by default)."""
    return getattr(cfg, stages[0] if stages else "laq").cluster


def load_experiment(experiment: str) -> tuple[Any, Check]:
    """The experiment's RootConfig (defaults when it cannot be composed) and a check row."""
    from hlrp.common.config import RootConfig, configured_stages, load

    try:
        cfg = load([f"experiment={experiment}"])
        cluster = experiment_cluster(cfg, configured_stages(cfg))
    except Exception as e:  # noqa: BLE001 - any failure is reported, defaults are used instead
        return RootConfig(), Check(
            "config", FAIL, f"experiment={experiment}: {one_line(e)}", list(STAGES)
        )
    detail = (
        f"experiment={experiment}: accelerator={cluster.accelerator}, "
        f"decoders={','.join(cfg.data.preprocess.decoders)}, wandb_mode={cluster.wandb_mode}"
    )
    return cfg, Check("config", OK, detail, list(STAGES))


# --------------------------------------------------------------------------------------
# python and torch
# --------------------------------------------------------------------------------------
def check_python() -> Check:
    v = sys.version_info
    version = f"{v.major}.{v.minor}.{v.micro}"
    need = ".".join(map(str, MIN_PYTHON))
    if (v.major, v.minor) >= MIN_PYTHON:
        return Check("python", OK, f"{version} ({sys.executable})", list(STAGES))
    return Check("python", FAIL, f"{version}: Python >= {need} is needed", list(STAGES))


def check_platform() -> Check:
    detail = f"{platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs"
    return Check("platform", OK, detail)


def check_torch() -> Check:
    try:
        torch = importlib.import_module("torch")
    except Exception as e:  # noqa: BLE001
        return Check("torch", FAIL, f"cannot import torch: {one_line(e)}", list(TORCH_STAGES))
    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    return Check("torch", OK, f"{torch.__version__} ({build})", list(TORCH_STAGES))


#: Stages that load Hugging Face vision-language models.
VLM_STAGES: tuple[str, ...] = ("train_foundation", "foundation_report", "finetune", "evaluate")


def check_transformers() -> Check:
    """transformers (5.x API) and peft, which stage 2 and 3 load their backbones with."""
    try:
        import peft
        import transformers
    except ImportError as e:
        return Check("transformers", FAIL, f"cannot import: {one_line(e)}", list(VLM_STAGES))
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        detail = f"transformers {transformers.__version__}: version 5 is needed"
        return Check("transformers", FAIL, detail, list(VLM_STAGES))
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    detail = f"transformers {transformers.__version__}, peft {peft.__version__}" + (
        ", HF_HUB_OFFLINE=1 (backbones from the local cache or folders)" if offline else ""
    )
    return Check("transformers", OK, detail, list(VLM_STAGES))


def _gpu_stages(accelerator: str) -> list[str]:
    return list(TORCH_STAGES) if accelerator == "gpu" else []


def check_cuda(accelerator: str = "cpu") -> list[Check]:
    """CUDA availability plus one row per visible device (name, capability, memory)."""
    needed = _gpu_stages(accelerator)
    try:
        torch = importlib.import_module("torch")
    except Exception as e:  # noqa: BLE001
        return [Check("cuda", FAIL if needed else WARN, f"no torch: {one_line(e)}", needed)]
    try:
        available = torch.cuda.is_available()
        count = torch.cuda.device_count() if available else 0
    except Exception as e:  # noqa: BLE001
        available, count = False, 0
        reason = one_line(e)
    else:
        reason = "torch.cuda.is_available() is False"
    if not available or count == 0:
        if accelerator == "gpu":
            detail = f"CUDA not available ({reason}); cluster.accelerator=gpu needs a CUDA GPU"
            return [Check("cuda", FAIL, detail, needed)]
        if accelerator == "auto":
            detail = f"CUDA not available: cluster.accelerator=auto will train on CPU ({reason})"
            return [Check("cuda", WARN, detail, needed)]
        detail = f"CUDA not available (not needed: cluster.accelerator={accelerator})"
        return [Check("cuda", WARN, detail, needed)]
    rows = [Check("cuda", OK, f"{count} device(s), CUDA {torch.version.cuda}", needed)]
    for i in range(count):
        rows.append(_cuda_device(torch, i, needed))
    return rows


def _cuda_device(torch: Any, i: int, needed: list[str]) -> Check:
    name = f"cuda:{i}"
    try:
        props = torch.cuda.get_device_properties(i)
        major, minor = props.major, props.minor
        total = props.total_memory
        try:
            free, total = torch.cuda.mem_get_info(i)
            mem = f"{free / GIB:.1f} of {total / GIB:.1f} GiB free"
        except Exception as e:  # noqa: BLE001
            mem = f"{total / GIB:.1f} GiB total (free unknown: {one_line(e)})"
        detail = f"{props.name}, compute capability {major}.{minor}, {mem}"
        return Check(name, OK, detail, needed)
    except Exception as e:  # noqa: BLE001
        return Check(name, FAIL if needed else WARN, one_line(e), needed)


def check_bf16() -> Check:
    try:
        torch = importlib.import_module("torch")
    except Exception as e:  # noqa: BLE001
        return Check("bf16", SKIP, f"no torch: {one_line(e)}")
    try:
        if torch.cuda.is_available():
            if torch.cuda.is_bf16_supported():
                return Check("bf16", OK, "CUDA bf16 supported (precision=auto uses bf16-mixed)")
            return Check("bf16", WARN, "this GPU has no bf16: precision=auto falls back to 32-bit")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = torch.ones(4, 4) @ torch.ones(4, 4)
        ok = y.dtype == torch.bfloat16
    except Exception as e:  # noqa: BLE001
        return Check("bf16", WARN, f"bf16 check failed: {one_line(e)}")
    if ok:
        return Check("bf16", OK, "no CUDA: CPU bf16 autocast only (precision=auto uses fp32)")
    return Check("bf16", WARN, "no CUDA, and CPU bf16 autocast does not produce bf16")


def check_nccl(accelerator: str = "cpu", world_size: int = 1) -> Check:
    """NCCL backend: needed by the model stages for multi-GPU (DDP/FSDP) runs."""
    needed = _gpu_stages(accelerator) if world_size > 1 else []
    why = f"{world_size} GPU processes (cluster.devices x num_nodes)"
    try:
        dist = importlib.import_module("torch.distributed")
        if not dist.is_available():
            return Check("nccl", FAIL if needed else WARN, "torch.distributed unavailable", needed)
        if dist.is_nccl_available():
            return Check("nccl", OK, "torch.distributed NCCL backend available", needed)
    except Exception as e:  # noqa: BLE001
        return Check("nccl", FAIL if needed else WARN, one_line(e), needed)
    detail = "NCCL not available" + (f": needed for {why}" if needed else " (gloo only)")
    return Check("nccl", FAIL if needed else WARN, detail, needed)


# --------------------------------------------------------------------------------------
# video decoders
# --------------------------------------------------------------------------------------
def probe_decoder(name: str) -> tuple[bool, str]:
    """(importable, version or one-line reason) for a decoder's config name."""
    module, dist = DECODERS.get(name, (name, name))
    try:
        mod = importlib.import_module(module)
    except BaseException as e:  # noqa: BLE001 - OSError (missing ffmpeg libs), ImportError, ...
        if isinstance(e, KeyboardInterrupt):
            raise
        return False, one_line(e)
    version = getattr(mod, "__version__", None) or _dist_version(dist) or "unknown version"
    return True, str(version)


def check_decoders(configured: Sequence[str]) -> list[Check]:
    """One row per known or configured decoder. Preprocess needs any one configured decoder."""
    names = list(DECODERS) + [n for n in configured if n not in DECODERS]
    probes = {n: probe_decoder(n) for n in names}
    working = [n for n in configured if probes[n][0]]
    rows = []
    for n in names:
        ok, info = probes[n]
        is_configured = n in configured
        needed = ["preprocess"] if is_configured else []
        label = f"decoder: {n}"
        position = (
            f"#{configured.index(n) + 1} in data.preprocess.decoders" if is_configured else ""
        )
        if ok:
            note = position or "not in data.preprocess.decoders"
            rows.append(Check(label, OK, f"{info} ({note})", needed))
        elif not is_configured:
            detail = f"not usable: {info} (optional: not in data.preprocess.decoders)"
            rows.append(Check(label, WARN, detail, needed))
        elif working:
            detail = f"not usable: {info}; preprocess falls back to {working[0]}"
            rows.append(Check(label, WARN, detail, needed))
        else:
            others = ", ".join(configured)
            detail = f"not usable: {info}; none of the configured decoders ({others}) works"
            rows.append(Check(label, FAIL, detail, needed))
    return rows


# --------------------------------------------------------------------------------------
# headless rendering
# --------------------------------------------------------------------------------------
_RENDER_SCRIPT = r"""
import json, os, sys, time
def out(**kw):
    sys.stdout.write("HLRP_DOCTOR " + json.dumps(kw) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: GL contexts often complain while freed
try:
    import numpy as np
    import metaworld
    mt1 = metaworld.MT1("reach-v3", seed=0)
    env = mt1.train_classes["reach-v3"](render_mode="rgb_array", width=32, height=32)
    env.set_task(mt1.train_tasks[0])
    env.reset(seed=0)
    frame = np.asarray(env.render())
    renderer = ""
    try:
        from OpenGL import GL
        r = GL.glGetString(GL.GL_RENDERER)
        renderer = r.decode() if isinstance(r, bytes) else str(r or "")
    except Exception:
        pass
    n, t0 = 10, time.perf_counter()
    for _ in range(n):
        env.step(env.action_space.sample())
        frame = np.asarray(env.render())
    fps = n / (time.perf_counter() - t0)
    out(ok=True, shape=list(frame.shape), mean=float(frame.mean()), fps=fps, renderer=renderer)
except BaseException as e:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    out(ok=False, error=type(e).__name__ + (": " + lines[-1] if lines else ""))
"""


def check_render(skip: bool = False, timeout: float = RENDER_TIMEOUT_S) -> Check:
    """Render a 32x32 Meta-World frame in a subprocess with ``MUJOCO_GL`` (default egl)."""
    needed = list(RENDER_STAGES)
    env = dict(os.environ)
    env.setdefault("MUJOCO_GL", "egl")
    backend = env["MUJOCO_GL"]
    name = "render (Meta-World)"
    if skip:
        return Check(name, SKIP, "skipped (--skip-render)", needed)
    if importlib.util.find_spec("metaworld") is None:
        detail = "metaworld not installed (pip install -e '.[sim]')"
        return Check(name, FAIL, detail, needed)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RENDER_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return Check(name, FAIL, f"MUJOCO_GL={backend}: no frame within {timeout:.0f} s", needed)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith("HLRP_DOCTOR "):
            result = json.loads(line[len("HLRP_DOCTOR ") :])
    if result is None:
        tail = one_line(proc.stderr or proc.stdout) or f"exit code {proc.returncode}"
        return Check(name, FAIL, f"MUJOCO_GL={backend}: {tail}", needed)
    if not result["ok"]:
        hint = f" (is the {backend} GL library installed? MUJOCO_GL can be egl or osmesa)"
        return Check(name, FAIL, f"MUJOCO_GL={backend}: {result['error']}{hint}", needed)
    if result["mean"] < 1.0:
        detail = f"MUJOCO_GL={backend}: the rendered frame is black (mean {result['mean']:.2f})"
        return Check(name, FAIL, detail, needed)
    renderer = result.get("renderer") or ""
    software = any(s in renderer.lower() for s in ("llvmpipe", "softpipe", "swrast"))
    gl = f", {renderer}" + (" (software rendering)" if software else "") if renderer else ""
    detail = f"MUJOCO_GL={backend}: {result['fps']:.1f} fps (32x32, step+render){gl}"
    return Check(name, OK, detail, needed)


# --------------------------------------------------------------------------------------
# workflow tools
# --------------------------------------------------------------------------------------
def check_snakemake() -> Check:
    version = _dist_version("snakemake")
    if version:
        return Check("snakemake", OK, version)
    detail = "not installed: run stages one by one with python -m hlrp.<stage>"
    return Check("snakemake", WARN, detail)


def check_slurm_plugin() -> Check:
    version = _dist_version("snakemake-executor-plugin-slurm")
    if version:
        return Check("slurm executor plugin", OK, f"snakemake-executor-plugin-slurm {version}")
    detail = "snakemake-executor-plugin-slurm not installed (only for Slurm submission)"
    return Check("slurm executor plugin", WARN, detail)


def check_sbatch() -> Check:
    path = shutil.which("sbatch")
    if path:
        return Check("sbatch", OK, path)
    return Check(
        "sbatch", SKIP, "not on PATH (info: only Slurm submission needs it, local runs don't)"
    )


# --------------------------------------------------------------------------------------
# wandb
# --------------------------------------------------------------------------------------
def _wandb_netrc_login() -> bool:
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    if not path.is_file():
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = base.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def check_wandb(config_mode: str = "offline") -> Check:
    env_mode = os.environ.get("WANDB_MODE")
    mode = env_mode or config_mode
    source = "WANDB_MODE" if env_mode else "cluster.wandb_mode"
    version = _dist_version("wandb") if importlib.util.find_spec("wandb") else None
    where = f"mode {mode} (from {source})"
    if mode in ("disabled", "off"):
        return Check("wandb", OK, f"{where}: not used" + (f", wandb {version}" if version else ""))
    if version is None:
        return Check("wandb", WARN, f"not installed; {where}: metrics are not sent to W&B")
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _wandb_netrc_login()):
        detail = f"wandb {version}, {where}: no WANDB_API_KEY and no netrc login (wandb login)"
        return Check("wandb", WARN, detail)
    return Check("wandb", OK, f"wandb {version}, {where}")


# --------------------------------------------------------------------------------------
# disk
# --------------------------------------------------------------------------------------
def existing_parent(path: str | os.PathLike) -> Path:
    """The path itself if it exists, else its nearest existing ancestor (nothing is created)."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(label: str, path: str | os.PathLike, needed_by: Sequence[str] = ()) -> Check:
    name = f"disk: {label}"
    target = Path(path).expanduser()
    measured = existing_parent(target)
    where = str(target) if measured == target.absolute() else f"{target} (measured at {measured})"
    try:
        free_gb = shutil.disk_usage(measured).free / 1e9
    except OSError as e:
        return Check(name, FAIL, f"{where}: {one_line(e)}", list(needed_by))
    detail = f"{free_gb:.1f} GB free at {where}"
    if free_gb < DISK_FAIL_GB:
        return Check(name, FAIL, f"{detail} (< {DISK_FAIL_GB:.0f} GB)", list(needed_by))
    if free_gb < DISK_WARN_GB:
        return Check(name, WARN, f"{detail} (< {DISK_WARN_GB:.0f} GB)", list(needed_by))
    return Check(name, OK, detail, list(needed_by))


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def run_checks(
    experiment: str = "demo_tiny",
    data_dir: str | os.PathLike = "data",
    results_dir: str | os.PathLike = "results",
    skip_render: bool = False,
) -> list[Check]:
    from hlrp.common.config import configured_stages

    cfg, config_check = load_experiment(experiment)
    cluster = experiment_cluster(cfg, configured_stages(cfg))
    world_size = max(1, int(cluster.devices)) * max(1, int(cluster.num_nodes))
    checks = [config_check, check_python(), check_platform(), check_torch()]
    checks.append(check_transformers())
    checks += check_cuda(cluster.accelerator)
    checks += [check_bf16(), check_nccl(cluster.accelerator, world_size)]
    checks += check_decoders(list(cfg.data.preprocess.decoders))
    checks.append(check_render(skip=skip_render))
    checks += [check_snakemake(), check_slurm_plugin(), check_sbatch()]
    checks.append(check_wandb(cluster.wandb_mode))
    checks.append(check_disk("data", data_dir, DATA_STAGES))
    checks.append(check_disk("results", results_dir, STAGES))
    return checks


def summarize(checks: Sequence[Check], stages: Sequence[str]) -> tuple[bool, str]:
    """(passed, one-line summary) for the selected stages."""
    blocking = [(c, c.blocks(stages)) for c in checks]
    blocking = [(c, b) for c, b in blocking if b]
    warns = sum(c.status == WARN for c in checks)
    skipped = [c.name for c in checks if c.status == SKIP and set(c.needed_by) & set(stages)]
    extra = f", {warns} warning(s)" if warns else ""
    if skipped:
        extra += f", not checked: {', '.join(skipped)}"
    idle = [c.name for c in checks if c.status == FAIL and not c.blocks(stages)]
    if idle:
        extra += f", failing but not needed by the selected stages: {', '.join(idle)}"
    if not blocking:
        return True, f"doctor: OK for stages {', '.join(stages)}{extra}"
    parts = [f"{c.name} ({c.detail}) blocks {', '.join(b)}" for c, b in blocking]
    blocked = sorted({s for _, b in blocking for s in b}, key=STAGES.index)
    return False, (
        f"doctor: FAIL: stages {', '.join(blocked)} cannot run: " + "; ".join(parts) + extra
    )


_STYLE = {OK: "green", WARN: "yellow", FAIL: "bold red", SKIP: "dim"}


def print_table(checks: Sequence[Check], stages: Sequence[str], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # logs and pipes: wide enough that details stay readable
        console = Console(width=max(console.width, 140))
    table = Table(title=title or None, expand=True)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=3)
    table.add_column("needed by", ratio=1)
    for c in checks:
        status = f"[{_STYLE.get(c.status, '')}]{c.status}[/]"
        table.add_row(c.name, status, c.detail, needed_by_text(c, stages))
    console.print(table)


def needed_by_text(check: Check, stages: Sequence[str]) -> str:
    """The selected stages that need a check, and how many unselected ones do."""
    if not check.needed_by:
        return "-"
    if set(check.needed_by) == set(STAGES) and set(stages) == set(STAGES):
        return "all stages"
    chosen = [s for s in check.needed_by if s in stages]
    others = len(check.needed_by) - len(chosen)
    text = ", ".join(chosen)
    if others:
        text += f"{' ' if text else ''}(+{others} more)"
    return text


def parse_stages(text: str | None) -> list[str]:
    if not text:
        return list(STAGES)
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}"
        )
    return stages


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hlrp.doctor",
        description="Check what this machine can do for the pipeline and what is missing.",
        epilog="Exit status 0 when every check needed by a selected stage passes, 1 otherwise.",
    )
    p.add_argument(
        "--experiment", default="demo_tiny", help="experiment config (default: %(default)s)"
    )
    p.add_argument(
        "--stages",
        type=parse_stages,
        default=list(STAGES),
        help=f"comma-separated stages to check for (default: all: {','.join(STAGES)})",
    )
    p.add_argument("--data-dir", default="data", help="where data is written (default: ./data)")
    p.add_argument(
        "--results-dir", default="results", help="where results are written (default: ./results)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--skip-render", action="store_true", help="skip the Meta-World render check")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    stages: list[str] = args.stages
    checks = run_checks(
        experiment=args.experiment,
        data_dir=args.data_dir,
        results_dir=args.results_dir,
        skip_render=args.skip_render,
    )
    print_table(checks, stages, title=f"hlrp doctor (experiment {args.experiment})")
    passed, line = summarize(checks, stages)
    print(line)
    if args.json:
        from hlrp.common.io import write_json

        write_json(args.json, [c.to_json() for c in checks])
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
