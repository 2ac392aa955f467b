"""Stage 3's policy: a vision-language model with an action head, from frame and instruction
to a chunk of H continuous actions.

Three heads, chosen by ``low_level.model.head``:

``l1_chunk``  (UniVLA, Bu et al. 2025, https://arxiv.org/abs/2505.06111; ACT's chunks)
    An MLP on the VLM's last hidden state at the end of the prompt (and the proprioceptive
    state) regresses the whole chunk (H, D) of normalised actions; L1 loss.
``flow``  (pi0, Black et al. 2024, https://arxiv.org/abs/2410.24164)
    Flow matching over the chunk: an MLP predicts the velocity ``a - noise`` of the straight
    path ``x_t = (1 - t) noise + t a`` from (features, state, x_t, t); inference integrates
    ``low_level.model.flow_steps`` Euler steps from Gaussian noise.
``bins``  (LAPA, Ye et al. 2024, https://arxiv.org/abs/2410.11758; OpenVLA's tokens)
    Every action dimension is cut into ``bins`` quantile bins (edges from the finetuning data);
    the VLM writes H x D tokens ``<BIN_i>`` after the prompt (cross-entropy, teacher forcing)
    and generates them greedily with every other token masked out. Bin centres decode them.

    sequence (left-padded):  [pad ... | prompt with image tokens | <BIN_b11> ... <BIN_bHD>]

Actions are normalised (``mean_std``: (a - mean) / std; ``quantile``: q01..q99 to [-1, 1])
with the statistics of the finetuning episodes, which are saved with the policy and undone at
inference. The saved policy (``policy/``) is the backbone's ``save_pretrained`` folder (LoRA
merged), ``head.safetensors`` and ``hlrp_policy.json`` (:class:`PolicyMeta`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hlrp.foundation.export import (
    META_FILE as FOUNDATION_META,
)
from hlrp.foundation.export import (
    Family,
    add_tokens,
    append_tokens,
    constrained_generate,
    family_of,
    load_backbone,
    load_foundation,
)

POLICY_FILE = "hlrp_policy.json"
HEAD_FILE = "head.safetensors"
HEADS = ("l1_chunk", "flow", "bins")
NORMALIZATIONS = ("mean_std", "quantile")


def bin_token(i: int) -> str:
    return f"<BIN_{i}>"


# --------------------------------------------------------------------------------------
# what a saved policy carries besides the backbone
# --------------------------------------------------------------------------------------
@dataclass
class PolicyMeta:
    """``hlrp_policy.json``: the head, the action space and its statistics, the provenance."""

    head: str
    chunk: int  # H
    action_dim: int  # D
    state_dim: int  # P (0: no state input)
    family: str
    stats: dict[str, dict[str, list[float]]]  # "action" (and "state"): mean, std, q01, q99...
    normalization: str = "mean_std"
    hidden: int = 256
    head_layers: int = 2
    flow_steps: int = 10
    bins: int = 256
    bin_edges: list[list[float]] = field(default_factory=list)  # (D, bins + 1), normalised
    bin_token_ids: list[int] = field(default_factory=list)
    max_text_tokens: int = 0
    image_size: int = 224  # the size episodes were stored at
    fps: float = 0.0  # of the finetuning episodes: one action per frame
    init: str = ""  # what finetuning started from: scratch | a foundation or policy folder
    variant: str = ""
    tasks: list[str] = field(default_factory=list)
    global_step: int = 0


class Normalizer:
    """Actions (or states) to the head's scale and back, from saved statistics."""

    def __init__(self, kind: str, stats: dict[str, list[float]]):
        if kind not in NORMALIZATIONS:
            raise ValueError(f"model.normalization={kind!r}: choose one of {NORMALIZATIONS}")
        self.kind = kind
        if kind == "mean_std":
            self.shift = np.asarray(stats["mean"], dtype=np.float32)
            self.scale = np.maximum(np.asarray(stats["std"], dtype=np.float32), 1e-6)
        else:  # q01 -> -1, q99 -> +1
            lo = np.asarray(stats["q01"], dtype=np.float32)
            hi = np.asarray(stats["q99"], dtype=np.float32)
            self.shift = (hi + lo) / 2
            self.scale = np.maximum((hi - lo) / 2, 1e-6)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float32) - self.shift) / self.scale
        return np.clip(y, -1.0, 1.0) if self.kind == "quantile" else y

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float32) * self.scale + self.shift


class BinTokenizer:
    """Per-dimension quantile bins over normalised actions (LAPA: 256 per dimension).

    ``edges`` (D, bins + 1) are the quantiles 0, 1/bins, ..., 1 of the finetuning actions;
    a value falls in bin ``i`` when ``edges[i] <= x < edges[i + 1]`` (outside: the first or
    last bin); a bin decodes to its centre, so a value inside the data's range comes back
    within one bin width.
    """

    def __init__(self, edges: np.ndarray | Sequence[Sequence[float]]):
        self.edges = np.asarray(edges, dtype=np.float64)  # (D, bins + 1)
        self.bins = self.edges.shape[1] - 1
        self.centres = (self.edges[:, :-1] + self.edges[:, 1:]) / 2  # (D, bins)

    @classmethod
    def fit(cls, actions: np.ndarray, bins: int) -> BinTokenizer:
        """Edges from the (N, D) normalised actions of the finetuning data."""
        q = np.linspace(0.0, 1.0, bins + 1)
        return cls(np.quantile(np.asarray(actions, dtype=np.float64), q, axis=0).T)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(..., D) values -> (..., D) bin indices in [0, bins)."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty(x.shape, dtype=np.int64)
        for d in range(self.edges.shape[0]):
            idx = np.searchsorted(self.edges[d], x[..., d], side="right") - 1
            out[..., d] = np.clip(idx, 0, self.bins - 1)
        return out

    def decode(self, idx: np.ndarray) -> np.ndarray:
        """(..., D) bin indices -> (..., D) bin centres."""
        idx = np.asarray(idx, dtype=np.int64)
        return np.stack(
            [self.centres[d][idx[..., d]] for d in range(self.edges.shape[0])], -1
        ).astype(np.float32)


# --------------------------------------------------------------------------------------
# heads
# --------------------------------------------------------------------------------------
def mlp(inp: int, hidden: int, out: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.GELU()]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


class L1ChunkHead(nn.Module):
    """features (B, F) -> chunk (B, H, D); masked L1 to the normalised actions."""

    def __init__(self, features: int, meta: PolicyMeta):
        super().__init__()
        self.H, self.D = meta.chunk, meta.action_dim
        self.net = mlp(features, meta.hidden, self.H * self.D, meta.head_layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats).view(-1, self.H, self.D)  # (B, H, D)

    def loss(self, feats: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        err = (self(feats) - actions).abs().mean(-1)  # (B, H)
        return (err * mask).sum() / mask.sum().clamp(min=1)

    def sample(self, feats: torch.Tensor) -> torch.Tensor:
        return self(feats)


class FlowHead(nn.Module):
    """Flow matching over the chunk: v(x_t, t | features) ~ a - noise (B, H, D)."""

    def __init__(self, features: int, meta: PolicyMeta):
        super().__init__()
        self.H, self.D, self.steps = meta.chunk, meta.action_dim, meta.flow_steps
        self.time_dim = 32
        self.net = mlp(
            features + self.H * self.D + self.time_dim,
            meta.hidden,
            self.H * self.D,
            meta.head_layers,
        )

    def _time(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, time_dim) sinusoidal
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
        ang = t[:, None] * freqs[None] * 100.0
        return torch.cat([ang.sin(), ang.cos()], -1)

    def velocity(self, feats: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        inp = torch.cat([feats, x.flatten(1), self._time(t)], -1)
        return self.net(inp).view(-1, self.H, self.D)

    def loss(self, feats: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(actions)
        t = torch.rand(actions.shape[0], device=actions.device)
        x = (1 - t)[:, None, None] * noise + t[:, None, None] * actions
        err = (self.velocity(feats, x, t) - (actions - noise)).pow(2).mean(-1)  # (B, H)
        return (err * mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def sample(self, feats: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        B = feats.shape[0]
        x = torch.randn((B, self.H, self.D), generator=generator).to(feats)
        dt = 1.0 / self.steps
        for i in range(self.steps):
            t = torch.full((B,), i * dt, device=feats.device, dtype=feats.dtype)
            x = x + dt * self.velocity(feats, x, t)
        return x


# --------------------------------------------------------------------------------------
# model inputs (module functions: the data loader's workers call them without the model)
# --------------------------------------------------------------------------------------
def prompt_inputs(
    processor: Any,
    family: Family,
    meta: PolicyMeta,
    images: Sequence[np.ndarray],
    instructions: Sequence[str],
) -> dict[str, torch.Tensor]:
    """Processor outputs (left-padded) for frames (uint8 (S, S, 3)) and instructions."""
    from PIL import Image

    pil = [Image.fromarray(np.asarray(im)) for im in images]
    texts = [family.prompt(_cut(processor, t, meta.max_text_tokens)) for t in instructions]
    batch = dict(
        processor(
            images=[[im] for im in pil] if family.name == "smolvlm" else pil,
            text=texts,
            padding="longest",
            return_tensors="pt",
            **family.processor_kwargs(),
        )
    )
    batch.pop("labels", None)
    return batch


def _cut(processor: Any, text: str, n: int) -> str:
    """``text`` cut to ``n`` tokens (0: never)."""
    if n <= 0:
        return text
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= n else processor.tokenizer.decode(ids[:n])


def append_bin_tokens(batch: dict[str, torch.Tensor], token_ids: Sequence[int], idx) -> None:
    """Teacher forcing for ``bins``: the (B, H*D) bin indices as tokens after the prompt."""
    append_tokens(batch, torch.as_tensor(list(token_ids), dtype=torch.long)[torch.as_tensor(idx)])


# --------------------------------------------------------------------------------------
# the policy
# --------------------------------------------------------------------------------------
class VLAPolicy(nn.Module):
    """A VLM backbone, its processor and an action head (see the module docstring)."""

    def __init__(self, backbone: nn.Module, processor: Any, family: Family, meta: PolicyMeta):
        super().__init__()
        if meta.head not in HEADS:
            raise ValueError(f"model.head={meta.head!r}: choose one of {HEADS}")
        self.backbone, self.processor, self.family, self.meta = backbone, processor, family, meta
        hidden = backbone.config.get_text_config().hidden_size
        self.normalizer = Normalizer(meta.normalization, meta.stats["action"])
        self.state_norm = (
            Normalizer("mean_std", meta.stats["state"]) if meta.state_dim > 0 else None
        )
        feats = hidden
        self.state_proj: nn.Module | None = None
        if meta.state_dim > 0 and meta.head != "bins":
            self.state_proj = nn.Linear(meta.state_dim, hidden)
        self.head: nn.Module | None = None
        if meta.head == "l1_chunk":
            self.head = L1ChunkHead(feats, meta)
        elif meta.head == "flow":
            self.head = FlowHead(feats, meta)
        else:
            self.bins = BinTokenizer(meta.bin_edges)
            self.register_buffer(
                "bin_ids", torch.tensor(meta.bin_token_ids, dtype=torch.long), persistent=False
            )

    # ---------------------------------------------------------------- construction
    @classmethod
    def create(
        cls,
        init: str,
        meta: PolicyMeta,
        backbone: str | None = None,
        dtype: str = "float32",
        attn_implementation: str | None = None,
        train_actions: np.ndarray | None = None,
    ) -> VLAPolicy:
        """A new policy. ``init``: ``scratch`` (the VLM ``backbone`` as it is, no latent
        pretraining), a foundation model folder (stage 2's ``model/``) or a policy folder
        (its backbone, and its head when the head and action space match).
        ``train_actions`` (N, D), normalised, give the bin edges of the ``bins`` head."""
        init_path = Path(init)
        saved_policy: VLAPolicy | None = None
        if init == "scratch":
            if not backbone:
                raise ValueError("init=scratch needs the backbone (foundation.model.backbone)")
            model, processor, family = load_backbone(backbone, dtype, attn_implementation)
        elif (init_path / FOUNDATION_META).is_file():
            vla = load_foundation(init_path, dtype=dtype)
            model, processor, family = vla.backbone, vla.processor, vla.family
            meta.max_text_tokens = vla.meta.max_text_tokens
        elif (init_path / POLICY_FILE).is_file():
            saved_policy = cls.load(init_path, dtype=dtype)
            model, processor, family = (
                saved_policy.backbone,
                saved_policy.processor,
                saved_policy.family,
            )
        else:
            raise FileNotFoundError(
                f"init={init!r}: neither 'scratch' nor a folder holding a foundation model "
                f"({FOUNDATION_META}, rule train_foundation) or a policy ({POLICY_FILE})"
            )
        meta.family = family.name
        if meta.head == "bins":
            if saved_policy is not None and saved_policy.meta.bin_edges:
                meta.bin_edges = saved_policy.meta.bin_edges
            elif train_actions is not None:
                meta.bin_edges = BinTokenizer.fit(train_actions, meta.bins).edges.tolist()
            else:
                raise ValueError("head=bins needs the finetuning actions for its bin edges")
            names = [bin_token(i) for i in range(meta.bins)]
            meta.bin_token_ids = add_tokens(model, processor.tokenizer, names)
        policy = cls(model, processor, family, meta)
        if saved_policy is not None:
            policy.load_head_from(saved_policy)
        return policy

    def load_head_from(self, other: VLAPolicy) -> None:
        """Take ``other``'s head (and state projection) when they have the same shapes."""
        same = (
            other.meta.head == self.meta.head
            and other.meta.chunk == self.meta.chunk
            and other.meta.action_dim == self.meta.action_dim
            and other.meta.state_dim == self.meta.state_dim
        )
        if same and self.head is not None and other.head is not None:
            self.head.load_state_dict(other.head.state_dict())
            if self.state_proj is not None and other.state_proj is not None:
                self.state_proj.load_state_dict(other.state_proj.state_dict())

    @classmethod
    def load(cls, folder: str | os.PathLike, dtype: str = "float32") -> VLAPolicy:
        """A policy saved by :meth:`save`."""
        from safetensors.torch import load_file
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = Path(folder)
        if not (folder / POLICY_FILE).is_file():
            raise FileNotFoundError(f"{folder} is not a saved policy: it has no {POLICY_FILE}")
        meta = PolicyMeta(**json.loads((folder / POLICY_FILE).read_text()))
        processor = AutoProcessor.from_pretrained(folder)
        processor.tokenizer.padding_side = "left"
        torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(dtype)
        if torch_dtype is None:
            raise ValueError(f"dtype={dtype!r}: choose float32 or bfloat16")
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch_dtype)
        family = family_of(model.config.model_type, str(folder))
        policy = cls(model, processor, family, meta)
        extra = load_file(folder / HEAD_FILE) if (folder / HEAD_FILE).is_file() else {}
        if extra:
            missing, unexpected = policy.load_state_dict(extra, strict=False)
            if unexpected:
                raise ValueError(f"{folder / HEAD_FILE}: unexpected tensors {unexpected[:5]}")
        return policy

    def head_state(self) -> dict[str, torch.Tensor]:
        """The tensors outside the backbone (head, state projection)."""
        return {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("backbone.")
        }

    def save(self, folder: str | os.PathLike) -> None:
        """Backbone and processor (``save_pretrained``), head, :class:`PolicyMeta` (not atomic:
        callers write into a temporary folder and rename it)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder)
        self.processor.save_pretrained(folder)
        head = self.head_state()
        if head:
            save_file(head, folder / HEAD_FILE)
        (folder / POLICY_FILE).write_text(json.dumps(asdict(self.meta), indent=2))

    # ---------------------------------------------------------------- inputs
    def prompt_inputs(
        self, images: Sequence[np.ndarray], instructions: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        return prompt_inputs(self.processor, self.family, self.meta, images, instructions)

    # ---------------------------------------------------------------- model
    def _backbone_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        skip = ("actions", "mask", "state", "bin_idx")
        return {k: v for k, v in batch.items() if k not in skip}

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The last layer's hidden state at the prompt's last position (B, F), plus the
        projected state."""
        out = self.backbone(
            **self._backbone_inputs(batch),
            output_hidden_states=True,
            logits_to_keep=1,
            use_cache=False,
        )
        feats = out.hidden_states[-1][:, -1].float()  # (B, F); left padding: last = prompt end
        if self.state_proj is not None and "state" in batch:
            feats = feats + self.state_proj(batch["state"].float())
        return feats

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.meta.head == "bins":
            n = self.meta.chunk * self.meta.action_dim
            out = self.backbone(
                **self._backbone_inputs(batch), logits_to_keep=n + 1, use_cache=False
            )
            logits = out.logits[:, :-1].float()  # (B, N, V): position j predicts token j
            idx = batch["bin_idx"]  # (B, N)
            targets = self.bin_ids[idx]
            mask = batch["mask"].repeat_interleave(self.meta.action_dim, 1)  # (B, N)
            ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            loss = (ce * mask.flatten()).sum() / mask.sum().clamp(min=1)
            with torch.no_grad():
                pred = logits[..., self.bin_ids].argmax(-1)
                acc = ((pred == idx).float() * mask).sum() / mask.sum().clamp(min=1)
            return loss, {"bin_acc": acc}
        assert self.head is not None
        feats = self.features(batch)
        loss = self.head.loss(feats, batch["actions"].float(), batch["mask"].float())
        return loss, {}

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[np.ndarray],
        instructions: Sequence[str],
        state: np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> np.ndarray:
        """Actions (B, H, D) in the robot's units for frames (uint8) and instructions."""
        param = next(self.parameters())
        device = param.device
        # a policy cast to bf16/fp16 for serving: autocast gives each layer its weights' dtype
        # (the state and the heads' noise are float32); the outputs stay float32
        half = param.dtype if param.dtype in (torch.bfloat16, torch.float16) else None
        with torch.autocast(device.type, dtype=half, enabled=half is not None):
            return self._predict(images, instructions, state, generator, device)

    def _predict(self, images, instructions, state, generator, device) -> np.ndarray:
        batch = self.prompt_inputs(images, instructions)
        batch = {k: v.to(device) for k, v in batch.items()}
        H, D = self.meta.chunk, self.meta.action_dim
        if self.meta.head == "bins":
            idx, _ = constrained_generate(
                self.backbone, self.processor.tokenizer, batch, self.bin_ids, H * D
            )
            normed = self.bins.decode(idx.view(-1, H, D).cpu().numpy())
        else:
            if self.state_proj is not None:
                if state is None:
                    raise ValueError("this policy takes the robot's state: pass state (B, P)")
                assert self.state_norm is not None
                batch["state"] = torch.as_tensor(self.state_norm(state), device=device)
            feats = self.features(batch)
            assert self.head is not None
            if isinstance(self.head, FlowHead):
                normed = self.head.sample(feats, generator).float().cpu().numpy()
            else:
                normed = self.head.sample(feats).float().cpu().numpy()
        return self.normalizer.inverse(normed)
