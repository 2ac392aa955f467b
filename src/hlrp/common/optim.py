"""Learning-rate schedules and throughput accounting shared by the training stages."""

from __future__ import annotations

import math

import torch

from hlrp.common.config import TrainingConfig


def lr_lambda(cfg: TrainingConfig, total_steps: int):
    """Linear warmup, then constant or cosine decay to ``min_lr_ratio``."""
    warmup = cfg.scheduler.warmup_steps
    floor = cfg.scheduler.min_lr_ratio

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    if cfg.scheduler.name not in ("constant", "cosine"):
        raise ValueError(f"training.scheduler.name={cfg.scheduler.name!r}: use constant or cosine")
    return f


def resolve_precision(precision: str, accelerator: str) -> str:
    """``training.precision``: ``auto`` is bf16-mixed on a GPU that supports it, else fp32."""
    if precision != "auto":
        return precision
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


#: Dense bf16 peak FLOP/s per device (vendor data sheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12
    "A100": 312e12,
    "L40S": 362e12,
    "RTX 5090": 209.5e12,
    "RTX 4090": 165.2e12,
}


def peak_flops(device: torch.device | str | None = None) -> float | None:
    """Peak bf16 FLOP/s of a CUDA device by its name; None on CPU or an unknown card."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value * (756 / 989 if key == "H100" and "PCIe" in name else 1.0)
    return None


def training_flops_per_token(num_params: int, num_layers: int, hidden: int, seq_len: int) -> float:
    """6 N + 12 l h T (Kaplan et al. 2020; PaLM's appendix B): forward and backward FLOPs
    per token of a decoder with N non-embedding parameters at sequence length T."""
    return 6.0 * num_params + 12.0 * num_layers * hidden * seq_len
