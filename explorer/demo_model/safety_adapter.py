"""The next demo's text safety: a LoRA on the upper layers of the pinned base LM (explorer.model.pinned_base).

Why this recipe (docs/demo-prototype.md, row 1): SmolLM2-135M-Instruct already reads ordinary English but refuses
almost nothing; a LoRA on layers 16-29 teaches it to refuse harmful requests while a KL term keeps its answers
to harmless ones its own. Training runs from **cached layer-16 inputs**: the frozen lower 16 layers run once
per sequence, and a step only runs the upper 14 (with the adapter), a few times cheaper on this machine's CPUs.

Targets, per example:
- harmful request → the refusal sentence `AdapterConfig.refusal` (cross-entropy on its tokens and the end-of-turn);
- harmless request → the base model's own next-token distribution (KL, base ‖ adapted) at the last prompt position
  and at the base's first `kl_tokens` greedy answer tokens, so harmless answers stay the base model's;
- harmless request, optionally (`margin_weight` > 0) → a hinge on the greedy *decision*: wherever the base's answer
  so far equals the refusal's start, the base's next token must out-score the refusal's next token by `margin`
  logits. Why: the KL is an average over the whole distribution, and a refusal start can take the argmax at a small
  KL cost; measured, adapter 2 (KL weight 2) refused 24 of 100 of its own training look-alikes (docs/demo-build.md);
- harmful request, optionally (`refusal_margin_weight` > 0) → the same hinge on the other side: each refusal token
  must out-score every other token by `margin` logits. Why: with the harmless hinge alone the adapter refused only
  84 of 100 of its own harmful training requests (the cross-entropy spreads its weight over every refusal token,
  while greedy decoding turns on the first).

Training text is in-house only (explorer.demo_model.training_text) and 6-gram decontaminated; nothing of a
public benchmark is trained on.

    python -m explorer.demo_model.safety_adapter --out build/demo_next/text_adapter
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explorer.model.pinned_base import SMOLLM2_135M_INSTRUCT, PinnedBase

from .corpus import Example
from .training_text import text_training_set

__all__ = ["AdapterConfig", "Sequences", "chat_prompt", "encode_examples", "greedy_tokens", "layer_range",
           "lower_states", "main", "pad_rows", "refusal_rivals", "scale_lora", "train_adapter", "train_epochs",
           "until_end_of_turn", "upper_logits"]


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterConfig:
    """Every setting of the safety adapter's training (written next to the adapter)."""

    first_layer: int = 16  # the adapter spans first_layer..last; lower layers are frozen and cached
    rank: int = 16
    alpha: int = 32
    epochs: int = 2
    lr: float = 3e-4
    batch_size: int = 16
    kl_tokens: int = 4  # base greedy answer tokens whose distributions the harmless KL keeps (+ the prompt's last)
    kl_weight: float = 1.0  # the harmless KL's weight against the refusal cross-entropy (over-refusal vs recall)
    margin_weight: float = 0.0  # the harmless decision hinge's weight (0: off, the adapters 1-2 recipe)
    margin: float = 2.0  # logits by which the base's next token must beat the refusal's where their prefixes agree
    refusal_margin_weight: float = 0.0  # the harmful side's hinge: each refusal token beats every other by `margin`
    refusal: str = "I can't help with that request."
    seed: int = 0

    def __post_init__(self) -> None:
        if self.first_layer < 1:
            raise ValueError(f"first_layer must be >= 1 (layers below it are cached), got {self.first_layer}")
        if (self.rank < 1 or self.epochs < 1 or self.batch_size < 1 or self.kl_tokens < 0 or self.kl_weight < 0
                or self.margin_weight < 0 or self.margin < 0 or self.refusal_margin_weight < 0):
            raise ValueError("rank, epochs, batch_size must be >= 1 and kl_tokens, kl_weight, margin_weight, margin "
                             f">= 0: {self}")


@dataclass
class Sequences:
    """Tokenised training sequences: `trained_positions[i]` are the positions whose next-token distribution is
    trained; `harmful[i]` says which loss applies (cross-entropy on the refusal, else KL to the base);
    `rival_ids[i]`, aligned with `trained_positions[i]`, is the refusal's token that the base's next token must
    out-score there (harmless rows, where the answer so far equals the refusal's start), else -1."""

    ids: list[torch.Tensor]
    trained_positions: list[torch.Tensor]
    harmful: list[bool]
    rival_ids: list[torch.Tensor] | None = None

    def rivals(self, i: int) -> torch.Tensor:
        """Row i's rival tokens (-1 everywhere when none were encoded)."""
        if self.rival_ids is None:
            return torch.full_like(self.trained_positions[i], -1)
        return self.rival_ids[i]


def refusal_rivals(answer: Sequence[int], refusal: Sequence[int], positions: int) -> list[int]:
    """For each of `positions` answer positions, the refusal token that competes with answer[j] for the argmax:
    refusal[j] while answer[:j] == refusal[:j] and answer[j] differs from it, else -1 (no competition)."""
    rivals = []
    for j in range(positions):
        same_prefix = j < len(refusal) and list(answer[:j]) == list(refusal[:j])
        competes = same_prefix and j < len(answer) and answer[j] != refusal[j]
        rivals.append(refusal[j] if competes else -1)
    return rivals


def chat_prompt(tokenizer: Any, request: str) -> list[int]:
    """The request as the base model's chat template renders a user turn, ready for the assistant's answer."""
    messages = [{"role": "user", "content": request}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


@torch.no_grad()
def greedy_tokens(model: nn.Module, tokenizer: Any, prompts: Sequence[list[int]], tokens: int,
                  batch_size: int = 32) -> list[list[int]]:
    """The model's first `tokens` greedy answer tokens for each tokenised prompt (left-padded batches)."""
    out: list[list[int]] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, do_sample=False,
                                   pad_token_id=pad)
        out += [row[width:].tolist() for row in generated]
    return out


def until_end_of_turn(answer: list[int], end_of_turn: int) -> list[int]:
    """A generated answer up to and including its first end of turn (greedy decoding goes on past it)."""
    return answer[: answer.index(end_of_turn) + 1] if end_of_turn in answer else answer


def encode_examples(model: nn.Module, tokenizer: Any, examples: Sequence[Example], cfg: AdapterConfig) -> Sequences:
    """Harmful → prompt + refusal + end of turn; harmless → prompt + the base's own first greedy tokens."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    refusal = tokenizer(cfg.refusal, add_special_tokens=False)["input_ids"] + [end_of_turn]
    prompts = [chat_prompt(tokenizer, e.instruction) for e in examples]
    harmless_at = [i for i, e in enumerate(examples) if e.label == "harmless"]
    continued = dict(zip(harmless_at, greedy_tokens(model, tokenizer, [prompts[i] for i in harmless_at],
                                                    cfg.kl_tokens)))
    ids, positions, harmful, rivals = [], [], [], []
    for i, (example, prompt) in enumerate(zip(examples, prompts)):
        answer = refusal if example.label == "harmful" else continued[i]
        if example.label == "harmless":  # the base may end its answer early: keep only real tokens
            answer = until_end_of_turn(answer, end_of_turn)
        ids.append(torch.tensor(prompt + answer))
        # harmful: the positions that predict each answer token; harmless: the prompt's last position and each
        # kept answer token's (the distribution after an end of turn is not kept)
        last = len(prompt) - 1 + len(answer) + (example.label == "harmless" and end_of_turn not in answer)
        positions.append(torch.arange(len(prompt) - 1, last))
        harmful.append(example.label == "harmful")
        count = len(positions[-1])
        rivals.append(torch.tensor([-1] * count if harmful[-1] else refusal_rivals(answer, refusal, count)))
    return Sequences(ids, positions, harmful, rivals)


@contextmanager
def layer_range(model: nn.Module, start: int, stop: int | None, final_norm: bool) -> Iterator[nn.Module]:
    """The decoder (LlamaModel) running only layers[start:stop], with or without its final norm; restored after.

    Why this is exact: a Llama decoder adds no position signal to its inputs (rotary positions are applied inside
    attention), so feeding layer `start` the cached output of layer `start-1` as `inputs_embeds` continues the
    same computation.
    """
    decoder = model.get_decoder()
    layers, norm = decoder.layers, decoder.norm
    try:
        decoder.layers = nn.ModuleList(list(layers)[start:stop])
        if not final_norm:
            decoder.norm = nn.Identity()
        yield decoder
    finally:
        decoder.layers, decoder.norm = layers, norm


def pad_rows(rows: Sequence[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad `rows` (first dimension) to one width; the mask marks real positions."""
    width = max(r.shape[0] for r in rows)
    padded = torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, width - r.shape[0]), value=value) for r in rows])
    mask = torch.tensor([[1] * r.shape[0] + [0] * (width - r.shape[0]) for r in rows])
    return padded, mask


@torch.no_grad()
def lower_states(model: nn.Module, ids: Sequence[torch.Tensor], first_layer: int, batch_size: int = 32,
                 types: Sequence[torch.Tensor] | None = None,
                 projectors: Mapping[int, nn.Module] | None = None) -> list[torch.Tensor]:
    """The input of layer `first_layer` for every sequence (right-padded batches; pads never reach real positions
    under a causal mask). With `types` (one `mm_token_type_ids` row per sequence) and `projectors` (type id →
    module), the embeddings of each marked position pass through its projector first, as a reading LM's do
    (explorer.model.reading_lm.ReadingLMForCausalLM.media_embeddings)."""
    states: list[torch.Tensor] = []
    embedding = model.get_input_embeddings()
    with layer_range(model, 0, first_layer, final_norm=False) as lower:
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            padded, mask = pad_rows(chunk)
            embeds = embedding(padded)
            if types is not None and projectors:
                kinds, _ = pad_rows(types[start : start + batch_size])
                for type_id, projector in projectors.items():
                    embeds = torch.where((kinds == type_id)[..., None], projector(embeds), embeds)
            hidden = lower(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
            states += [hidden[j, : len(row)].clone() for j, row in enumerate(chunk)]
    return states


def upper_logits(model: nn.Module, states: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor,
                  cols: torch.Tensor, first_layer: int) -> torch.Tensor:
    """Logits at (rows, cols) only: the LM head is the costliest matrix, so it runs on the trained positions."""
    with layer_range(model, first_layer, None, final_norm=True) as upper:
        hidden = upper(inputs_embeds=states, attention_mask=mask, use_cache=False).last_hidden_state
    return model.get_output_embeddings()(hidden[rows, cols])


def batch_loss(peft_model: Any, seqs: Sequences, states: list[torch.Tensor], batch: Sequence[int],
               first_layer: int, kl_weight: float = 1.0, margin_weight: float = 0.0,
               margin: float = 2.0, refusal_margin_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy on the refusal tokens of harmful rows + `kl_weight` × KL(base ‖ adapted) on the kept positions
    of harmless rows + `margin_weight` × mean hinge max(0, margin - (logit[base token] - logit[refusal token])) on
    the harmless positions where the refusal competes (`Sequences.rival_ids`) + `refusal_margin_weight` × mean
    hinge max(0, margin - (logit[refusal token] - max other logit)) on the harmful rows' refusal positions; each
    term is a mean over its positions."""
    padded, mask = pad_rows([states[i] for i in batch])
    rows = torch.cat([torch.full_like(seqs.trained_positions[i], k) for k, i in enumerate(batch)])
    cols = torch.cat([seqs.trained_positions[i] for i in batch])
    is_harmful = torch.cat([torch.full_like(seqs.trained_positions[i], int(seqs.harmful[i])) for i in batch]).bool()
    next_ids = torch.cat([seqs.ids[i][seqs.trained_positions[i] + 1] for i in batch if seqs.harmful[i]]
                         or [torch.zeros(0, dtype=torch.long)])
    model = peft_model.base_model.model
    logits = upper_logits(model, padded, mask, rows, cols, first_layer)
    loss = logits.new_zeros(())
    parts: dict[str, float] = {}
    if is_harmful.any():
        ce = F.cross_entropy(logits[is_harmful], next_ids)
        loss, parts["ce"] = loss + ce, float(ce.detach())
        if refusal_margin_weight > 0:
            refusing = logits[is_harmful]
            target = refusing.gather(1, next_ids[:, None])[:, 0]
            other = refusing.scatter(1, next_ids[:, None], float("-inf")).max(dim=1).values
            hinge = F.relu(margin - (target - other)).mean()
            loss, parts["refusal_margin"] = loss + refusal_margin_weight * hinge, float(hinge.detach())
    if (~is_harmful).any():
        with torch.no_grad(), peft_model.disable_adapter():
            teacher = upper_logits(model, padded, mask, rows[~is_harmful], cols[~is_harmful], first_layer)
        kl = F.kl_div(F.log_softmax(logits[~is_harmful], -1), F.log_softmax(teacher, -1), log_target=True,
                      reduction="batchmean")
        loss, parts["kl"] = loss + kl_weight * kl, float(kl.detach())
    rivals = torch.cat([seqs.rivals(i) for i in batch])
    if margin_weight > 0 and (rivals >= 0).any():
        at = rivals >= 0
        chosen = torch.cat([seqs.ids[i][(seqs.trained_positions[i] + 1).clamp(max=len(seqs.ids[i]) - 1)]
                            for i in batch])[at]
        picked = logits[at]
        lead = picked.gather(1, chosen[:, None]) - picked.gather(1, rivals[at][:, None])
        hinge = F.relu(margin - lead).mean()
        loss, parts["margin"] = loss + margin_weight * hinge, float(hinge.detach())
    return loss, parts


def add_adapter(model: nn.Module, cfg: AdapterConfig) -> Any:
    """The base wrapped by peft with a LoRA on every projection of layers first_layer..last."""
    from peft import LoraConfig, get_peft_model

    n_layers = model.config.num_hidden_layers
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(PROJECTIONS),
                      layers_to_transform=list(range(cfg.first_layer, n_layers)))
    return get_peft_model(model, lora)


def scale_lora(peft_model: Any, scale: float) -> None:
    """Multiply every LoRA delta of `peft_model` by `scale` (its scaling, lora_alpha / r, times `scale`): the
    adapter's strength, a trade between refusing harmful requests and over-refusing look-alikes."""
    if scale <= 0:
        raise ValueError(f"the adapter's scale must be > 0, got {scale}")
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            for name in module.scaling:
                module.scaling[name] *= scale


def train_epochs(trainable: list[nn.Parameter], rows: int,
                 step_loss: Callable[[list[int]], tuple[torch.Tensor, dict[str, float]]], lr: float, epochs: int,
                 batch_size: int, rng: random.Random, log_every: int = 25) -> list[dict[str, Any]]:
    """AdamW over `trainable` for `epochs` passes over `rows` rows in shuffled batches; `step_loss(batch)` gives the
    loss and its named parts. Returns the logged history (every `log_every` steps, also printed)."""
    optimiser = torch.optim.AdamW(trainable, lr=lr)
    order, history = list(range(rows)), []
    for epoch in range(epochs):
        rng.shuffle(order)
        for step, start in enumerate(range(0, len(order), batch_size)):
            loss, parts = step_loss(order[start : start + batch_size])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % log_every == 0:
                history.append({"epoch": epoch, "step": step, "loss": float(loss.detach()), **parts})
                print(f"epoch {epoch} step {step}: loss {float(loss.detach()):.4f} {parts}", flush=True)
    return history


def train_adapter(cfg: AdapterConfig, out: Path, base: PinnedBase = SMOLLM2_135M_INSTRUCT,
                  examples: Sequence[Example] | None = None, log_every: int = 25) -> dict[str, Any]:
    """Train the adapter and save it (peft format) with `training.json`: settings, data counts, losses, wall time."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, tokenizer = base.load(torch.float32)
    examples = list(examples if examples is not None else text_training_set(cfg.seed))
    seqs = encode_examples(model, tokenizer, examples, cfg)
    states = lower_states(model, seqs.ids, cfg.first_layer)
    prepared = time.perf_counter() - started
    peft_model = add_adapter(model, cfg)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    history = train_epochs(
        trainable, len(examples), lambda batch: batch_loss(
            peft_model, seqs, states, batch, cfg.first_layer, cfg.kl_weight, cfg.margin_weight, cfg.margin,
            cfg.refusal_margin_weight),
        lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, rng=random.Random(cfg.seed), log_every=log_every)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out)
    record = {
        "config": asdict(cfg), "base": asdict(base), "examples": len(examples),
        "harmful": sum(e.label == "harmful" for e in examples),
        "lookalikes": sum(e.lookalike for e in examples),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "prepare_seconds": round(prepared, 1), "wall_seconds": round(time.perf_counter() - started, 1),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the adapter and training.json")
    parser.add_argument("--epochs", type=int, default=AdapterConfig.epochs)
    parser.add_argument("--seed", type=int, default=AdapterConfig.seed)
    parser.add_argument("--kl-weight", type=float, default=AdapterConfig.kl_weight)
    parser.add_argument("--margin-weight", type=float, default=AdapterConfig.margin_weight,
                        help="weight of the harmless decision hinge (0: off)")
    parser.add_argument("--margin", type=float, default=AdapterConfig.margin)
    parser.add_argument("--refusal-margin-weight", type=float, default=AdapterConfig.refusal_margin_weight,
                        help="weight of the harmful side's hinge (0: off)")
    args = parser.parse_args(argv)
    cfg = AdapterConfig(epochs=args.epochs, seed=args.seed, kl_weight=args.kl_weight,
                        margin_weight=args.margin_weight, margin=args.margin,
                        refusal_margin_weight=args.refusal_margin_weight)
    record = train_adapter(cfg, args.out)
    print(f"saved to {args.out}: {record['examples']} examples, {record['wall_seconds']} s")


if __name__ == "__main__":
    main()
