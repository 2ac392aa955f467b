"""The latent-action VLA: a Hugging Face vision-language model that predicts LAQ codes.

Implements the pretraining objective of LAPA (Ye et al., 2024, "Latent Action Pretraining from
Videos", https://arxiv.org/abs/2410.11758) and UniVLA (Bu et al., 2025,
https://arxiv.org/abs/2505.06111): the latent actions of stage 1 become ``codebook_size`` new
tokens ``<ACT_0>`` ... ``<ACT_{K-1}>``, and the model learns to write the ``code_seq_len`` code
tokens of the pair (t, t+k) after a prompt made of frame t and the instruction.

    sequence (left-padded):  [pad ... pad | prompt with image tokens | <ACT_c1> ... <ACT_cL>]
    loss:                    cross-entropy on the L code tokens only (full vocabulary softmax)
    inference:               L greedy steps with every non-code logit masked out: codes (B, L)
                             and their probability among the code tokens

Left padding puts the L code tokens at the same positions for every sample, so the logits of
the last L + 1 positions (``logits_to_keep``) are all the loss needs: no (B, T, V) tensor.

The vocabulary (K, L) is read from the LAQ checkpoint that made the labels
(:func:`hlrp.laq.export.laq_vocabulary`), never from a config. New embedding rows (input and
output) start at the mean of the existing rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hlrp.foundation.families import Family, check_backbone, family_of

META_FILE = "hlrp_foundation.json"


def action_token(i: int) -> str:
    return f"<ACT_{i}>"


@dataclass
class VLAMeta:
    """What a saved foundation model adds to the backbone's own files (``hlrp_foundation.json``)."""

    family: str
    codebook_size: int
    code_seq_len: int
    action_token_ids: list[int]
    laq_hash: str = ""
    labels_key: str = ""
    backbone: str = ""
    global_step: int = 0
    max_text_tokens: int = 0  # instructions cut to this many tokens (0: never)


def _dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    if name in ("float32", "fp32", "32-true"):
        return torch.float32
    if name in ("bfloat16", "bf16"):
        return torch.bfloat16
    if name in ("float16", "fp16"):
        return torch.float16
    raise ValueError(f"foundation.model.dtype={name!r}: choose float32, bfloat16 or float16")


class LatentActionVLA(nn.Module):
    """A backbone with the latent action vocabulary; ``forward`` gives the code logits."""

    def __init__(self, backbone: nn.Module, processor: Any, family: Family, meta: VLAMeta):
        super().__init__()
        self.backbone = backbone
        self.processor = processor
        self.family = family
        self.meta = meta
        self.register_buffer(
            "action_ids", torch.tensor(meta.action_token_ids, dtype=torch.long), persistent=False
        )

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_backbone(
        cls,
        backbone: str,
        codebook_size: int,
        code_seq_len: int,
        dtype: str = "float32",
        attn_implementation: str | None = None,
        **meta: Any,
    ) -> LatentActionVLA:
        """Load ``backbone`` (hub id or folder) and add ``codebook_size`` action tokens."""
        model, processor, family = load_backbone(backbone, dtype, attn_implementation)
        ids = add_action_tokens(model, processor.tokenizer, codebook_size)
        vmeta = VLAMeta(family.name, codebook_size, code_seq_len, ids, backbone=backbone, **meta)
        return cls(model, processor, family, vmeta)

    @classmethod
    def from_saved(cls, folder: str | os.PathLike, dtype: str = "float32") -> LatentActionVLA:
        """A foundation model saved by :meth:`save` (stage 3 and the report load this)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        folder = Path(folder)
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise ValueError(f"{folder} is not a saved foundation model: it has no {META_FILE}")
        meta = VLAMeta(**json.loads(meta_path.read_text()))
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=_dtype(dtype))
        tok = processor.tokenizer
        found = tok.convert_tokens_to_ids([action_token(i) for i in range(meta.codebook_size)])
        if found != meta.action_token_ids:
            raise ValueError(f"{folder}: the tokenizer's action tokens differ from {META_FILE}")
        family = family_of(model.config.model_type, str(folder))
        return cls(model, _left_padded(processor), family, meta)

    def save(self, folder: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None):
        """``save_pretrained`` of backbone and processor, plus :class:`VLAMeta` (not atomic:
        callers write into a temporary folder and rename it)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(folder, state_dict=state_dict)
        self.processor.save_pretrained(folder)
        (folder / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2))

    # ---------------------------------------------------------------- model
    @property
    def code_seq_len(self) -> int:
        return self.meta.code_seq_len

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, L, V) of the L code tokens at the end of ``batch`` (teacher forcing)."""
        L = self.code_seq_len
        inputs = {k: v for k, v in batch.items() if k not in ("codes",)}
        out = self.backbone(**inputs, logits_to_keep=L + 1, use_cache=False)
        return out.logits[:, :-1]  # (B, L, V): position j predicts code j

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the code tokens; token and whole-sequence accuracy (argmax among
        the code tokens, teacher-forced)."""
        logits = self(batch).float()  # (B, L, V)
        codes = batch["codes"]  # (B, L) in [0, K)
        targets = self.action_ids[codes]  # (B, L) token ids
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        with torch.no_grad():
            pred = logits[..., self.action_ids].argmax(-1)  # (B, L) in [0, K)
            hit = (pred == codes).float()
            stats = {"token_acc": hit.mean(), "seq_acc": hit.prod(-1).mean()}
        return loss, stats

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Constrained greedy generation: codes (B, L) in [0, K) and their probabilities (B, L)
        among the K code tokens. ``batch`` holds the prompt only (no codes appended)."""
        inputs = {k: v for k, v in batch.items() if k != "codes"}
        return constrained_generate(
            self.backbone, self.processor.tokenizer, inputs, self.action_ids, self.code_seq_len
        )


@torch.no_grad()
def constrained_generate(
    backbone: nn.Module,
    tokenizer: Any,
    inputs: dict[str, torch.Tensor],
    allowed: torch.Tensor,
    n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` greedy tokens after the prompt in ``inputs`` with every token outside ``allowed``
    (ids, (K,)) masked out. Returns their indices in ``allowed`` (B, n) and their probabilities
    among the allowed tokens (B, n)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class OnlyAllowed(LogitsProcessor):
        def __call__(self, input_ids, scores):
            mask = torch.full_like(scores, float("-inf"))
            mask[:, allowed] = 0
            return scores + mask

    out = backbone.generate(
        **inputs,
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        num_beams=1,
        logits_processor=LogitsProcessorList([OnlyAllowed()]),
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out.sequences[:, -n:]  # (B, n) token ids
    lookup = torch.full((int(allowed.max()) + 1,), -1, dtype=torch.long, device=new.device)
    lookup[allowed] = torch.arange(len(allowed), device=new.device)
    index = lookup[new]
    if (index < 0).any():
        raise RuntimeError("constrained generation produced a token outside the allowed set")
    scores = torch.stack(out.scores, 1).float()  # (B, n, V), masked
    probs = scores[..., allowed].softmax(-1).gather(-1, index[..., None])[..., 0]
    return index, probs


def load_backbone(
    backbone: str, dtype: str = "float32", attn_implementation: str | None = None
) -> tuple[nn.Module, Any, Family]:
    """A backbone (hub id or folder) as ``AutoModelForImageTextToText``, its processor (left
    padding) and its family."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    check_backbone(backbone)
    config = AutoConfig.from_pretrained(backbone)
    family = family_of(config.model_type, backbone)
    processor = AutoProcessor.from_pretrained(backbone)
    kw: dict[str, Any] = {"dtype": _dtype(dtype)}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(backbone, **kw)
    return model, _left_padded(processor), family


def append_tokens(batch: dict[str, torch.Tensor], tokens: torch.Tensor) -> None:
    """Teacher forcing: put ``tokens`` (B, N) after the (left-padded) prompt in ``batch``, and
    extend the masks the families use (attention 1, token type 1, multimodal type 0: text)."""
    B, N = tokens.shape
    batch["input_ids"] = torch.cat([batch["input_ids"], tokens], 1)
    fill = {"attention_mask": 1, "token_type_ids": 1, "mm_token_type_ids": 0}
    for key, value in fill.items():
        if key in batch:
            t = batch[key]
            batch[key] = torch.cat([t, torch.full((B, N), value, dtype=t.dtype)], 1)


def _left_padded(processor: Any) -> Any:
    processor.tokenizer.padding_side = "left"
    return processor


def add_action_tokens(model: nn.Module, tokenizer: Any, codebook_size: int) -> list[int]:
    """Add ``<ACT_0>`` ... ``<ACT_{K-1}>`` to the tokenizer and the model's embeddings; new
    input and output rows start at the mean of the existing ones. Returns their ids."""
    return add_tokens(model, tokenizer, [action_token(i) for i in range(codebook_size)])


def add_tokens(model: nn.Module, tokenizer: Any, names: list[str]) -> list[int]:
    """Add the special tokens ``names`` to the tokenizer and the model's embeddings (all or
    none may be present already); new input and output rows start at the mean of the
    existing ones. Returns their ids."""
    present = [n for n in names if n in tokenizer.get_vocab()]
    if present and len(present) != len(names):
        raise ValueError(
            f"the backbone's tokenizer has {len(present)} of {len(names)} of the tokens "
            f"{names[0]}...: it was saved with another vocabulary size"
        )
    if not present:
        tokenizer.add_tokens(names, special_tokens=True)
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(names)]
    if present:
        return ids
    rows = model.get_input_embeddings().weight.shape[0]
    if max(ids) >= rows:  # else the new ids fall in unused rows (hub models pad their vocab)
        model.resize_token_embeddings(max(ids) + 1, mean_resizing=False)
    first = min(ids)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[ids] = emb[:first].mean(0, keepdim=True).to(emb.dtype)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[ids] = out.weight[:first].mean(0, keepdim=True).to(out.weight.dtype)
            if getattr(out, "bias", None) is not None:
                out.bias[ids] = out.bias[:first].mean()
    return [int(i) for i in ids]


#: Module names of the vision towers of the supported families (frozen by freeze_vision).
VISION_MODULES = ("vision_model", "vision_tower", "visual")


def adapt_backbone(
    backbone: nn.Module,
    *,
    freeze_vision: bool = False,
    lora_rank: int = 0,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    gradient_checkpointing: bool = False,
    train_token_ids: list[int] | tuple[int, ...] = (),
    modules_to_save: tuple[str, ...] = (),
) -> nn.Module:
    """Freeze the vision tower, put LoRA adapters (peft) on the language model's projections
    (the rows ``train_token_ids`` of the input embeddings and ``modules_to_save`` train in
    full), turn on gradient checkpointing; parameters that train become fp32 master weights.
    Returns the (possibly peft-wrapped) backbone. Both training stages use this."""
    if freeze_vision:
        frozen = 0
        for name, p in backbone.named_parameters():
            if any(f".{v}." in f".{name}" for v in VISION_MODULES):
                p.requires_grad_(False)
                frozen += 1
        if not frozen:
            raise ValueError("model.freeze_vision=true but no vision tower parameters were found")
    if lora_rank > 0:
        from peft import LoraConfig, get_peft_model

        lang = r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
        kw: dict[str, Any] = {}
        if train_token_ids:
            kw["trainable_token_indices"] = {"embed_tokens": list(train_token_ids)}
        lcfg = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lang,
            modules_to_save=list(modules_to_save) or None,
            **kw,
        )
        backbone = get_peft_model(backbone, lcfg)
    for p in backbone.parameters():  # what trains keeps fp32 master weights; frozen: model.dtype
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if gradient_checkpointing:
        backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        backbone.config.use_cache = False
    return backbone
