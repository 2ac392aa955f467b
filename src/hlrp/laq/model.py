"""LAQ: the latent action quantization model of LAPA, in one readable file.

Paper: "Latent Action Pretraining from Videos" (Ye et al., 2024), https://arxiv.org/abs/2410.11758
Reference code: https://github.com/LatentActionPretraining/LAPA (``laq/laq_model``).

Given two frames (t, t+k) of a video, LAQ encodes the pair with a spatio-temporal transformer,
squeezes "what changed" through a tiny discrete bottleneck (``code_seq_len`` codes from a
codebook of ``codebook_size``) and trains a decoder to predict frame t+k from frame t and the
codes. The codes are the *latent actions* a VLA is later pretrained to predict.

    frames (B, 2, C, H, W)
      -> patch embedding            tokens (B, 2, N, D), N = (H / p)^2, same embedding per frame
      -> spatial blocks  x spatial_depth    attention over the N patches of each frame
      -> temporal blocks x temporal_depth   causal attention over the 2 frames at each patch
      -> action encoder: z = cnn(proj(enc[t+k])) - cnn(proj(enc[t]))   (B, L, Dq), L = code_seq_len
      -> quantizer (NSVQ | FSQ | VQ-EMA)    (B, L, Dq), indices (B, L)
      -> proj back to D                      actions (B, L, D)
      -> decoder blocks x decoder_depth: patch embedding of frame t (detached, as in LAPA)
         self-attends and cross-attends to the actions
      -> linear head to pixels               recon of frame t+k (B, C, H, W), MSE loss
         (``decode_residual``: the head predicts frame t+k - frame t; recon = frame t + head)

As in LAPA every block starts with a PEG (a causal depthwise 3x3x3 convolution over (T, h, w)
that generates positional information, https://arxiv.org/abs/2102.10882), spatial attention gets
a continuous relative position bias (an MLP of log-distances, https://arxiv.org/abs/2111.09883,
shared by encoder and decoder), attention is cosine-similarity attention (l2-normalised q and k
with learned per-dim scales, temperature 8), the MLP is a GEGLU with hidden size
mlp_ratio * 2/3 * dim and the transformer layer norms have no bias. At LAPA's size
(config/model/laq.yaml) the model has 343.7 M parameters and costs ~69 GFLOP forward,
~206 GFLOP forward + backward per frame pair (matmuls; torch.utils.flop_counter reports ~350
because it counts the depthwise PEG convolutions' backward as dense convolutions).

Deviations from LAPA's code: temporal attention is causal (LAPA's is not, but LAPA decodes from
frame t's patch embedding, so nothing leaks either way); the PEG of the temporal blocks sees the
true (T, h, w) layout (LAPA reshapes the (B*h*w, T, D) tokens to (B, T, h, w) without
transposing); the continuous position bias is computed on the (2g-1)^2 distinct offsets and
gathered; the action encoder's convolutions are derived from the patch grid and code_seq_len
instead of a table for an 8x8 grid; the decoder depth is its own setting (LAPA: spatial_depth).

One option LAPA does not have, ``decode_residual`` (off by default, on in the demo's
config/model/laq_demo.yaml): the decoder predicts the change from frame t, its head
zero-initialised so that the untrained model copies frame t. A small decoder that must repaint
the whole frame spends its capacity on the static scene; predicting the residual leaves it
only what moved, which is what the codes must carry. On the demo this raised the held-out
codes-to-actions probe R² from 0.40 to 0.51 at the same budget (BENCHMARKS.md, "Third search").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hlrp.common.config import LAQModelConfig
from hlrp.laq.quantizers import QUANTIZERS, Quantizer, build_quantizer

__all__ = ["LAQModelConfig", "LAQOutput", "LAQ", "maybe_compile", "action_grid"]


# --------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------
class PEG(nn.Module):
    """Position generator: causal depthwise 3x3x3 conv over (T, h, w), zero padded."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, groups=dim)

    def forward(self, x: Tensor, grid: int) -> Tensor:
        B, T, N, D = x.shape  # (B, T, N, D)
        x = x.reshape(B, T, grid, grid, D).permute(0, 4, 1, 2, 3)  # (B, D, T, h, w)
        x = F.pad(x, (1, 1, 1, 1, 2, 0))  # w: 1|1, h: 1|1, T: 2 before, 0 after (causal)
        x = self.conv(x)  # (B, D, T, h, w)
        return x.permute(0, 2, 3, 4, 1).reshape(B, T, N, D)  # (B, T, N, D)


class SelfAttention(nn.Module):
    """Pre-norm multi-head cosine-similarity self-attention with a fused qkv projection."""

    def __init__(self, cfg: LAQModelConfig, causal: bool = False, scale: float = 8.0):
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads, self.dim_head, self.causal, self.scale = cfg.heads, cfg.dim_head, causal, scale
        self.dropout = cfg.attn_dropout
        self.norm = nn.LayerNorm(cfg.dim, bias=False)
        self.qkv = nn.Linear(cfg.dim, 3 * inner, bias=False)
        self.q_scale = nn.Parameter(torch.ones(cfg.dim_head))
        self.k_scale = nn.Parameter(torch.ones(cfg.dim_head))
        self.proj = nn.Linear(inner, cfg.dim, bias=False)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        B, S, _ = x.shape  # (B', S, D)
        qkv = self.qkv(self.norm(x)).view(B, S, 3, self.heads, self.dim_head)  # (B', S, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B', H, S, Dh)
        q = (F.normalize(q, dim=-1) * self.q_scale).to(v.dtype)  # (B', H, S, Dh)
        k = (F.normalize(k, dim=-1) * self.k_scale).to(v.dtype)  # (B', H, S, Dh)
        mask = None if attn_bias is None else attn_bias.to(q.dtype)  # (1, H, S, S)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
            scale=self.scale,
        )  # (B', H, S, Dh)
        y = y.transpose(1, 2).reshape(B, S, self.heads * self.dim_head)  # (B', S, H*Dh)
        return self.proj(y)  # (B', S, D)


class CrossAttention(nn.Module):
    """Pre-norm cosine-similarity cross-attention to a context, with learned null key/values."""

    def __init__(self, cfg: LAQModelConfig, num_null_kv: int = 2, scale: float = 8.0):
        super().__init__()
        inner = cfg.heads * cfg.dim_head
        self.heads, self.dim_head, self.scale = cfg.heads, cfg.dim_head, scale
        self.dropout = cfg.attn_dropout
        self.norm = nn.LayerNorm(cfg.dim, bias=False)
        self.context_norm = nn.LayerNorm(cfg.dim, bias=False)
        self.q = nn.Linear(cfg.dim, inner, bias=False)
        self.kv = nn.Linear(cfg.dim, 2 * inner, bias=False)
        # keys/values always present, so a query can attend to "nothing" (LAPA: 2 per head)
        self.null_kv = nn.Parameter(torch.randn(2, cfg.heads, num_null_kv, cfg.dim_head))
        self.q_scale = nn.Parameter(torch.ones(cfg.dim_head))
        self.k_scale = nn.Parameter(torch.ones(cfg.dim_head))
        self.proj = nn.Linear(inner, cfg.dim, bias=False)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, S, _ = x.shape  # (B, S, D)
        Lc = context.shape[1]  # context (B, Lc, D)
        H, Dh = self.heads, self.dim_head
        q = self.q(self.norm(x)).view(B, S, H, Dh).transpose(1, 2)  # (B, H, S, Dh)
        kv = self.kv(self.context_norm(context)).view(B, Lc, 2, H, Dh)  # (B, Lc, 2, H, Dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, Lc, Dh)
        null_k, null_v = self.null_kv.to(v.dtype).unbind(0)  # 2 x (H, n, Dh)
        k = torch.cat([null_k.expand(B, -1, -1, -1), k], dim=2)  # (B, H, n + Lc, Dh)
        v = torch.cat([null_v.expand(B, -1, -1, -1), v], dim=2)  # (B, H, n + Lc, Dh)
        q = (F.normalize(q, dim=-1) * self.q_scale).to(v.dtype)  # (B, H, S, Dh)
        k = (F.normalize(k, dim=-1) * self.k_scale).to(v.dtype)  # (B, H, n + Lc, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, scale=self.scale
        )  # (B, H, S, Dh)
        y = y.transpose(1, 2).reshape(B, S, H * Dh)  # (B, S, H*Dh)
        return self.proj(y)  # (B, S, D)


class FeedForward(nn.Module):
    """Pre-norm GEGLU MLP (LAPA): hidden = mlp_ratio * 2/3 * dim, so params = 2 * mlp_ratio * D^2."""

    def __init__(self, cfg: LAQModelConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * 2 / 3 * cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, bias=False)
        self.fc = nn.Linear(cfg.dim, 2 * hidden, bias=False)
        self.drop = nn.Dropout(cfg.ff_dropout)
        self.proj = nn.Linear(hidden, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.fc(self.norm(x)).chunk(2, dim=-1)  # 2 x (..., hidden)
        return self.proj(self.drop(h * F.gelu(gate)))  # (..., D)


class Block(nn.Module):
    """PEG -> self-attention -> (cross-attention) -> MLP, residual, on a (B, T, N, D) video.

    ``axis="space"`` attends over the N patches of each frame (batched as (B*T, N, D));
    ``axis="time"`` attends causally over the T frames at each patch (batched as (B*N, T, D)).
    """

    def __init__(self, cfg: LAQModelConfig, axis: str, cross: bool = False):
        super().__init__()
        assert axis in ("space", "time")
        self.axis = axis
        self.peg = PEG(cfg.dim)
        self.attn = SelfAttention(cfg, causal=axis == "time")
        self.cross = CrossAttention(cfg) if cross else None
        self.ff = FeedForward(cfg)

    def forward(
        self, x: Tensor, grid: int, attn_bias: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:
        B, T, N, D = x.shape  # (B, T, N, D)
        x = x + self.peg(x, grid)  # (B, T, N, D)
        if self.axis == "space":
            s = x.reshape(B * T, N, D)  # (B*T, N, D)
        else:
            s = x.transpose(1, 2).reshape(B * N, T, D)  # (B*N, T, D)
        s = s + self.attn(s, attn_bias)
        if self.cross is not None:
            s = s + self.cross(s, context)  # context (B*T, L, D)
        s = s + self.ff(s)
        if self.axis == "space":
            return s.view(B, T, N, D)  # (B, T, N, D)
        return s.view(B, N, T, D).transpose(1, 2)  # (B, T, N, D)


class ContinuousPositionBias(nn.Module):
    """Per-head spatial attention bias from an MLP of signed log relative offsets (SwinV2).

    The MLP runs on the (2g-1)^2 distinct offsets only and is gathered to (N, N) afterwards.
    """

    def __init__(self, cfg: LAQModelConfig, grid: int, layers: int = 2):
        super().__init__()
        dims = [2] + [cfg.dim] * layers
        net: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            net += [nn.Linear(a, b), nn.LeakyReLU(0.1)]
        self.net = nn.Sequential(*net, nn.Linear(cfg.dim, cfg.heads))
        r = torch.arange(-(grid - 1), grid, dtype=torch.float32)  # (2g-1,)
        offsets = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)  # (R, 2)
        self.register_buffer(
            "offsets", offsets.sign() * torch.log1p(offsets.abs()), persistent=False
        )
        pos = torch.stack(torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij"), -1)
        pos = pos.reshape(-1, 2)  # (N, 2) patch (row, col)
        rel = pos[:, None] - pos[None, :] + (grid - 1)  # (N, N, 2), in [0, 2g-2]
        self.register_buffer("index", rel[..., 0] * (2 * grid - 1) + rel[..., 1], persistent=False)

    def forward(self) -> Tensor:
        table = self.net(self.offsets)  # (R, H)
        return table[self.index].permute(2, 0, 1).unsqueeze(0)  # (1, H, N, N)


def action_grid(code_seq_len: int) -> tuple[int, int]:
    """(rows, cols) the codes of one transition are laid out in: square if possible, else the
    most square factorisation, taller than wide (LAPA: 1 -> 1x1, 2 -> 2x1, 4 -> 2x2)."""
    for cols in range(math.isqrt(code_seq_len), 0, -1):
        if code_seq_len % cols == 0:
            return code_seq_len // cols, cols
    raise ValueError(f"code_seq_len must be >= 1, got {code_seq_len}")


class ActionEncoder(nn.Module):
    """Encoder tokens of both frames -> pre-quantization latents z (B, L, Dq), and back.

    As LAPA's NSVQ.encode: project every token to quant_dim, shrink the g x g token grid of each
    frame to the action grid with two small convolutions (stride 2, then a 'valid' conv), and
    take the difference of frame t+k and frame t.
    """

    def __init__(self, cfg: LAQModelConfig, grid: int):
        super().__init__()
        Dq = cfg.quant_dim
        rows, cols = action_grid(cfg.code_seq_len)
        stride = 2 if (grid + 1) // 2 >= rows else 1
        g1 = (grid - 1) // stride + 1  # grid after the first conv (3x3, padding 1)
        if g1 < rows:
            raise ValueError(
                f"code_seq_len={cfg.code_seq_len} needs a {rows}x{cols} action grid, more than "
                f"the {grid}x{grid} patch grid of image_size/patch_size allows"
            )
        self.proj_in = nn.Linear(cfg.dim, Dq)
        self.cnn = nn.Sequential(
            nn.Conv2d(Dq, Dq, kernel_size=3, stride=stride, padding=1),  # (g, g) -> (g1, g1)
            nn.ReLU(),
            nn.Conv2d(Dq, Dq, kernel_size=(g1 - rows + 1, g1 - cols + 1)),  # -> (rows, cols)
        )
        self.proj_out = nn.Linear(Dq, cfg.dim)
        self.grid = grid

    def forward(self, enc: Tensor) -> Tensor:
        B, T, N, D = enc.shape  # (B, 2, N, D)
        z = self.proj_in(enc)  # (B, 2, N, Dq)
        z = z.reshape(B * T, self.grid, self.grid, -1).permute(0, 3, 1, 2)  # (B*2, Dq, g, g)
        z = self.cnn(z)  # (B*2, Dq, rows, cols)
        z = z.flatten(2).transpose(1, 2).reshape(B, T, -1, z.shape[1])  # (B, 2, L, Dq)
        return z[:, 1] - z[:, 0]  # (B, L, Dq)


# --------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------
@dataclass
class LAQOutput:
    recon: Tensor  # (B, C, H, W) predicted frame t+k
    loss: Tensor  # () pixel MSE of recon vs frame t+k (float32)
    indices: Tensor  # (B, L) long latent action codes
    z_pre: Tensor  # (B, L, Dq) float32 pre-quantization latents
    quant_loss: Tensor  # () quantizer loss (0 for NSVQ / FSQ); train on loss + quant_loss
    perplexity: Tensor  # () exp(entropy) of this batch's code histogram
    used_fraction: Tensor  # () fraction of the codebook used by this batch

    @property
    def total_loss(self) -> Tensor:
        return self.loss + self.quant_loss


class LAQ(nn.Module):
    """Latent action quantizer (LAPA's ``LatentActionQuantization``); see the module docstring."""

    def __init__(self, cfg: LAQModelConfig):
        super().__init__()
        _validate(cfg)
        self.cfg = cfg
        p, C, D = cfg.patch_size, cfg.channels, cfg.dim
        self.grid = cfg.image_size // p  # g, patches per side
        self.num_patches = self.grid**2  # N
        patch_dim = C * p * p
        self.patch_embed = nn.Sequential(
            nn.LayerNorm(patch_dim), nn.Linear(patch_dim, D), nn.LayerNorm(D)
        )
        self.pos_bias = ContinuousPositionBias(cfg, self.grid)
        self.spatial = nn.ModuleList([Block(cfg, "space") for _ in range(cfg.spatial_depth)])
        self.spatial_norm = nn.LayerNorm(D, bias=False)
        self.temporal = nn.ModuleList([Block(cfg, "time") for _ in range(cfg.temporal_depth)])
        self.temporal_norm = nn.LayerNorm(D, bias=False)
        self.action = ActionEncoder(cfg, self.grid)
        self.quantizer: Quantizer = build_quantizer(cfg)
        self.decoder = nn.ModuleList(
            [Block(cfg, "space", cross=True) for _ in range(cfg.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(D, bias=False)
        self.to_pixels = nn.Linear(D, patch_dim)
        if cfg.decode_residual:  # start at "nothing moved": recon = frame t
            nn.init.zeros_(self.to_pixels.weight)
            nn.init.zeros_(self.to_pixels.bias)

    # ---- pixels <-> patches ----
    def patchify(self, img: Tensor) -> Tensor:
        B, C, H, W = img.shape  # (B, C, H, W)
        g, p = self.grid, self.cfg.patch_size
        x = img.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, C, p, p)
        return x.reshape(B, g * g, C * p * p)  # (B, N, C*p*p)

    def unpatchify(self, x: Tensor) -> Tensor:
        B = x.shape[0]  # (B, N, C*p*p)
        g, p, C = self.grid, self.cfg.patch_size, self.cfg.channels
        x = x.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
        return x.reshape(B, C, g * p, g * p)  # (B, C, H, W)

    def embed(self, frames: Tensor) -> Tensor:
        B, T = frames.shape[:2]  # (B, T, C, H, W)
        x = self.patchify(frames.flatten(0, 1))  # (B*T, N, C*p*p)
        return self.patch_embed(x).view(B, T, self.num_patches, -1)  # (B, T, N, D)

    # ---- encoder / decoder ----
    def encode(self, tokens: Tensor, attn_bias: Tensor) -> Tensor:
        x = tokens  # (B, 2, N, D)
        for blk in self.spatial:
            x = blk(x, self.grid, attn_bias=attn_bias)  # (B, 2, N, D)
        x = self.spatial_norm(x)
        for blk in self.temporal:
            x = blk(x, self.grid)  # (B, 2, N, D)
        return self.temporal_norm(x)  # (B, 2, N, D)

    def decode(
        self, first_frame: Tensor, first_tokens: Tensor, actions: Tensor, attn_bias: Tensor
    ) -> Tensor:
        x = first_tokens.unsqueeze(1)  # (B, 1, N, D) patch embedding of frame t
        for blk in self.decoder:
            x = blk(x, self.grid, attn_bias=attn_bias, context=actions)  # actions (B, L, D)
        x = self.decoder_norm(x.squeeze(1))  # (B, N, D)
        out = self.unpatchify(self.to_pixels(x))  # (B, C, H, W)
        if self.cfg.decode_residual:  # the decoder predicts the change from frame t
            out = out + first_frame  # under bf16 autocast: promoted to frame t's float32
        return out  # (B, C, H, W)

    def forward(self, frames: Tensor) -> LAQOutput:
        """frames: (B, 2, C, H, W) in [0, 1], frame t then frame t+k."""
        attn_bias = self.pos_bias()  # (1, H, N, N)
        tokens = self.embed(frames)  # (B, 2, N, D)
        enc = self.encode(tokens, attn_bias)  # (B, 2, N, D)
        z_pre = self.action(enc)  # (B, L, Dq)
        q = self.quantizer(z_pre)  # quantized (B, L, Dq), indices (B, L)
        actions = self.action.proj_out(q.quantized)  # (B, L, D)
        # LAPA decodes from the (detached) patch embedding of frame t, not from its encoding
        recon = self.decode(frames[:, 0], tokens[:, 0].detach(), actions, attn_bias)
        loss = F.mse_loss(recon.float(), frames[:, 1].float())
        return LAQOutput(
            recon=recon,
            loss=loss,
            indices=q.indices,
            z_pre=z_pre.float(),
            quant_loss=q.loss,
            perplexity=q.perplexity,
            used_fraction=q.used_fraction,
        )

    # ---- labelling and generation ----
    def encode_actions(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Latent action codes of frame pairs (B, 2, C, H, W) -> indices (B, L), z_pre (B, L, Dq).

        Runs the encoder and quantizer only. Call it in eval mode for labelling: in training mode
        the quantizer updates its statistics exactly as in forward.
        """
        tokens = self.embed(frames)  # (B, 2, N, D)
        z_pre = self.action(self.encode(tokens, self.pos_bias()))  # (B, L, Dq)
        return self.quantizer(z_pre).indices, z_pre.float()

    def decode_with_indices(self, first_frame: Tensor, indices: Tensor) -> Tensor:
        """Predict frame t+k from frame t (B, C, H, W) and latent action codes (B, L)."""
        codes = self.quantizer.indices_to_codes(indices)  # (B, L, Dq)
        actions = self.action.proj_out(codes.to(self.action.proj_out.weight.dtype))  # (B, L, D)
        first = self.embed(first_frame.unsqueeze(1))[:, 0]  # (B, N, D)
        return self.decode(first_frame, first, actions, self.pos_bias())  # (B, C, H, W)

    def replace_unused_codebooks(self, num_batches: int) -> int:
        """Dead-code restarts of the quantizer (NSVQ; a no-op otherwise); returns how many."""
        return self.quantizer.replace_unused_codebooks(num_batches)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _validate(cfg: LAQModelConfig) -> None:
    if cfg.image_size % cfg.patch_size:
        raise ValueError(
            f"image_size={cfg.image_size} is not a multiple of patch_size={cfg.patch_size}"
        )
    if cfg.quantizer not in QUANTIZERS:
        raise ValueError(f"quantizer={cfg.quantizer!r} is not one of {list(QUANTIZERS)}")
    if cfg.code_seq_len < 1 or cfg.codebook_size < 1:
        raise ValueError("code_seq_len and codebook_size must be >= 1")


def maybe_compile(model: LAQ, cfg: LAQModelConfig) -> LAQ:
    """``torch.compile`` the model's forward in place when ``cfg.compile`` is set.

    Uses ``nn.Module.compile`` so the same module comes back and state_dict keys stay free of
    the ``_orig_mod.`` prefix (checkpoints load into compiled and eager models alike).
    """
    if cfg.compile:
        model.compile()
    return model


def to_model_input(frames: Tensor, image_size: int) -> Tensor:
    """uint8 (B, 2, H, W, 3) frame pairs -> float (B, 2, 3, S, S) in [0, 1], resized when
    H != S: the LAQ's input, shared by training, labelling and the report."""
    x = frames.permute(0, 1, 4, 2, 3).float().div_(255)  # (B, 2, 3, H, W)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        B = x.shape[0]
        x = F.interpolate(
            x.flatten(0, 1),
            size=(image_size, image_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        ).unflatten(0, (B, 2))
    return x
