"""Stage 2's public API for stage 3: the trained foundation model as files, and the pieces a
policy built on it needs (the backbone families, token and adapter helpers).

``results/foundation/model/`` holds the backbone's ``save_pretrained`` files (weights, config,
processor and tokenizer with the ``<ACT_i>`` tokens) and ``hlrp_foundation.json``
(:class:`hlrp.foundation.model.VLAMeta`: family, vocabulary, action token ids, the LAQ and the
labels it learnt from). Loading needs ``transformers`` only, no Fabric.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hlrp.foundation.families import (
    FAMILIES,
    Family,
    check_backbone,
    family_of,
    resolve_backbone,
)
from hlrp.foundation.model import (
    META_FILE,
    LatentActionVLA,
    VLAMeta,
    adapt_backbone,
    add_tokens,
    append_tokens,
    constrained_generate,
    load_backbone,
)

__all__ = [
    "FAMILIES",
    "META_FILE",
    "Family",
    "LatentActionVLA",
    "VLAMeta",
    "adapt_backbone",
    "add_tokens",
    "append_tokens",
    "check_backbone",
    "constrained_generate",
    "family_of",
    "load_backbone",
    "load_foundation",
    "read_meta",
    "resolve_backbone",
]


def load_foundation(folder: str | os.PathLike, dtype: str = "float32") -> LatentActionVLA:
    """The model saved by ``train_foundation`` (``output_dir/model``)."""
    return LatentActionVLA.from_saved(folder, dtype=dtype)


def read_meta(folder: str | os.PathLike) -> VLAMeta:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a saved foundation model: it has no {META_FILE}")
    return VLAMeta(**json.loads(path.read_text()))
