"""Checkpoints every training stage shares: atomic saves, safe loads, RNG streams, resume.

Stage 1 and 3 (Lightning) and stage 2 (Fabric) use the same pieces:

* :func:`save` writes through a temporary file that is fsynced and renamed, so a kill never
  leaves half a checkpoint under its name; :func:`clean_partial` removes the temporary files
  a killed save left behind (call it when a run starts).
* A *sharded* checkpoint is a folder (every rank writes its shards, e.g. with
  ``torch.distributed.checkpoint``) holding :data:`SHARDED_META`, a :func:`save` file with the
  stamp and the step. It is written as ``.<name>.tmp/`` and put in place by
  :func:`commit_folder`; :func:`read_meta` and :func:`prepare_run` treat it like a file.
* :func:`load` reads with ``torch.load(weights_only=True)``: checkpoints hold tensors and plain
  Python values only (RNG states are stored as tensors, see :func:`rng_state`), so a
  user-supplied file cannot run code when it is loaded.
* :func:`rng_state` / :func:`set_rng_state` capture every RNG stream of a process (torch,
  CUDA, numpy, Python); :func:`gather_rng_states` collects them from every rank so a resumed
  rank continues its own streams.
* :func:`prepare_run` decides, when a run starts in a folder, between continuing and
  starting anew, and moves aside (never deletes) what a fresh run replaces:

  ===============================================  ==========================================
  what the folder holds                            what happens
  ===============================================  ==========================================
  nothing                                          train from scratch
  an unfinished run of this config (killed,        resume from its newest checkpoint
  timed out)
  a finished run of this config, asked for more    continue it (``max_steps`` was raised)
  steps than it took
  a finished run of this config, asked for the     the old run moves to ``previous/run-NNN/``,
  same steps or fewer (a forced rebuild)           train from scratch
  a checkpoint of another config                   moved to ``checkpoints.stale-<hash>/``,
                                                   train from scratch
  a checkpoint of this config from another         refused with a clear message: resuming
  number of processes                              would silently change the data order
  ===============================================  ==========================================

"This config" is the *resume hash* (:func:`hlrp.common.config.result_hash` with
``resume=True``): it covers what changes a result, not paths, logging cadence or
``max_steps``.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hlrp.common.io import atomic_open, write_json
from hlrp.common.logging import get_logger

log = get_logger("checkpoint")

#: Key under which :func:`stamp` stores what :func:`prepare_run` checks.
META_KEY = "hlrp"
FINISHED = "finished.json"
#: The file of a sharded checkpoint folder that makes it complete (written last).
SHARDED_META = "meta.pt"


class ResumeError(RuntimeError):
    """A checkpoint exists for this run but cannot be resumed as it is (the message says why)."""


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------
def save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, fsync, then rename."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", **kw: Any) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain Python values only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, **kw)
    except Exception as e:  # noqa: BLE001 - re-raised with the file's name
        raise ResumeError(
            f"cannot load checkpoint {path}: {e}. It is not a checkpoint of this project, it is "
            "damaged, or it holds Python objects other than tensors and plain values"
        ) from e


def is_checkpoint(path: str | os.PathLike) -> bool:
    """A checkpoint file, or a complete sharded checkpoint folder."""
    path = Path(path)
    return path.is_file() or (path.is_dir() and (path / SHARDED_META).is_file())


def commit_folder(
    tmp: str | os.PathLike, dest: str | os.PathLike, marker: str = SHARDED_META
) -> None:
    """Put the finished folder ``tmp`` (a sharded checkpoint, written by every rank, or a saved
    model whose ``marker`` file is written last) at ``dest``. The old ``dest`` is renamed to
    ``.<name>.old`` first and removed last, so a kill at any point leaves one complete folder
    (see :func:`clean_partial`)."""
    import shutil

    tmp, dest = Path(tmp), Path(dest)
    if not (tmp / marker).is_file():
        raise ResumeError(f"{tmp} is not complete (no {marker})")
    old = dest.parent / f".{dest.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def clean_partial(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files (and sharded folders) a killed save left in ``folder``;
    returns them. A sharded checkpoint killed between the two renames of
    :func:`commit_folder` is restored from its ``.<name>.old`` copy."""
    import shutil

    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for old in folder.glob(".*.old"):
            dest = folder / old.name[1 : -len(".old")]
            if not dest.exists() and (old / SHARDED_META).is_file():
                os.replace(old, dest)
                log.warning("restored %s from %s (a save was killed)", dest, old)
            else:
                shutil.rmtree(old, ignore_errors=True)
        for tmp in folder.glob(".*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        log.info("removed %d partial checkpoint file(s) in %s", len(removed), folder)
    return removed


# --------------------------------------------------------------------------------------
# RNG streams
# --------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's RNG streams, as tensors and plain values (loadable with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's :func:`rng_state`, in rank order (a collective under torch.distributed)."""
    state = rng_state()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        states: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, state)
        return states
    return [state]


def rng_state_for_rank(states: Any, rank: int) -> dict[str, Any] | None:
    """The stream of ``rank`` from what :func:`gather_rng_states` stored."""
    if isinstance(states, list):
        return states[rank] if rank < len(states) else None
    return states


# --------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------
def is_global_rank_zero() -> bool:
    """True in the one process that may move files, before any process group exists.

    Works for processes started by srun (``SLURM_PROCID``), torchrun (``RANK``) and
    Lightning's own launcher (``LOCAL_RANK``/``NODE_RANK`` of its child processes).
    """
    return all(
        int(os.environ.get(v, "0") or 0) == 0
        for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    )


def stamp(resume_hash: str, world_size: int) -> dict[str, Any]:
    """What every checkpoint of a run carries under :data:`META_KEY`."""
    return {"resume_hash": resume_hash, "world_size": int(world_size)}


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The stamp and step of a checkpoint file (memory-mapped: cheap for large files) or of
    a sharded checkpoint folder (its :data:`SHARDED_META`)."""
    if Path(path).is_dir():
        path = Path(path) / SHARDED_META
    ckpt = load(path, mmap=True)
    meta = dict(ckpt.get(META_KEY) or {})
    meta.setdefault("resume_hash", meta.get("config_hash"))  # checkpoints of version 0.1
    meta["global_step"] = int(ckpt.get("global_step", ckpt.get("step", -1)))
    return meta


@dataclass
class RunPlan:
    """What :func:`prepare_run` decided: resume from ``resume`` (None: start from scratch)."""

    resume: str | None
    reason: str
    step: int = 0


def _next_free(folder: Path, stem: str) -> Path:
    taken = {
        int(m.group(1)) for p in folder.glob(f"{stem}-*") if (m := re.search(r"-(\d+)$", p.name))
    }
    return folder / f"{stem}-{max(taken, default=0) + 1:03d}"


def archive_run(out: Path, keep: Iterable[str] = ()) -> Path | None:
    """Move everything in ``out`` except ``previous/`` (and ``keep``) to
    ``out/previous/run-NNN/``. Returns that folder (None when nothing was there)."""
    keep = {"previous", *keep}
    items = [p for p in out.iterdir() if p.name not in keep] if out.is_dir() else []
    if not items:
        return None
    dest = _next_free(out / "previous", "run")
    dest.mkdir(parents=True)
    for p in items:
        os.replace(p, dest / p.name)
    return dest


def prepare_run(
    out: str | os.PathLike,
    resume_hash: str,
    world_size: int,
    total_steps: int,
    candidates: Iterable[str] = ("checkpoints/last.ckpt",),
    keep: Iterable[str] = (),
) -> RunPlan:
    """Decide how a run in ``out`` starts (see the module docstring) and tidy the folder.

    ``candidates`` are glob patterns, relative to ``out``, of checkpoints a run may resume
    from; ``keep`` names entries of ``out`` that an archived run leaves in place. Only global
    rank 0 moves files; the other ranks reach the same decision from what they read.
    """
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    mover = is_global_rank_zero()
    if mover:
        clean_partial(ckpt_dir)
    finished_path = ckpt_dir / FINISHED
    finished = json.loads(finished_path.read_text()) if finished_path.is_file() else None
    found: list[tuple[Path, dict[str, Any]]] = []
    for pattern in candidates:
        for p in sorted(out.glob(pattern)):
            if is_checkpoint(p):
                try:
                    found.append((p, read_meta(p)))
                except ResumeError as e:
                    log.warning("%s; ignoring it", e)
    mine = [(m["global_step"], str(p), m) for p, m in found if m["resume_hash"] == resume_hash]
    stale = [(p, m) for p, m in found if m["resume_hash"] != resume_hash]

    if finished and finished.get("resume_hash") == resume_hash:
        done = int(finished.get("step", -1))
        if total_steps <= done:
            if mover:
                dest = archive_run(out, keep)
                log.warning(
                    "%s holds a finished run of this config (%d steps): moved it to %s and "
                    "training anew (raise max_steps to continue it instead)",
                    out,
                    done,
                    dest,
                )
            return RunPlan(None, f"finished run of {done} steps moved aside", 0)
        if mover:
            finished_path.unlink(missing_ok=True)
        log.info("continuing the finished run of %d steps to %d steps", done, total_steps)
    if mover:
        for p, m in stale:
            dest = out / f"checkpoints.stale-{m['resume_hash'] or 'unknown'}"
            dest.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest / p.name)
            log.warning("config changed since %s was written: moved it to %s", p, dest)
    if not mine:
        if stale:
            log.warning("training from scratch")
        return RunPlan(None, "no checkpoint of this config", 0)
    step, path, meta = max(mine, key=lambda x: (x[0], x[1]))
    saved_world = int(meta.get("world_size") or world_size)
    if saved_world != world_size:
        raise ResumeError(
            f"{path} was written by {saved_world} processes and this run has {world_size}: "
            "resuming would change which data each process reads and the result would not be "
            f"the run's. Run again with {saved_world} processes (cluster.devices x "
            "cluster.num_nodes, or the workflow's nodes x gpus_per_node), or move "
            f"{ckpt_dir} aside to start anew"
        )
    return RunPlan(path, f"resuming from {path} (step {step})", step)


def mark_finished(out: str | os.PathLike, resume_hash: str, step: int) -> None:
    """Record that the run in ``out`` completed ``step`` steps (read by :func:`prepare_run`)."""
    write_json(Path(out) / "checkpoints" / FINISHED, {"resume_hash": resume_hash, "step": step})
