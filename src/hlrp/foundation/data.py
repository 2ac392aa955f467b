"""Stage 2's data: the labelled shards of ``label_latents``, streamed per rank, and the batches
the backbone's own processor makes of them.

Training stream (:class:`LabelStream`): an endless sequence of *segments*. Segment j of rank r
draws ``mix`` shards at random with replacement (``seed, r, j`` seed the draw: resampling, so
every rank takes the same number of steps whatever the shard count), reads their training
pairs (videos not in ``val_split``; JPEG bytes, not decoded) and shuffles them together. The
stream's position is ``(segment, index)``: a checkpoint stores it, and a resumed run rebuilds
that one segment and continues exactly where it stopped, reading at most ``mix`` shards.

Held-out pairs (:func:`held_out`): the pairs of the ``val_split`` videos, in file order (the
same split function as stage 1, :func:`hlrp.data.split.is_val_video`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from hlrp.common.io import file_sha256
from hlrp.data.split import is_val_video
from hlrp.foundation.model import append_tokens


@dataclass
class LabelSet:
    """A labels index (``results/labels/index.json``) checked against the LAQ it came from."""

    index: str
    shards: list[str]
    codebook_size: int
    code_seq_len: int
    laq_hash: str
    labels_key: str
    image_size: int
    pairs: int


def open_labels(index_path: str, laq_ckpt: str | None) -> LabelSet:
    """Read a labels index; with ``laq_ckpt``, refuse labels made by another LAQ or with
    another vocabulary than that checkpoint's (the vocabulary stage 2 adds)."""
    from hlrp.laq.export import laq_vocabulary

    path = Path(index_path)
    if not path.is_file():
        raise FileNotFoundError(f"labels index {path} does not exist (run label_latents first)")
    try:
        index = json.loads(path.read_text())
        shards = [str(path.parent / s["path"]) for s in index["shards"]]
        labels = LabelSet(
            str(path),
            shards,
            int(index["codebook_size"]),
            int(index["code_seq_len"]),
            str(index["laq_hash"]),
            str(index.get("labels_key", "")),
            int(index.get("image_size", 0)),
            int(index.get("totals", {}).get("pairs", 0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a labels index of label_latents ({e!r})") from e
    missing = [s for s in shards if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path}: {len(missing)} labelled shards are missing: {missing[:3]}"
        )
    if laq_ckpt:
        k, seq = laq_vocabulary(laq_ckpt)
        if (k, seq) != (labels.codebook_size, labels.code_seq_len):
            raise ValueError(
                f"{path} has codebook size {labels.codebook_size} x {labels.code_seq_len} codes "
                f"but the LAQ {laq_ckpt} has {k} x {seq}: the labels come from another LAQ; "
                "label the shards again with this checkpoint (rule label_latents)"
            )
        sha = file_sha256(laq_ckpt)
        if sha != labels.laq_hash:
            raise ValueError(
                f"{path} was labelled by the LAQ with sha256 {labels.laq_hash[:16]}..., not by "
                f"{laq_ckpt} ({sha[:16]}...): label the shards again with this checkpoint"
            )
    return labels


def _read_shard(shard: str) -> Iterator[dict[str, Any]]:
    for sample in wds.tariterators.tarfile_samples([{"url": shard}]):
        meta = json.loads(sample["json"])
        item = {"key": sample["__key__"], "jpg": sample["jpg"], "meta": meta}
        if "actions.npy" in sample:
            item["actions"] = np.load(io.BytesIO(sample["actions.npy"]))
        yield item


def held_out(shards: Sequence[str], val_split: float, limit: int = 0) -> list[dict[str, Any]]:
    """The pairs of the held-out videos, in file order (at most ``limit`` when > 0)."""
    out = []
    for shard in shards:
        for item in _read_shard(shard):
            if val_split > 0 and is_val_video(item["meta"]["video_id"], val_split):
                out.append(item)
                if limit and len(out) >= limit:
                    return out
    return out


def training_pairs(
    shards: Sequence[str], val_split: float, limit: int = 0
) -> Iterator[dict[str, Any]]:
    """The pairs of the training videos, in file order (at most ``limit`` when > 0)."""
    n = 0
    for shard in shards:
        for item in _read_shard(shard):
            if not (val_split > 0 and is_val_video(item["meta"]["video_id"], val_split)):
                yield item
                n += 1
                if limit and n >= limit:
                    return


class LabelStream:
    """The endless, resumable per-rank stream of training pairs (see the module docstring)."""

    def __init__(self, shards: Sequence[str], rank: int, seed: int, val_split: float, mix: int):
        if not shards:
            raise ValueError("no labelled shards to train on")
        self.shards = list(shards)
        self.rank, self.seed, self.val_split = rank, seed, val_split
        self.mix = max(1, min(mix, len(self.shards)))

    def segment(self, j: int) -> list[dict[str, Any]]:
        rng = np.random.default_rng([self.seed, self.rank, j])
        picked = rng.integers(0, len(self.shards), size=self.mix)
        items = list(training_pairs([self.shards[i] for i in picked], self.val_split))
        order = rng.permutation(len(items))
        return [items[i] for i in order]

    def iterate(self, state: tuple[int, int] = (0, 0)) -> Iterator[tuple[dict[str, Any], tuple]]:
        """Yield ``(pair, position after it)`` forever, from ``state``."""
        j, i = state
        empty = 0
        while True:
            items = self.segment(j)
            if not items:
                empty += 1
                if empty > 100:
                    raise ValueError("the labelled shards hold no training pairs (all held out?)")
            else:
                empty = 0
            while i < len(items):
                i += 1
                yield items[i - 1], (j, i)
            j, i = j + 1, 0


class Collator:
    """Pairs -> model inputs with the backbone's processor (left padding), and the codes."""

    def __init__(
        self,
        processor: Any,
        family: Any,
        action_ids: Sequence[int],
        append_codes: bool,
        max_text_tokens: int = 0,
    ):
        self.processor = processor
        self._local = threading.local()
        self.family = family
        self.action_ids = torch.tensor(list(action_ids), dtype=torch.long)
        self.append_codes = append_codes
        self.max_text_tokens = max_text_tokens

    def instruction(self, text: str) -> str:
        """The instruction, cut to ``max_text_tokens`` tokens of the backbone's tokenizer."""
        if self.max_text_tokens <= 0:
            return text
        tok = self._processor().tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_text_tokens else tok.decode(ids[: self.max_text_tokens])

    def _processor(self) -> Any:
        """This thread's copy of the processor: a fast tokenizer switches padding on and off
        around each call, so two threads sharing one pad each other's batches wrongly."""
        if threading.current_thread() is threading.main_thread():
            return self.processor
        proc = getattr(self._local, "processor", None)
        if proc is None:
            proc = self._local.processor = copy.deepcopy(self.processor)
        return proc

    @classmethod
    def for_model(cls, vla: Any, append_codes: bool) -> Collator:
        m = vla.meta
        return cls(vla.processor, vla.family, m.action_token_ids, append_codes, m.max_text_tokens)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [Image.open(io.BytesIO(it["jpg"])).convert("RGB") for it in items]
        texts = [
            self.family.prompt(self.instruction(it["meta"].get("instruction", ""))) for it in items
        ]
        if self.family.name == "smolvlm":
            proc_images: Any = [[im] for im in images]
        else:
            proc_images = images
        batch = dict(
            self._processor()(
                images=proc_images,
                text=texts,
                padding="longest",
                return_tensors="pt",
                **self.family.processor_kwargs(),
            )
        )
        batch.pop("labels", None)
        codes = torch.tensor([it["meta"]["codes"] for it in items], dtype=torch.long)  # (B, L)
        if self.append_codes:
            append_tokens(batch, self.action_ids[codes])  # (B, L) code tokens
        batch["codes"] = codes
        return batch


class prefetch:  # noqa: N801 - used like a function: prefetch(iterator)
    """Run ``iterator`` in a background thread, ``depth`` items ahead (JPEG decoding and the
    processor overlap the training step); exceptions surface in the consumer.

    :meth:`close` (also on ``with``) stops the thread and closes ``iterator`` in it, so no
    thread is inside native code (tokenizers, torch) when the interpreter exits: a daemon
    thread there aborts the process ("terminate called without an active exception")."""

    _DONE = object()

    def __init__(self, iterator: Iterator[Any], depth: int = 4):
        self._q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._iterator = iterator
        self._thread = threading.Thread(target=self._work, daemon=True, name="prefetch")
        self._thread.start()

    def _work(self) -> None:
        try:
            for item in self._iterator:
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(self._DONE)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self._q.put(e)
        finally:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()  # a generator: its own cleanup (worker pools) runs here

    def __iter__(self) -> prefetch:
        return self

    def __next__(self) -> Any:
        item = self._q.get()
        if item is self._DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self, timeout: float = 60.0) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a put() waiting for room
                self._q.get_nowait()
            self._thread.join(0.1)
            timeout -= 0.1
            if timeout <= 0:
                break

    def __enter__(self) -> prefetch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def batches(
    stream: LabelStream,
    collate: Collator,
    batch_size: int,
    state: tuple[int, int] = (0, 0),
    workers: int = 0,
) -> Iterator[tuple[dict[str, torch.Tensor], tuple[int, int]]]:
    """Collated batches and the stream position after each, in stream order. ``workers`` > 0
    threads decode and process up to 2 x ``workers`` batches ahead (PIL and the tokenizers
    release the GIL for most of it)."""

    def grouped() -> Iterator[tuple[list[dict[str, Any]], tuple[int, int]]]:
        items: list[dict[str, Any]] = []
        for item, pos in stream.iterate(state):
            items.append(item)
            if len(items) == batch_size:
                yield items, pos
                items = []

    if workers <= 0:
        for items, pos in grouped():
            yield collate(items), pos
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="collate") as pool:
        pending: deque = deque()
        for items, pos in grouped():
            pending.append((pool.submit(collate, items), pos))
            if len(pending) >= 2 * workers:
                future, p = pending.popleft()
                yield future.result(), p
