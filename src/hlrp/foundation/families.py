"""Backbone families: what differs between Hugging Face vision-language models, and nothing else.

A family is a small adapter: which ``model_type`` it covers, how a prompt holds the image and the
instruction, and how to build a tiny random-initialised copy offline (tests and the CPU demo).
Everything else (loading, the latent vocabulary, the loss, generation) is shared and goes
through ``transformers``' Auto classes, so a hub id and a local folder take the same path:

    AutoProcessor.from_pretrained(backbone)
    AutoModelForImageTextToText.from_pretrained(backbone)

Supported: SmolVLM (``idefics3``), PaliGemma (``paligemma``), Qwen2-VL and Qwen2.5-VL
(``qwen2_vl``, ``qwen2_5_vl``).

The tiny builders make a byte-level BPE tokenizer with the ``tokenizers`` library (no
download), the family's own image processor and processor, and a model from the family's own
config class at toy sizes, then ``save_pretrained`` all of it to a folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Text the tiny tokenizers are trained on: enough to give short ids to the demo's instructions.
_CORPUS = [
    "open the drawer",
    "close the drawer",
    "press the button from the top",
    "open the door",
    "open the window",
    "pick up the object and place it at the goal",
    "push the block to the target",
    "what action should the robot take to",
    "the quick brown fox jumps over the lazy dog",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?-_'\"()",
]


@dataclass(frozen=True)
class Family:
    """What one family of VLMs needs from us."""

    name: str
    model_types: tuple[str, ...]
    image_placeholder: str  # what the prompt holds where the image goes (the processor expands it)
    hub_examples: tuple[str, ...]

    def prompt(self, instruction: str) -> str:
        """The text given with the image; the latent action tokens follow it directly."""
        text = f"What action should the robot take to {instruction.strip().rstrip('.')}?"
        if self.name == "smolvlm":
            return f"User:{self.image_placeholder}{text}<end_of_utterance>\nAssistant:"
        if self.name == "paligemma":
            # the processor puts the image tokens and <bos> in front and "\n" after the prefix
            return f"{self.image_placeholder}{text}"
        if self.name == "qwen2_vl":
            return (
                "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
                f"{text}<|im_end|>\n<|im_start|>assistant\n"
            )
        raise AssertionError(self.name)

    def processor_kwargs(self) -> dict[str, Any]:
        """Extra arguments of the processor call: SmolVLM's image splitting (up to 17 crops of
        81 tokens each) would multiply the sequence for a 224 px robot frame; one view is
        what LAPA-style pretraining uses."""
        return {"do_image_splitting": False} if self.name == "smolvlm" else {}


FAMILIES: dict[str, Family] = {
    "smolvlm": Family(
        "smolvlm",
        ("idefics3", "smolvlm"),
        "<image>",
        ("HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-Instruct"),
    ),
    "paligemma": Family(
        "paligemma",
        ("paligemma",),
        "<image>",
        ("google/paligemma-3b-pt-224", "google/paligemma2-3b-pt-224"),
    ),
    "qwen2_vl": Family(
        "qwen2_vl",
        ("qwen2_vl", "qwen2_5_vl"),
        "<|image_pad|>",
        ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
    ),
}

#: ``model.backbone`` values that build a tiny random model offline (in the run's folder)
TINY_PREFIX = "tiny-"


def family_of(model_type: str, where: str) -> Family:
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(
        f"{where}: model_type {model_type!r} is not a supported backbone family "
        f"(supported model types: {known}; families: {sorted(FAMILIES)})"
    )


def resolve_backbone(
    backbone: str | None, cache_dir: str | os.PathLike, image_size: int = 64
) -> str:
    """The folder or hub id ``from_pretrained`` gets. ``tiny-<family>`` builds a tiny random
    backbone for ``image_size`` px into ``cache_dir/tiny-<family>-<image_size>`` once (no
    download) and returns that folder."""
    if not backbone:
        raise ValueError(
            "foundation.model.backbone is not set: give a Hugging Face model id (e.g. "
            "HuggingFaceTB/SmolVLM-256M-Instruct), a local folder saved with save_pretrained, "
            f"or one of {[TINY_PREFIX + f for f in FAMILIES]} for a tiny offline model"
        )
    if backbone.startswith(TINY_PREFIX):
        fam = backbone[len(TINY_PREFIX) :]
        if fam not in FAMILIES:
            raise ValueError(
                f"foundation.model.backbone={backbone!r}: no such tiny family "
                f"(choose one of {[TINY_PREFIX + f for f in FAMILIES]})"
            )
        folder = Path(cache_dir) / f"{backbone}-{image_size}"
        if not (folder / "config.json").is_file():
            build_tiny(fam, folder, image_size=image_size)
        return str(folder)
    return backbone


def check_backbone(backbone: str) -> None:
    """A clear error for a backbone that cannot be loaded here, before transformers' own."""
    if os.path.isdir(backbone):
        if not os.path.isfile(os.path.join(backbone, "config.json")):
            raise ValueError(
                f"backbone folder {backbone} has no config.json: save it with "
                "model.save_pretrained(folder) and processor.save_pretrained(folder)"
            )
        return
    if os.path.sep in backbone.strip("/").replace("/", "", 1) or backbone.startswith(("/", ".")):
        raise ValueError(f"backbone {backbone!r}: no such folder")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(backbone, "config.json") is None:
            raise ValueError(
                f"backbone {backbone!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE=1: "
                "download it first (huggingface-cli download "
                f"{backbone}) or point foundation.model.backbone at a local folder"
            )


# --------------------------------------------------------------------------------------
# tiny offline backbones
# --------------------------------------------------------------------------------------
def _over(changes: dict, **base) -> dict:
    """A config dict: the tiny defaults ``base`` with ``changes`` applied."""
    return {**base, **changes}


def _tiny_text(tok, changes: dict, **extra) -> dict:
    """The language model of every tiny backbone: 2 layers, 64 wide, GQA 4/2 heads."""
    return _over(
        changes,
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **extra,
    )


def _tiny_siglip(changes: dict, image_size: int, patch: int, **extra) -> dict:
    """The SigLIP-style vision tower of the tiny SmolVLM and PaliGemma: 2 layers, 32 wide."""
    return _over(
        changes,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        **extra,
    )


def _tokenizer(special: list[str], vocab_size: int = 600, **named: str):
    """A byte-level BPE tokenizer trained on a few sentences: any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _build_smolvlm(image_size: int, text: dict, vision: dict):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    special = ["<|endoftext|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    special += ["<global-img>"]
    tok = _tokenizer(
        special,
        bos_token="<|endoftext|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    patch, scale = 8, 2
    seq_len = (image_size // patch) ** 2 // scale**2
    cfg = Idefics3Config(
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        vision_config=_tiny_siglip(vision, image_size, patch),
        text_config=_tiny_text(tok, text),
        tie_word_embeddings=False,
    )
    img = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    proc = Idefics3Processor(image_processor=img, tokenizer=tok, image_seq_len=seq_len)
    return Idefics3ForConditionalGeneration(cfg), proc


def _build_paligemma(image_size: int, text: dict, vision: dict):
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    tok = _tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        # named, so the processor finds it and adds no image token of its own
        extra_special_tokens={"image_token": "<image>"},
    )
    patch = 8
    num_image_tokens = (image_size // patch) ** 2
    img = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_seq_length=num_image_tokens,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    img.image_seq_length = num_image_tokens
    proc = PaliGemmaProcessor(image_processor=img, tokenizer=tok)
    tok = proc.tokenizer  # may have grown (PaliGemma's location / segmentation tokens)
    cfg = PaliGemmaConfig(
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_config=_tiny_siglip(
            vision, image_size, patch, projection_dim=text.get("hidden_size", 64)
        ),
        text_config=_tiny_text(
            tok, text, head_dim=text.get("hidden_size", 64) // text.get("num_attention_heads", 4)
        ),
        projection_dim=text.get("hidden_size", 64),
        hidden_size=text.get("hidden_size", 64),
        vocab_size=len(tok),
    )
    return PaliGemmaForConditionalGeneration(cfg), proc


def _build_qwen2_vl(image_size: int, text: dict, vision: dict):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>"]
    special += ["<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _tokenizer(
        special, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    side = max(28, image_size // 28 * 28)
    img = Qwen2VLImageProcessor(
        min_pixels=side * side, max_pixels=side * side, patch_size=14, merge_size=2
    )
    try:
        from transformers import Qwen2VLVideoProcessor

        video = Qwen2VLVideoProcessor()
    except ImportError:  # older transformers: the processor makes its own
        video = None
    proc = Qwen2VLProcessor(image_processor=img, tokenizer=tok, video_processor=video)
    ids = tok.convert_tokens_to_ids
    head_dim = text.get("hidden_size", 64) // text.get("num_attention_heads", 4)
    cfg = Qwen2VLConfig(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        vision_config=_over(
            vision,
            depth=2,
            embed_dim=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            hidden_size=text.get("hidden_size", 64),
        ),
        text_config=_tiny_text(
            tok,
            text,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": _mrope_section(head_dim),  # sums to head_dim / 2
            },
        ),
        tie_word_embeddings=False,
    )
    return Qwen2VLForConditionalGeneration(cfg), proc


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's split of the rotary half-dimension into (time, height, width): 16/24/24
    of 64 at full size, the same proportions here."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


_TINY = {"smolvlm": _build_smolvlm, "paligemma": _build_paligemma, "qwen2_vl": _build_qwen2_vl}


def build_tiny(
    family: str,
    folder: str | os.PathLike,
    image_size: int = 64,
    seed: int = 0,
    text: dict | None = None,
    vision: dict | None = None,
) -> Path:
    """A tiny random ``family`` backbone (model, tokenizer, processor) saved to ``folder``,
    loadable with ``from_pretrained(folder)`` exactly like a hub checkpoint. Atomic: built in
    a temporary folder next to ``folder``, then renamed. ``text`` / ``vision`` change the
    language model's / vision tower's config fields (the benchmark builds ~0.5 B models)."""
    import shutil
    import tempfile

    import torch

    if family not in _TINY:
        raise ValueError(f"no tiny builder for family {family!r} (choose one of {sorted(_TINY)})")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model, proc = _TINY[family](image_size, dict(text or {}), dict(vision or {}))
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        proc.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
