"""Metrics shared by training, the LAQ report and later stages."""

from __future__ import annotations

import math
from typing import Any, overload

import numpy as np
import torch

__all__ = ["MSE_FLOOR", "finite", "psnr"]

MSE_FLOOR = 1e-10  # identical images: PSNR capped at 100 dB instead of infinity


@overload
def psnr(mse: torch.Tensor) -> torch.Tensor: ...
@overload
def psnr(mse: np.ndarray | float) -> np.ndarray | float: ...


def psnr(mse):
    """PSNR in dB of images in [0, 1] from their mean squared error (tensor, array or float)."""
    if isinstance(mse, torch.Tensor):
        return 10 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))
    out = 10 * np.log10(1.0 / np.maximum(mse, MSE_FLOOR))
    return float(out) if np.ndim(out) == 0 else out


def finite(x: Any) -> float | None:
    """``x`` as a finite float, or None for missing, non-numeric or NaN/inf values."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None
