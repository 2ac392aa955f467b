"""The trained LAQ as a file: what training exports and what later stages load.

This is stage 1's public loading API. Labelling, the report and stage 2 import it; it needs
torch and the model only (no Lightning).

``laq.ckpt`` holds ``model_config`` (the :class:`LAQModelConfig` fields), ``state_dict``,
``global_step`` and ``resume_hash``, and loads with ``torch.load(weights_only=True)``.
Stage 2 reads its latent vocabulary from here (:func:`laq_vocabulary`), never from a copy in
its own config.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from hlrp.common import checkpoint
from hlrp.common.config import LAQModelConfig
from hlrp.laq.model import LAQ


def export_laq(path: str | os.PathLike, model: LAQ, resume_hash: str, step: int) -> None:
    """Write the model alone (atomically) for labelling, the report and stage 2."""
    model = getattr(model, "_orig_mod", model)  # a compiled model's weights, without prefix
    checkpoint.save(
        {
            "model_config": asdict(model.cfg),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "global_step": int(step),
            "resume_hash": resume_hash,
        },
        path,
    )


def _model_config(payload: dict[str, Any], path: str | os.PathLike) -> LAQModelConfig:
    raw = payload.get("model_config")
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not an exported LAQ (laq.ckpt): it has no model_config")
    known = {f.name for f in fields(LAQModelConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: model_config has fields this version does not know: {unknown}")
    return LAQModelConfig(**raw)


def read_laq_config(path: str | os.PathLike) -> LAQModelConfig:
    """The model config of an exported LAQ, without building the model."""
    return _model_config(checkpoint.load(path, mmap=True), path)


def laq_vocabulary(path: str | os.PathLike) -> tuple[int, int]:
    """(codebook size, codes per pair) of an exported LAQ: stage 2's latent vocabulary."""
    cfg = read_laq_config(path)
    return cfg.codebook_size, cfg.code_seq_len


def load_laq(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LAQ:
    """Load an exported ``laq.ckpt`` into an eval-mode :class:`LAQ`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"LAQ checkpoint {path} does not exist (run train_laq)")
    payload = checkpoint.load(path, map_location=map_location)
    model = LAQ(_model_config(payload, path))
    model.load_state_dict(payload["state_dict"])
    return model.to(map_location).eval()
