"""The trained foundation model as files: what stage 3 and the report load.

``results/foundation/model/`` holds the backbone's ``save_pretrained`` files (weights, config,
processor and tokenizer with the ``<ACT_i>`` tokens) and ``hlrp_foundation.json``
(:class:`hlrp.foundation.model.VLAMeta`: family, vocabulary, action token ids, the LAQ and the
labels it learnt from). Loading needs ``transformers`` only, no Fabric.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hlrp.foundation.model import META_FILE, LatentActionVLA, VLAMeta


def load_foundation(folder: str | os.PathLike, dtype: str = "float32") -> LatentActionVLA:
    """The model saved by ``train_foundation`` (``output_dir/model``)."""
    return LatentActionVLA.from_saved(folder, dtype=dtype)


def read_meta(folder: str | os.PathLike) -> VLAMeta:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a saved foundation model: it has no {META_FILE}")
    return VLAMeta(**json.loads(path.read_text()))
