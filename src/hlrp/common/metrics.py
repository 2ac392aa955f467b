"""Metrics shared by training, the LAQ report and later stages."""

from __future__ import annotations

import math
from typing import Any, overload

import numpy as np
import torch

__all__ = ["MSE_FLOOR", "finite", "psnr", "wilson_interval"]

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


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95 % for z = 1.96); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
