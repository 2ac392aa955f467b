"""Ground-truth actions of frame pairs: ONE definition, shared by the LAQ report and labelling."""

from __future__ import annotations

import numpy as np

__all__ = ["pair_action"]


def pair_action(actions: np.ndarray | None, t: int, k: int) -> np.ndarray | None:
    """The action of the pair (t, t+k): the float32 sum of the per-frame action rows t..t+k-1.

    ``actions`` is a clip's (T, A) per-frame actions (row i: what moves frame i to frame i+1), or
    None when the clip has none. Returns None (the action is unknown) when ``actions`` is None,
    ``k < 1``, ``t < 0``, any row t..t+k-1 is past the end, or any value in them is NaN or
    infinite: a padded tail is not a zero action.
    """
    if actions is None:
        return None
    actions = np.asarray(actions)
    if actions.ndim != 2 or k < 1 or t < 0 or t + k > len(actions):
        return None
    rows = actions[t : t + k].astype(np.float64)  # (k, A)
    if not np.isfinite(rows).all():
        return None
    return rows.sum(0).astype(np.float32)  # (A,)
