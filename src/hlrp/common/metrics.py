"""Image metrics shared by training, the LAQ report and later stages."""

from __future__ import annotations

from typing import overload

import numpy as np
import torch

__all__ = ["MSE_FLOOR", "psnr"]

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
