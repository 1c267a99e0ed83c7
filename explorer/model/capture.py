"""Capture the residual stream of every decoder layer at the last prompt token.

Hooks exist only inside `record_layers(...)`, are removed in `finally`, and only record calls made from the
thread that opened the context, so concurrent requests on one shared model never see each other's captures.
`capture_items` adds batching and a disk cache keyed by (model revision, prompt content, capture settings):
a second run over the same calibration set reads every state from disk.

>>> with record_layers(lm) as record:                         # doctest: +SKIP
...     lm.backend("text").model(**inputs)
>>> record.last_token(inputs["attention_mask"]).shape        # [batch, layers, hidden]   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from explorer.core.storage import CacheDir, atomic_path, resolve_cache_dir
from explorer.core.vocab import Modality
from explorer.inputs.data import Instruction
from explorer.inputs.media import Prompt
from explorer.model.models import LoadedModel
from explorer.model.states import StateBatch

__all__ = [
    "CaptureSettings",
    "LayerRecord",
    "capture_items",
    "capture_prompts",
    "last_token_index",
    "token_positions",
    "read_states",
    "save_states",
    "states_cache_file",
    "states_cache_folder",
    "layer_output",
    "record_layers",
]

Pooling = Literal["last", "template_mean"]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptureSettings:
    """What is captured: `last` prompt token, or the mean over the trailing chat-template tokens."""

    pooling: Pooling = "last"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "template_mean"):
            raise ValueError(f"pooling must be 'last' or 'template_mean', got {self.pooling!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")

    def cache_key(self) -> str:
        return f"pool={self.pooling}"


def layer_output(output: object) -> torch.Tensor:
    """The hidden-state tensor of a decoder layer's output (a tensor, or a tuple whose first item is one)."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value,index]


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the last real token, for left or right padding alike."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).to(torch.long).argmax(dim=1)


def token_positions(attention_mask: torch.Tensor, n_tokens: int = 1) -> torch.Tensor:
    """[batch, n_tokens] positions of each row's last `n_tokens` real tokens, in order (the last column is the
    last token); clamped at 0 for rows shorter than that."""
    last = last_token_index(attention_mask)
    return (last[:, None] - torch.arange(n_tokens - 1, -1, -1, device=last.device)[None, :]).clamp(min=0)


class LayerRecord:
    """Per-layer outputs of the forward passes made inside `record_layers`.

    With `keep` ([batch, k] token positions) each layer's output is gathered at those positions inside the hook,
    on that layer's own device, so a pass holds [batch, k, d] per layer instead of [batch, tokens, d]: thousands
    of image tokens cost nothing to keep. Without it the whole output is kept.
    """

    def __init__(self, num_layers: int, first_call_only: bool, keep: torch.Tensor | None = None) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * num_layers
        self.first_call_only = first_call_only
        self.keep = keep

    def store(self, layer: int, hidden: torch.Tensor) -> None:
        if self.first_call_only and self.outputs[layer] is not None:
            return
        if self.keep is not None:
            rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
            hidden = hidden[rows, self.keep.to(hidden.device)]  # [batch, k, d]
        self.outputs[layer] = hidden.detach()

    def _recorded(self) -> list[torch.Tensor]:
        if any(o is None for o in self.outputs):
            raise RuntimeError("no forward pass was recorded for some layers")
        return self.outputs  # type: ignore[return-value]

    def _at(self, attention_mask: torch.Tensor, n_tokens: int) -> list[torch.Tensor]:
        """Per layer, [batch, n_tokens, d] at each row's last `n_tokens` real tokens, moved to the CPU one layer at
        a time (layers spread over several devices by a device map are each indexed on their own device)."""
        outputs = self._recorded()
        if self.keep is not None:  # gathered inside the hook already
            if self.keep.shape[1] < n_tokens:
                raise ValueError(f"the hook kept {self.keep.shape[1]} positions per row; {n_tokens} were asked for")
            return [o[:, -n_tokens:].cpu() for o in outputs]
        index = token_positions(attention_mask, n_tokens)
        return [o[torch.arange(o.shape[0], device=o.device)[:, None], index.to(o.device)].cpu() for o in outputs]

    def last_token(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, layers, hidden] float32 at each row's last real prompt token."""
        return torch.stack([o[:, -1].float() for o in self._at(attention_mask, 1)], dim=1)

    def trailing_mean(self, attention_mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """[batch, layers, hidden] float32: mean over each row's last `n_tokens` real tokens (float64 sum)."""
        return torch.stack([o.double().mean(dim=1).float() for o in self._at(attention_mask, n_tokens)], dim=1)

    def pooled(self, attention_mask: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """[batch, layers, hidden]: the last token's state (`n_tokens` 1) or the mean of the last `n_tokens`."""
        return self.last_token(attention_mask) if n_tokens == 1 else self.trailing_mean(attention_mask, n_tokens)


def pooled_tokens(model: LoadedModel, modality: Modality, pooling: str) -> int:
    """How many trailing prompt tokens one state is pooled over: 1 for "last"; for "template_mean" the chat
    template's tokens after the user's content. One rule for calibration, the probe and evaluation states, so
    s(x) is always normalised with statistics pooled the same way (docs/method.md)."""
    if pooling not in ("last", "template_mean"):
        raise ValueError(f"pooling must be 'last' or 'template_mean', got {pooling!r}")
    return 1 if pooling == "last" else model.trailing_template_tokens(modality)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the last wanted layer has run."""


@contextmanager
def record_layers(
    model: LoadedModel,
    layers: Sequence[int] | None = None,
    first_call_only: bool = False,
    stop_early: bool = False,
    keep: torch.Tensor | None = None,
) -> Iterator[LayerRecord]:
    """Record every decoder layer's raw output during the forward passes run inside the block.

    `first_call_only` keeps the prefill pass of a `generate` call (the prompt), not the decoding steps.
    `stop_early` ends the forward pass right after the last recorded layer (the rest of the model and the
    vocabulary projection are never computed); the block's forward call must then be its last statement.
    Only calls from the opening thread are recorded; the hooks are removed even if the block raises.
    """
    record = LayerRecord(model.num_layers, first_call_only, keep)
    owner = threading.get_ident()
    wanted = range(model.num_layers) if layers is None else [model.layer_index(i) for i in layers]
    handles = []

    last_wanted = max(wanted)

    def make_hook(index: int):
        def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
            if threading.get_ident() == owner:
                record.store(index, layer_output(output))
                if stop_early and index == last_wanted:
                    raise _StopForward

        return hook

    try:
        for index in wanted:
            handles.append(model.layers[index].register_forward_hook(make_hook(index)))
        yield record
    except _StopForward:
        pass  # the forward pass ended early on purpose; everything wanted was recorded
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def capture_prompts(
    model: LoadedModel,
    prompts: Sequence[Prompt],
    settings: CaptureSettings = CaptureSettings(),
    steer: Callable[[int, torch.Tensor], AbstractContextManager[Any]] | None = None,
) -> torch.Tensor:
    """[n, layers, hidden] float32 states for prompts of one modality, batched with right padding.

    `steer(start, attention_mask)`, when given, returns the context (a correction's hooks) that each batch's pass
    runs in: `start` is the batch's first row, the mask tells a per-row correction where each row's tokens are."""
    chunks = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = list(prompts[start : start + settings.batch_size])
        inputs = model.encode(batch, padding_side="right")
        backend = model.backend(batch[0].modality)
        mask = inputs["attention_mask"]
        n_tokens = pooled_tokens(model, batch[0].modality, settings.pooling)
        steering = steer(start, mask) if steer is not None else nullcontext()
        with steering, record_layers(model, stop_early=True, keep=token_positions(mask, n_tokens)) as record:
            backend.model(**inputs, use_cache=False)
        chunks.append(record.pooled(mask, n_tokens))
    return torch.cat(chunks, dim=0)


def states_cache_folder(cache_dir: Path, kind: str) -> Path:
    """The folder that holds every cached states file of `kind` ("states": uncorrected, per prompt; "corrected":
    calibration re-captured under a correction), and nothing else: a bound on one kind never evicts another."""
    return cache_dir / kind


def states_cache_file(cache_dir: Path, kind: str, model: LoadedModel, *parts: str) -> Path:
    """Where cached states of `kind` live: keyed by the model, its weights' revision, dtype and device type (so
    fp32 CPU states and bf16 GPU states never mix in one profile) and whatever else they depend on (`parts`)."""
    fields = [model.name, model.revision, str(model.dtype), model.device.type, *parts]
    key = hashlib.sha256("|".join(fields).encode()).hexdigest()
    return states_cache_folder(cache_dir, kind) / key[:2] / f"{key}.safetensors"


def _cache_path(model: LoadedModel, prompt: Prompt, settings: CaptureSettings, cache_dir: Path) -> Path:
    return states_cache_file(cache_dir, "states", model, prompt.key, settings.cache_key())


def read_states(path: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Saved states of the expected `shape`, or None when absent, truncated, corrupt, of another shape or not
    finite (then they are recomputed and overwritten: a damaged cache file costs time, never a wrong number)."""
    if not path.is_file():
        return None
    try:
        states = load_file(str(path))["states"]
    except Exception:  # safetensors raises its own error types for truncated or garbled headers
        logger.warning("ignoring unreadable state cache file %s", path)
        return None
    if tuple(states.shape) != tuple(shape) or not bool(torch.isfinite(states).all()):
        logger.warning("ignoring state cache file %s of shape %s", path, tuple(states.shape))
        return None
    return states


def save_states(path: Path, tensor: torch.Tensor, meta: dict[str, str] | None = None) -> None:
    """Write states atomically (safetensors, key "states")."""
    with atomic_path(path) as tmp:  # a Ctrl-C leaves either the old file or the new one, never half of one
        save_file({"states": tensor.contiguous()}, str(tmp), metadata=meta)


def capture_items(
    model: LoadedModel,
    items: Sequence[Instruction],
    modality: Modality,
    settings: CaptureSettings = CaptureSettings(),
    cache_dir: CacheDir = "default",
    progress: bool = False,
) -> StateBatch:
    """States of `items` rendered in `modality`, read from the disk cache where present, else computed.

    Items are rendered, looked up and captured a batch at a time, so memory holds the states (the [n, L, d] the
    profile and plots need) and one batch of media, never every rendered image or clip of a large file at once.
    """
    folder = resolve_cache_dir(cache_dir)
    states: list[torch.Tensor] = []
    bar = tqdm(total=len(items), desc=f"capture {modality}", disable=not progress, leave=False)
    for start in range(0, len(items), settings.batch_size):
        chunk = list(items[start : start + settings.batch_size])
        prompts = [model.render(item, modality) for item in chunk]
        paths = [_cache_path(model, p, settings, folder) if folder else None for p in prompts]
        found = [read_states(path, (model.num_layers, model.hidden_size)) if path else None for path in paths]
        todo = [i for i, state in enumerate(found) if state is None]
        if todo:
            for i, tensor in zip(todo, capture_prompts(model, [prompts[i] for i in todo], settings)):
                found[i] = tensor
                if paths[i] is not None:
                    meta = {"model": model.name, "item": chunk[i].id, "modality": modality, **asdict(settings)}
                    save_states(paths[i], tensor, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
        states += found  # type: ignore[arg-type]
        bar.update(len(chunk))
    bar.close()
    return StateBatch(
        states=torch.stack(states) if states else torch.empty(0, model.num_layers, model.hidden_size),  # type: ignore[arg-type]
        item_ids=[item.id for item in items],
        labels=[item.label for item in items],
        modalities=[modality] * len(items),
        instructions=[item.instruction for item in items],
    )
