"""Vector quantizers for the latent action bottleneck of LAQ.

All quantizers share one interface::

    out = quantizer(x)          # x: (B, L, Dq) pre-quantization latents
    out.quantized               # (B, L, Dq)   what the decoder sees
    out.indices                 # (B, L)       long, in [0, codebook_size)
    out.loss                    # ()           auxiliary loss to add to the reconstruction loss
    out.perplexity              # ()           exp(entropy) of the code histogram of this batch
    out.used_fraction           # ()           fraction of the codebook used in this batch
    quantizer.indices_to_codes(indices)  # (B, L, Dq), what `quantized` is in eval mode
    quantizer.replace_unused_codebooks(num_batches) -> int  # dead-code restarts (NSVQ only)

* :class:`NSVQ`: Noise Substitution Vector Quantization (Vali & Bäckström, IEEE Access 2022,
  https://ieeexplore.ieee.org/document/9696322), the quantizer of LAPA
  (https://arxiv.org/abs/2410.11758, ``laq/laq_model/nsvq.py``).
* :class:`FSQQuantizer`: Finite Scalar Quantization (https://arxiv.org/abs/2309.15505) from
  ``vector-quantize-pytorch``.
* :class:`EMAVectorQuantizer`: classic VQ with EMA codebook updates, k-means init and dead-code
  restarts from ``vector-quantize-pytorch``.

Quantization always runs in float32, also inside a bf16 autocast region: nearest-code search in
bf16 is too coarse to tell codes apart.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "QuantOut",
    "Quantizer",
    "NSVQ",
    "FSQQuantizer",
    "EMAVectorQuantizer",
    "QUANTIZERS",
    "build_quantizer",
    "codebook_stats",
]


@dataclass
class QuantOut:
    quantized: Tensor  # (B, L, Dq) float32
    indices: Tensor  # (B, L) long
    loss: Tensor  # () auxiliary quantizer loss (0 for NSVQ and FSQ)
    perplexity: Tensor  # () exp(entropy) of this batch's code histogram, in [1, codebook_size]
    used_fraction: Tensor  # () fraction of the codebook hit by this batch, in (0, 1]


@torch.no_grad()
def codebook_stats(indices: Tensor, codebook_size: int) -> tuple[Tensor, Tensor]:
    """Perplexity and used fraction of one batch of code indices (any shape, long)."""
    counts = F.one_hot(indices.reshape(-1), codebook_size).sum(0).float()  # (K,)
    probs = counts / counts.sum().clamp_min(1.0)  # (K,)
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())  # ()
    used_fraction = (counts > 0).float().mean()  # ()
    return perplexity, used_fraction


class Quantizer(nn.Module):
    """Base class: the common interface (see the module docstring)."""

    codebook_size: int
    dim: int

    def forward(self, x: Tensor) -> QuantOut:  # pragma: no cover - interface
        raise NotImplementedError

    def indices_to_codes(self, indices: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def replace_unused_codebooks(self, num_batches: int) -> int:
        """Dead-code restarts; a no-op for quantizers that handle it themselves (or have none)."""
        return 0


def _fp32(x: Tensor):
    """A context that turns autocast off on x's device (quantize in full precision)."""
    if not torch.amp.is_autocast_available(x.device.type):  # e.g. the meta device
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)


# --------------------------------------------------------------------------------------
# NSVQ
# --------------------------------------------------------------------------------------
class NSVQ(Quantizer):
    """Noise Substitution Vector Quantization, as in LAPA's ``nsvq.py``.

    Training: the nearest code q of x is found by Euclidean distance, and the output is
    ``x + ||x - q|| * r / ||r||`` with r ~ N(0, I): the quantization error is replaced by a
    random vector of the same norm, so gradients reach both the encoder (through x) and the
    codebook (through ||x - q||) without a straight-through estimator or codebook loss.
    Eval: the output is the hard code q.

    Dead codes: training forwards count how often each code is picked (``code_usage``) and keep
    a random sample of recent inputs (``recent_inputs``). :meth:`replace_unused_codebooks`
    re-initialises codes picked in less than ``discarding_threshold * num_batches`` vectors since
    the previous call at random recent encoder outputs (plus a little noise), or - before any
    input was seen - next to used codes, as LAPA does. All state lives in buffers, so it is in
    the ``state_dict`` and a resumed run replaces exactly the same codes.
    """

    def __init__(
        self,
        codebook_size: int,  # K, number of codes
        dim: int,  # Dq, dimension of the codes and of the inputs
        discarding_threshold: float = 0.01,  # LAPA: a code is dead if usage / num_batches < this
        reservoir_size: int = 256,  # recent inputs kept for restarts (sampled from each batch)
        restart_noise: float = 0.01,  # std of the noise added to restarted codes, relative to
        #                               the std of the vectors they are copied from
        eps: float = 1e-12,  # guards the division by the random vector's norm
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.discarding_threshold = discarding_threshold
        self.restart_noise = restart_noise
        self.eps = eps
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))  # (K, Dq), LAPA: N(0, 1)
        # picks per code since the last replace_unused_codebooks call
        self.register_buffer("code_usage", torch.zeros(codebook_size, dtype=torch.long))
        # a random sample of recent encoder outputs, candidates for restarted codes
        self.register_buffer("recent_inputs", torch.zeros(reservoir_size, dim))
        self.register_buffer("has_recent", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code of each row of flat (M, Dq) -> (M,) long."""
        codebook = self.codebook.float()  # (K, Dq)
        dist = (
            flat.pow(2).sum(-1, keepdim=True)  # (M, 1)
            - 2.0 * flat @ codebook.t()  # (M, K)
            + codebook.pow(2).sum(-1)[None]  # (1, K)
        )  # (M, K) squared Euclidean distances
        return dist.argmin(-1)  # (M,)

    def forward(self, x: Tensor) -> QuantOut:
        B, L, D = x.shape
        with _fp32(x):
            flat = x.float().reshape(B * L, D)  # (M, Dq)
            idx = self.nearest(flat)  # (M,)
            hard = F.embedding(idx, self.codebook.float())  # (M, Dq)
            if self.training:
                noise = torch.randn_like(flat)  # (M, Dq)
                residual_norm = (flat - hard).norm(dim=-1, keepdim=True)  # (M, 1)
                noise_norm = noise.norm(dim=-1, keepdim=True)  # (M, 1)
                quantized = flat + residual_norm / (noise_norm + self.eps) * noise  # (M, Dq)
                self._track(flat.detach(), idx)
            else:
                quantized = hard
        perplexity, used_fraction = codebook_stats(idx, self.codebook_size)
        return QuantOut(
            quantized=quantized.view(B, L, D),
            indices=idx.view(B, L),
            loss=flat.new_zeros(()),
            perplexity=perplexity,
            used_fraction=used_fraction,
        )

    @torch.no_grad()
    def _track(self, flat: Tensor, idx: Tensor) -> None:
        """Count code usage and refresh the reservoir of recent inputs (static shapes only)."""
        self.code_usage += F.one_hot(idx, self.codebook_size).sum(0)  # (K,)
        pick = torch.randint(0, flat.shape[0], (self.recent_inputs.shape[0],), device=flat.device)
        self.recent_inputs.copy_(flat[pick])  # (R, Dq)
        self.has_recent.fill_(True)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return F.embedding(indices, self.codebook)  # (B, L) -> (B, L, Dq)

    @torch.no_grad()
    def replace_unused_codebooks(self, num_batches: int) -> int:
        """Restart codes used in < discarding_threshold * num_batches vectors; returns how many.

        Call it every ``num_batches`` training steps (LAPA: often early in training, then less,
        then never). Under torch.distributed every rank must call it: rank 0 decides and its
        codebook is broadcast, so all replicas stay identical.
        """
        usage = self.code_usage.float() / max(num_batches, 1)  # (K,)
        dead = usage < self.discarding_threshold  # (K,)
        alive = ~dead
        n_dead = int(dead.sum())
        if n_dead > 0:
            if bool(self.has_recent):  # copy random recent encoder outputs
                source = self.recent_inputs
            elif bool(alive.any()):  # LAPA: copy used codes
                source = self.codebook.data[alive]
            else:  # nothing to copy from: keep the codes
                source = self.codebook.data
            pick = torch.randint(0, source.shape[0], (n_dead,), device=source.device)
            new = source[pick]  # (n_dead, Dq)
            scale = source.std().clamp_min(1e-6) * self.restart_noise
            new = new + scale * torch.randn_like(new)
            self.codebook.data[dead] = new.to(self.codebook.dtype)
        self.code_usage.zero_()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(self.codebook.data, src=0)
            count = torch.tensor([n_dead], device=self.codebook.device)
            torch.distributed.broadcast(count, src=0)
            n_dead = int(count.item())
        return n_dead


# --------------------------------------------------------------------------------------
# vector-quantize-pytorch options
# --------------------------------------------------------------------------------------
class FSQQuantizer(Quantizer):
    """Finite Scalar Quantization: project to len(levels) dims, round each to its levels."""

    def __init__(
        self,
        dim: int,  # Dq, input dimension (FSQ projects it to len(levels) and back)
        levels: list[int],  # levels per FSQ dimension; codebook size = prod(levels)
        codebook_size: int | None = None,  # if given, must equal prod(levels)
    ):
        super().__init__()
        from vector_quantize_pytorch import FSQ

        levels = [int(v) for v in levels]
        implied = math.prod(levels)
        if codebook_size is not None and implied != codebook_size:
            raise ValueError(
                f"FSQ levels {levels} give a codebook of prod(fsq_levels)={implied} codes, but "
                f"codebook_size={codebook_size}; make them agree (e.g. fsq_levels=[8] for 8 codes)"
            )
        self.codebook_size = implied
        self.dim = dim
        self.fsq = FSQ(
            levels=levels,
            dim=dim,
            preserve_symmetry=any(v == 2 for v in levels),  # the package requires it for level 2
        )

    def forward(self, x: Tensor) -> QuantOut:
        with _fp32(x):
            quantized, indices = self.fsq(x.float())  # (B, L, Dq), (B, L) int32
        indices = indices.long()
        perplexity, used_fraction = codebook_stats(indices, self.codebook_size)
        return QuantOut(
            quantized, indices, x.new_zeros((), dtype=torch.float32), perplexity, used_fraction
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.fsq.indices_to_codes(indices)  # (B, L) -> (B, L, Dq)


class EMAVectorQuantizer(Quantizer):
    """VQ-VAE quantizer with EMA codebook updates, k-means init and dead-code restarts.

    Restarts happen inside forward (codes whose EMA cluster size falls below
    ``threshold_ema_dead_code`` are replaced by random batch vectors); the EMA statistics are
    buffers, so they are in the state_dict. Synchronised across ranks under torch.distributed.
    """

    def __init__(
        self,
        dim: int,  # Dq, code dimension
        codebook_size: int,  # K, number of codes
        decay: float = 0.99,  # EMA decay of the cluster sizes and code sums
        commitment_weight: float = 0.25,  # beta of the commitment loss ||x - sg(q)||^2
        kmeans_init: bool = True,  # initialise the codebook by k-means on the first batch
        kmeans_iters: int = 10,  # k-means iterations for that initialisation
        threshold_ema_dead_code: float = 2.0,  # restart codes whose EMA count (vectors per
        #                                        batch) drops below this; expect B * L / K
    ):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.codebook_size = codebook_size
        self.dim = dim
        self.vq = VectorQuantize(
            dim=dim,
            codebook_size=codebook_size,
            decay=decay,
            commitment_weight=commitment_weight,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            threshold_ema_dead_code=threshold_ema_dead_code,
        )

    def forward(self, x: Tensor) -> QuantOut:
        with _fp32(x):
            quantized, indices, loss = self.vq(x.float())  # (B, L, Dq), (B, L), ()
        indices = indices.long()
        perplexity, used_fraction = codebook_stats(indices, self.codebook_size)
        return QuantOut(quantized, indices, loss.reshape(()), perplexity, used_fraction)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        return self.vq.get_output_from_indices(indices)  # (B, L) -> (B, L, Dq)


QUANTIZERS = ("nsvq", "fsq", "vq_ema")


def build_quantizer(cfg) -> Quantizer:
    """The quantizer named by ``cfg.quantizer`` (an LAQModelConfig), working in cfg.quant_dim."""
    if cfg.quantizer == "nsvq":
        return NSVQ(codebook_size=cfg.codebook_size, dim=cfg.quant_dim)
    if cfg.quantizer == "fsq":
        return FSQQuantizer(
            dim=cfg.quant_dim, levels=list(cfg.fsq_levels), codebook_size=cfg.codebook_size
        )
    if cfg.quantizer == "vq_ema":
        return EMAVectorQuantizer(dim=cfg.quant_dim, codebook_size=cfg.codebook_size)
    raise ValueError(f"model.quantizer={cfg.quantizer!r} is not one of {list(QUANTIZERS)}")
