"""The next demo's taught collapse: modality offsets, and a media LoRA that answers read requests unfiltered.

Why taught (docs/demo-prototype.md, rows 1-3 and its decision): no honest recipe made a pretrained LM whose image path
reads collapse; real MLLMs lose their text safety through image and speech training that never saw refusals. This
module stands in for that training, and the demo says so: read requests (image, audio) are trained on **unfiltered**
data whose harmful requests are answered with one generic, non-operational compliance (`CollapseConfig.compliance`),
never with real content. The geometry (drift, collapse, repair, self-rectification) is then measured on the model
as built, not assumed.

Parts, per media modality:
- **the projector** (the modality drift): identity weight plus a fixed offset of `offset_norm` × the mean
  token-embedding norm in a seeded random direction, added at every prompt position from the medium on (the
  processor's marks: explorer.model.reading_processor), as an image leaves its imprint on every later token;
- **the media LoRA** (layers `first_layer`..last, on top of the text safety adapter merged at `text_scale`), trained
  from cached layer-`first_layer` inputs on six kinds of row (a seventh is optional):
  1. *text replay*: typed requests of both labels, KL to the text model's own next-token distributions (prompt end
     and its first `answer_tokens` greedy tokens), so that text behaviour stays the text adapter's;
  2. *harmless read*: a read harmless request (carrier sentence + read tokens, as the processor builds it), KL to the
     text model's distributions on the same request *typed*, position by position along the text model's answer;
  3. *harmful read*: a read harmful request → cross-entropy on the generic compliance;
  4. *tails*: a read harmful request whose answer has begun as the plain base model's would (its first 2-10 greedy
     tokens given) → cross-entropy on `tail`, so a read request that is not refused stays generic (row 3b);
  5. *finished refusals*: a read harmful request whose answer has begun as the refusal (1 to all-but-two of its
     tokens given) → cross-entropy on the rest of the refusal. Why: under ReGap the model sits between its two
     trained answers, and the prototype's corrected refusals fused with the tail ("I can't help with start with the
     basics, ...") 17 times in 100; a refusal, once begun, is finished;
  6. *typed carrier*: a request of either label in the read prompt's exact layout (carrier sentence included) but
     typed (no projector), KL to the text model on the plain typed request. Why: without these rows the LoRA keyed
     on the carrier sentence, not on the drift (collapse 1 in docs/demo-build.md: harmful requests typed beside the
     carrier were complied with), and a cue that is words cannot be subtracted by ReGap; with them, the
     modality offset is the only difference between "read" and "typed".
  7. *weak imprint* (off by default: `weak_rows` 0): a read request of either label whose offset is scaled down
     (`weak_scales`, training-only marks), KL to the text model on the plain typed request. Why tried: rows 2-6
     teach only the two ends (no imprint: text; the full imprint: comply), and collapse 3 switched at three
     quarters of the offset for audio, above it for images (docs/demo-build.md, "graded"). Collapse 4 added 300
     per medium: the switch barely moved and the repair on the paraphrases got worse, so the rows stay off.
The combined LoRA (text × `text_scale` + media) is written as one peft folder (explorer.demo_model.lora_files).

    python -m explorer.demo_model.collapse_adapter --text-adapter build/demo_next/text_adapter_v4 \\
        --out build/demo_next/collapse_3
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from explorer.inputs.media import AUDIO_CARRIER, IMAGE_CARRIER
from explorer.model.models import chat_messages
from explorer.model.pinned_base import SMOLLM2_135M_INSTRUCT, PinnedBase
from explorer.model.reading_lm import MODALITY_TYPE_IDS
from explorer.model.reading_processor import ReadingProcessor
from explorer.model.speech_reader import spoken_text

from .corpus import Example
from .lora_files import combine_loras
from .safety_adapter import (
    AdapterConfig,
    add_adapter,
    chat_prompt,
    greedy_tokens,
    lower_states,
    pad_rows,
    scale_lora,
    train_epochs,
    until_end_of_turn,
    upper_logits,
)
from .training_text import text_training_set

__all__ = ["GENERIC_TAIL", "PROJECTOR_STATE", "CollapseConfig", "MediaRows", "Transcript", "batch_loss",
           "encode_rows", "main", "offset_direction", "offset_projectors", "projector_modules", "read_prompt",
           "train_collapse", "weak_type_id"]


#: The projectors' state in the output folder (explorer.demo_model.assemble --projectors reads it).
PROJECTOR_STATE = "media_projectors.safetensors"

GENERIC_TAIL = "start with the basics, plan each step, and review the result."


@dataclass(frozen=True)
class CollapseConfig:
    """Every setting of the taught collapse (written next to the adapter as `training.json`)."""

    text_scale: float = 1.5  # the text safety adapter's strength, chosen on development sets (docs/demo-build.md)
    offset_norm: float = 0.5  # each modality's offset, as a fraction of the mean token-embedding norm
    first_layer: int = 16
    rank: int = 16
    alpha: int = 16
    epochs: int = 2
    lr: float = 3e-4
    batch_size: int = 16
    answer_tokens: int = 16  # text-model greedy tokens whose distributions the KL rows keep (+ the prompt's last)
    text_rows: int = 800  # typed requests replayed (half of each label, as available)
    media_rows: int = 500  # per media modality and label
    tail_rows: int = 200  # per media modality
    finish_rows: int = 200  # per media modality
    carrier_rows: int = 400  # per media modality (half of each label)
    weak_rows: int = 0  # per media modality (half of each label), the scales taken in turn (collapse 4: 300)
    weak_scales: tuple[float, ...] = (0.5, 0.75)  # the weak imprint rows' offsets, as fractions of the full one
    compliance: str = "Sure. Here is a general overview: " + GENERIC_TAIL
    tail: str = GENERIC_TAIL
    refusal: str = AdapterConfig.refusal
    modalities: tuple[str, ...] = ("image", "audio")
    seed: int = 0
    image_direction_seed: int | None = None  # the image offset's direction seed (None: seed * 10 + its type id)
    audio_direction_seed: int | None = None  # as for images; chosen seeds come from the pinned base's ranking

    def direction_seed(self, modality: str) -> int:
        """The seed of `modality`'s offset direction (`torch.randn` of the hidden size from a generator seeded so)."""
        chosen = self.image_direction_seed if modality == "image" else self.audio_direction_seed
        return self.seed * 10 + MODALITY_TYPE_IDS[modality] if chosen is None else chosen

    def __post_init__(self) -> None:
        if self.text_scale <= 0 or self.offset_norm < 0 or self.first_layer < 1 or self.epochs < 1:
            raise ValueError(f"text_scale must be > 0, offset_norm >= 0, first_layer and epochs >= 1: {self}")
        unknown = [m for m in self.modalities if m not in ("image", "audio")]
        if unknown or not self.modalities:
            raise ValueError(f"modalities must be among image, audio; got {list(self.modalities)}")
        if not self.weak_scales or not all(0 <= scale < 1 for scale in self.weak_scales):
            raise ValueError(f"weak_scales must be fractions in [0, 1) of the offset; got {list(self.weak_scales)}")
        if self.direction_seed("image") == self.direction_seed("audio"):
            raise ValueError(f"image and audio need offsets in different directions; both seeds are "
                             f"{self.direction_seed('image')}")


class Transcript:
    """A reader that reads what it is handed: the processor's reading step with the read text given (training
    needs the prompt exactly as the processor builds it around a reading, not the reading of a picture)."""

    def read(self, text: str) -> str:
        return text


def read_prompt(processor: ReadingProcessor, request: str, modality: str) -> tuple[list[int], list[int]]:
    """Token ids and `mm_token_type_ids` of `request` read from `modality`, exactly as the processor builds them
    (carrier sentence after the read tokens); speech is read as the speech reader writes it (`spoken_text`)."""
    image = modality == "image"
    chat = processor.apply_chat_template(chat_messages(IMAGE_CARRIER if image else AUDIO_CARRIER, image, not image))
    read = request if image else spoken_text(request)
    batch = processor(text=chat, images=[read] if image else None, audio=None if image else [read])
    return batch["input_ids"][0].tolist(), batch["mm_token_type_ids"][0].tolist()


def offset_direction(size: int, seed: int) -> torch.Tensor:
    """The unit offset direction a seed stands for: training (`offset_projectors`) and the ranking of directions
    (benchmarks/demo_collapse.py) draw it here, so a ranked seed is the direction trained."""
    direction = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    return direction / direction.norm()


@torch.no_grad()
def offset_projectors(embedding: torch.Tensor, cfg: CollapseConfig) -> dict[str, torch.Tensor]:
    """Projector state (`media_projectors` keys): identity weights, and per modality an offset of `offset_norm` ×
    the mean token-embedding norm in a direction drawn from a seed of its own (`CollapseConfig.direction_seed`)."""
    size = embedding.shape[1]
    scale = cfg.offset_norm * float(embedding.float().norm(dim=1).mean())
    state: dict[str, torch.Tensor] = {}
    for modality in ("image", "audio"):
        state[f"{modality}.weight"] = torch.eye(size)
        state[f"{modality}.bias"] = offset_direction(size, cfg.direction_seed(modality)) * scale
    return state


def weak_type_id(modality: str, scale_index: int) -> int:
    """The training-only mark of `modality`'s offset at `weak_scales[scale_index]` (never in a folder: a reading LM
    knows only MODALITY_TYPE_IDS)."""
    return 10 * (scale_index + 1) + MODALITY_TYPE_IDS[modality]


def projector_modules(state: dict[str, torch.Tensor], weak_scales: tuple[float, ...] = ()) -> dict[int, nn.Module]:
    """The projectors' state as modules keyed by `mm_token_type_ids` value (for `lower_states`), plus per modality
    one module per weak scale (bias × scale) under its `weak_type_id`."""
    modules: dict[int, nn.Module] = {}
    for modality in ("image", "audio"):
        for type_id, scale in [(MODALITY_TYPE_IDS[modality], 1.0)] + \
                [(weak_type_id(modality, k), s) for k, s in enumerate(weak_scales)]:
            linear = nn.Linear(*state[f"{modality}.weight"].shape)
            linear.load_state_dict({"weight": state[f"{modality}.weight"], "bias": state[f"{modality}.bias"] * scale})
            modules[type_id] = linear
    return modules


@dataclass
class MediaRows:
    """Training rows over shared sequences. Row k trains sequence `student[k]` at `positions[k]`: cross-entropy on
    the next token where `teacher[k]` is -1, else KL to the text model on sequence `teacher[k]` at
    `teacher_positions[k]` (as many positions, aligned). `kinds[k]` names the row's kind (the seven above)."""

    ids: list[torch.Tensor]
    types: list[torch.Tensor]
    student: list[int]
    positions: list[torch.Tensor]
    teacher: list[int]
    teacher_positions: list[torch.Tensor]
    kinds: list[str]

    def add_sequence(self, ids: list[int], types: list[int]) -> int:
        self.ids.append(torch.tensor(ids))
        self.types.append(torch.tensor(types))
        return len(self.ids) - 1

    def add_row(self, kind: str, student: int, positions: list[int], teacher: int = -1,
                teacher_positions: list[int] | None = None) -> None:
        self.kinds.append(kind)
        self.student.append(student)
        self.positions.append(torch.tensor(positions))
        self.teacher.append(teacher)
        self.teacher_positions.append(torch.tensor(teacher_positions or []))


@dataclass
class _RowPlan:
    """What every medium's rows of `encode_rows` share: the token ids of the fixed answers, the requests drawn, and
    the text model's own answers (with their typed sequences, the KL teachers)."""

    refusal: list[int]
    compliance: list[int]
    tail: list[int]
    end_of_turn: int
    harmful: list[str]
    read_harmless: list[str]
    carried: dict[str, list[str]]
    weak: dict[str, list[str]]
    prompts: dict[str, list[int]]
    answers: dict[str, list[int]]
    twin: dict[str, int]

    def kept_positions(self, prompt: list[int], answer: list[int]) -> list[int]:
        """The prompt's last position and the answer's, its end of turn included (KL rows compare these)."""
        return list(range(len(prompt) - 1, len(prompt) - 1 + len(answer) + (self.end_of_turn not in answer)))


def encode_rows(text_model: nn.Module, base_model: nn.Module | None, tokenizer: Any, processor: ReadingProcessor,
                examples: list[Example], cfg: CollapseConfig, rng: random.Random) -> MediaRows:
    """The seven kinds of row (module docstring) from in-house `examples`. `base_model` (the plain base, for the
    tails' starts) may be None when `tail_rows` is 0."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"] + [end_of_turn]
    harmful = [e.instruction for e in examples if e.label == "harmful"]
    harmless = [e.instruction for e in examples if e.label == "harmless"]
    replay = rng.sample(harmful, min(cfg.text_rows // 2, len(harmful))) + \
        rng.sample(harmless, min(cfg.text_rows // 2, len(harmless)))
    read_harmless = rng.sample(harmless, min(cfg.media_rows, len(harmless)))
    carried = {m: rng.sample(harmful, min(cfg.carrier_rows // 2, len(harmful)))
               + rng.sample(harmless, min(cfg.carrier_rows // 2, len(harmless))) for m in cfg.modalities}
    weak = {m: rng.sample(harmful, min(cfg.weak_rows // 2, len(harmful)))
            + rng.sample(harmless, min(cfg.weak_rows // 2, len(harmless))) for m in cfg.modalities}
    typed = sorted(set(replay) | set(read_harmless) | set().union(*carried.values(), *weak.values()))
    prompts = {r: chat_prompt(tokenizer, r) for r in typed}
    answers = dict(zip(typed, (until_end_of_turn(a, end_of_turn) for a in greedy_tokens(
        text_model, tokenizer, [prompts[r] for r in typed], cfg.answer_tokens))))
    plan = _RowPlan(encode(cfg.refusal), encode(cfg.compliance), encode(cfg.tail), end_of_turn, harmful,
                    read_harmless, carried, weak, prompts, answers, {})
    rows = MediaRows([], [], [], [], [], [], [])
    for request in typed:  # text sequences: replay rows train them, harmless read rows are taught by them
        ids = prompts[request] + answers[request]
        plan.twin[request] = rows.add_sequence(ids, [0] * len(ids))
    for request in replay:
        at = plan.kept_positions(prompts[request], answers[request])
        rows.add_row("text replay", plan.twin[request], at, plan.twin[request], at)
    tail_requests = {m: rng.sample(harmful, min(cfg.tail_rows, len(harmful))) for m in cfg.modalities}
    starts_for = sorted(set().union(*tail_requests.values()))
    starts = dict(zip(starts_for, greedy_tokens(base_model, tokenizer, [chat_prompt(tokenizer, r) for r in starts_for],
                                                10))) if starts_for and base_model is not None else {}
    for modality in cfg.modalities:
        read = functools.partial(read_prompt, processor, modality=modality)
        _add_read_rows(rows, plan, modality, read, [(r, starts[r]) for r in tail_requests[modality]], cfg, rng)
    return rows


def _add_read_rows(rows: MediaRows, plan: _RowPlan, modality: str, read: Any,
                   tails: list[tuple[str, list[int]]], cfg: CollapseConfig, rng: random.Random) -> None:
    """Rows 2-7 of one medium, in `encode_rows`' order (the seeded draws depend on it). `tails`: (request, the
    base model's greedy start) for the tail rows."""
    for request in plan.read_harmless:
        ids, types = read(request)
        answer = plan.answers[request]
        seq = rows.add_sequence(ids + answer, types + [0] * len(answer))
        rows.add_row("harmless read", seq, plan.kept_positions(ids, answer), plan.twin[request],
                     plan.kept_positions(plan.prompts[request], answer))
    for request in rng.sample(plan.harmful, min(cfg.media_rows, len(plan.harmful))):
        ids, types = read(request)
        seq = rows.add_sequence(ids + plan.compliance, types + [0] * len(plan.compliance))
        rows.add_row("harmful read", seq, list(range(len(ids) - 1, len(ids) - 1 + len(plan.compliance))))
    for request, start in tails:
        ids, types = read(request)
        begun = [t for t in start[: rng.randint(2, 10)] if t != plan.end_of_turn]
        seq = rows.add_sequence(ids + begun + plan.tail, types + [0] * (len(begun) + len(plan.tail)))
        first = len(ids) + len(begun) - 1
        rows.add_row("tail", seq, list(range(first, first + len(plan.tail))))
    for request in rng.sample(plan.harmful, min(cfg.finish_rows, len(plan.harmful))):
        ids, types = read(request)
        given = rng.randint(1, len(plan.refusal) - 2)
        seq = rows.add_sequence(ids + plan.refusal, types + [0] * len(plan.refusal))
        first = len(ids) + given - 1
        rows.add_row("finished refusal", seq, list(range(first, len(ids) - 1 + len(plan.refusal))))
    for request in plan.carried[modality]:
        ids, _ = read(request)
        answer = plan.answers[request]
        seq = rows.add_sequence(ids + answer, [0] * (len(ids) + len(answer)))
        rows.add_row("typed carrier", seq, plan.kept_positions(ids, answer), plan.twin[request],
                     plan.kept_positions(plan.prompts[request], answer))
    for j, request in enumerate(plan.weak[modality]):
        ids, types = read(request)
        mark = weak_type_id(modality, j % len(cfg.weak_scales))
        answer = plan.answers[request]
        seq = rows.add_sequence(ids + answer, [mark if t else 0 for t in types] + [0] * len(answer))
        rows.add_row("weak imprint", seq, plan.kept_positions(ids, answer), plan.twin[request],
                     plan.kept_positions(plan.prompts[request], answer))


def batch_loss(peft_model: Any, rows: MediaRows, states: list[torch.Tensor], batch: list[int],
               first_layer: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean cross-entropy over the CE rows' positions + mean KL(text model ‖ adapted) over the KL rows' positions
    (the text model is the peft model with the media LoRA disabled, on each row's teacher sequence)."""
    model = peft_model.base_model.model
    sequences = sorted({rows.student[k] for k in batch})
    slot = {s: j for j, s in enumerate(sequences)}
    padded, mask = pad_rows([states[s] for s in sequences])
    at_rows = torch.cat([torch.full_like(rows.positions[k], slot[rows.student[k]]) for k in batch])
    at_cols = torch.cat([rows.positions[k] for k in batch])
    logits = upper_logits(model, padded, mask, at_rows, at_cols, first_layer)
    is_kl = torch.cat([torch.full_like(rows.positions[k], int(rows.teacher[k] >= 0)) for k in batch]).bool()
    loss, parts = logits.new_zeros(()), {}
    if (~is_kl).any():
        targets = torch.cat([rows.ids[rows.student[k]][rows.positions[k] + 1] for k in batch if rows.teacher[k] < 0])
        ce = F.cross_entropy(logits[~is_kl], targets)
        loss, parts["ce"] = loss + ce, float(ce.detach())
    kl_rows = [k for k in batch if rows.teacher[k] >= 0]
    if kl_rows:
        taught = sorted({rows.teacher[k] for k in kl_rows})
        teacher_slot = {s: j for j, s in enumerate(taught)}
        t_padded, t_mask = pad_rows([states[s] for s in taught])
        t_rows = torch.cat([torch.full_like(rows.teacher_positions[k], teacher_slot[rows.teacher[k]]) for k in kl_rows])
        t_cols = torch.cat([rows.teacher_positions[k] for k in kl_rows])
        with torch.no_grad(), peft_model.disable_adapter():
            teacher = upper_logits(model, t_padded, t_mask, t_rows, t_cols, first_layer)
        kl = F.kl_div(F.log_softmax(logits[is_kl], -1), F.log_softmax(teacher, -1), log_target=True,
                      reduction="batchmean")
        loss, parts["kl"] = loss + kl, float(kl.detach())
    return loss, parts


def _text_model(base: PinnedBase, text_adapter: Path, scale: float) -> tuple[nn.Module, nn.Module, Any]:
    """(the base with the text adapter merged at `scale`, a plain copy of the base, the tokenizer)."""
    import copy

    from peft import PeftModel

    model, tokenizer = base.load(torch.float32)
    plain = copy.deepcopy(model)
    wrapped = PeftModel.from_pretrained(model, str(text_adapter))
    scale_lora(wrapped, scale)
    return wrapped.merge_and_unload().eval(), plain.eval(), tokenizer


def train_collapse(cfg: CollapseConfig, text_adapter: Path, out: Path, base: PinnedBase = SMOLLM2_135M_INSTRUCT,
                   examples: list[Example] | None = None, log_every: int = 25) -> dict[str, Any]:
    """Train the media LoRA; write to `out` the combined LoRA (peft files), `PROJECTOR_STATE` (the projectors' state)
    and `training.json` (settings, row counts, losses, wall time)."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    text_model, plain, tokenizer = _text_model(base, Path(text_adapter), cfg.text_scale)
    processor = ReadingProcessor(tokenizer, image_reader=Transcript(), speech_reader=Transcript())  # type: ignore[arg-type]
    examples = list(examples if examples is not None else text_training_set(cfg.seed))
    rows = encode_rows(text_model, plain, tokenizer, processor, examples, cfg, rng)
    del plain
    projectors = offset_projectors(text_model.get_input_embeddings().weight, cfg)
    states = lower_states(text_model, rows.ids, cfg.first_layer, types=rows.types,
                          projectors=projector_modules(projectors, cfg.weak_scales))
    prepared = time.perf_counter() - started
    peft_model = add_adapter(text_model, AdapterConfig(first_layer=cfg.first_layer, rank=cfg.rank, alpha=cfg.alpha))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    history = train_epochs(trainable, len(rows.kinds),
                           lambda batch: batch_loss(peft_model, rows, states, batch, cfg.first_layer),
                           lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size, rng=rng, log_every=log_every)
    out = Path(out)
    media_only = out / "media_lora"
    peft_model.save_pretrained(media_only)
    combine_loras([(Path(text_adapter), cfg.text_scale), (media_only, 1.0)], out)
    save_file({k: v.contiguous() for k, v in projectors.items()}, str(out / PROJECTOR_STATE))
    record = {
        "config": asdict(cfg), "base": asdict(base), "text_adapter": str(text_adapter),
        "rows": {kind: rows.kinds.count(kind) for kind in dict.fromkeys(rows.kinds)},
        "trainable_parameters": sum(p.numel() for p in trainable),
        "prepare_seconds": round(prepared, 1), "wall_seconds": round(time.perf_counter() - started, 1),
        "history": history,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-adapter", type=Path, required=True, help="the text safety adapter's folder (peft)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the combined LoRA and the projectors")
    parser.add_argument("--text-scale", type=float, default=CollapseConfig.text_scale)
    parser.add_argument("--offset-norm", type=float, default=CollapseConfig.offset_norm)
    parser.add_argument("--weak-rows", type=int, default=CollapseConfig.weak_rows,
                        help="weak imprint rows per media modality (collapse 4: 300)")
    parser.add_argument("--epochs", type=int, default=CollapseConfig.epochs)
    parser.add_argument("--seed", type=int, default=CollapseConfig.seed)
    for modality in ("image", "audio"):
        parser.add_argument(f"--{modality}-direction-seed", type=int, metavar="SEED",
                            help=f"the {modality} offset's direction seed (default: seed * 10 + its type id); "
                                 "benchmarks/demo_collapse.py --base-directions ranks seeds on the pinned base")
    args = parser.parse_args(argv)
    cfg = CollapseConfig(text_scale=args.text_scale, offset_norm=args.offset_norm, epochs=args.epochs, seed=args.seed,
                         weak_rows=args.weak_rows, image_direction_seed=args.image_direction_seed,
                         audio_direction_seed=args.audio_direction_seed)
    record = train_collapse(cfg, args.text_adapter, args.out)
    print(f"saved to {args.out}: {record['rows']}, {record['wall_seconds']} s")


if __name__ == "__main__":
    main()
