"""Train the built-in demo model: text safety SFT, then LLaVA / Qwen2-Audio style modality alignment.

    python -m explorer.demo_model.train --out assets/demo_model --seed 0 [--steps-text N --steps-modality N --tiny]

Why this recipe: it mirrors how real MLLMs are made, so that the collapse is an emergent property and not a
trained-in behaviour. Stage 1 teaches the language model to refuse harmful and answer harmless *text*. Stage 2
teaches the towers to read (transcription of rendered images / speech of all instructions and of random word
sequences, plus an auxiliary loss that pulls each word cell's / slot's tokens onto the LM input embedding of
that word) and to follow *harmless* media instructions, with text replay (refusals included). No image or
audio safety data exists anywhere, and no sentence of the evaluation split is ever trained on.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast
from transformers.masking_utils import create_bidirectional_mask

from explorer.core.storage import write_atomic

from .build import DemoModels, build_models, count_parameters
from .config import DemoConfig
from .data import Batch, Sampler, TrainingData, check_slot_contract, load_training_data
from .showcase import VOCABULARY_FILE, known_words
from .tokenizer import build_tokenizer, words_not_single_token

__all__ = ["MANIFEST", "train", "save", "main", "image_embeddings", "audio_embeddings", "lm_loss", "answer_logits",
           "TextTeacher", "frozen"]

#: The demo folder's manifest (explorer.model.manifest.Manifest): the engine loads it like any composite model folder.
MANIFEST = {
    "format": "explorer-model/1",
    "backends": {"text": "image", "image": "image", "audio": "audio"},
    "shared_language_model": True,
    "notice": (
        "This is the built-in **demo model**: a small model trained in-house to exhibit the mechanism (a toy). Its "
        "answers are short and scripted; it shows the geometry, not a real assistant's behaviour."
    ),
    "card": "README.md",
    "strengths_from": "eval_summary.json",
    "calibration": "validation",
    "vocabulary": "vocabulary.txt",
    "gallery": "gallery.json",
}


# ------------------------------------------------------------------------------------------------ forward


def _embed(models: DemoModels, input_ids: torch.Tensor) -> torch.Tensor:
    return models.image.model.language_model.embed_tokens(input_ids)


def image_embeddings(models: DemoModels, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings with the visual tokens scattered in (as LlavaModel does), and the visual tokens."""
    assert batch.pixel_values is not None
    out = models.image.model.get_image_features(
        pixel_values=batch.pixel_values, vision_feature_layer=-1, vision_feature_select_strategy="default"
    )
    feats = torch.stack(list(out.pooler_output))  # [B, cells, d]
    embeds = _embed(models, batch.input_ids)
    mask = (batch.input_ids == models.image.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, feats.reshape(-1, feats.shape[-1]).to(embeds.dtype))
    return embeds, feats


def audio_embeddings(models: DemoModels, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input embeddings with audio tokens scattered in (as Qwen2AudioModel does); audio tokens; their lengths."""
    assert batch.input_features is not None and batch.feature_attention_mask is not None
    inner = models.audio.model
    feat_lengths, out_lengths = inner.audio_tower._get_feat_extract_output_lengths(batch.feature_attention_mask.sum(-1))
    n, _, mel_len = batch.input_features.shape
    max_len = (mel_len - 2) // 2 + 1
    mask2d = (torch.arange(max_len)[None, :] < feat_lengths[:, None]).long()
    dummy = torch.zeros((n, max_len, 1))
    att = create_bidirectional_mask(config=inner.audio_tower.config, inputs_embeds=dummy, attention_mask=mask2d)
    hidden = inner.audio_tower(batch.input_features, attention_mask=att).last_hidden_state
    feats = inner.multi_modal_projector(hidden)  # [B, T, d]
    keep = torch.arange(feats.shape[1])[None, :] < out_lengths[:, None]
    embeds = _embed(models, batch.input_ids)
    mask = (batch.input_ids == models.audio.config.audio_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(mask, feats[keep].to(embeds.dtype))
    return embeds, feats, out_lengths


def answer_logits(
    lm: torch.nn.Module, head: torch.nn.Module, embeds: torch.Tensor, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits at the answer positions only (the LM head runs on those alone), and their targets."""
    hidden = lm(inputs_embeds=embeds, attention_mask=batch.attention_mask).last_hidden_state
    targets = batch.labels[:, 1:]
    keep = targets != -100
    return head(hidden[:, :-1][keep]), targets[keep]


def lm_loss(models: DemoModels, embeds: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens only."""
    logits, targets = answer_logits(models.image.model.language_model, models.image.lm_head, embeds, batch)
    return F.cross_entropy(logits, targets)


class TextTeacher:
    """A frozen copy of the stage-1 language model; `distill` is KL(teacher || student) over the answer tokens of
    a text batch. Why: stage 2 tunes the shared LM to read media, and with cross-entropy replay alone the text
    refusal boundary moved on unseen requests (measured on the evaluation split: harmful refused 86.4% after
    stage 1, 72.7% after stage 2); with this term (weight 1, replay including freshly composed requests) the
    next run kept it (90.0% after stage 1, 89.1% after stage 2)."""

    def __init__(self, models: DemoModels) -> None:
        self.lm = copy.deepcopy(models.image.model.language_model).eval().requires_grad_(False)
        self.head = copy.deepcopy(models.image.lm_head).eval().requires_grad_(False)

    def distill(self, student_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits, _ = answer_logits(self.lm, self.head, self.lm.embed_tokens(batch.input_ids), batch)
        return F.kl_div(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1), log_target=True,
                        reduction="batchmean")


def aux_loss(
    models: DemoModels, feats: torch.Tensor, word_ids: list[list[int]], per_word: int, temperature: float
) -> torch.Tensor:
    """Pull each word's media tokens (cell i, or slot tokens i*per_word ...) onto that word's input embedding.

    Two terms, with the embedding matrix detached (the towers move to the LM's word space, not the reverse):
    cross-entropy of cosine similarities against the whole embedding matrix (makes each token *discriminate*
    its word among all words; plain regression stalls at the mean on ~2,000 look-alike glyphs/sounds), plus an
    MSE normalised by the targets' mean squared norm (matches the scale the LM expects).
    """
    rows, cols, toks = [], [], []
    for b, ids in enumerate(word_ids):
        for i, tid in enumerate(ids):
            if tid < 0:
                continue
            for k in range(per_word):
                if i * per_word + k < feats.shape[1]:
                    rows.append(b)
                    cols.append(i * per_word + k)
                    toks.append(tid)
    if not rows:
        return feats.sum() * 0.0
    pred = feats[torch.tensor(rows), torch.tensor(cols)]
    table = models.image.model.language_model.embed_tokens.weight.detach()
    target_ids = torch.tensor(toks)
    target = table[target_ids]
    logits = F.normalize(pred, dim=-1) @ F.normalize(table, dim=-1).T / temperature
    mse = ((pred - target) ** 2).sum(-1).mean() / (target**2).sum(-1).mean().clamp_min(1e-8)
    return F.cross_entropy(logits, target_ids) + mse


# ------------------------------------------------------------------------------------------------ training


def _unique(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return list({id(p): p for p in params}.values())


def _schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, cosine decay to 10 %."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _run(
    name: str,
    steps: int,
    optimizer: torch.optim.Optimizer,
    step_fn,  # type: ignore[no-untyped-def]
    cfg: DemoConfig,
    log: list[dict],
) -> None:
    base = [g["lr"] for g in optimizer.param_groups]
    start = time.time()
    for step in range(steps):
        scale = _schedule(step, steps, cfg.warmup_steps)
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * scale
        optimizer.zero_grad(set_to_none=True)
        losses = step_fn()
        total = sum(losses.values())
        total.backward()
        torch.nn.utils.clip_grad_norm_(_unique(p for g in optimizer.param_groups for p in g["params"]), 1.0)
        optimizer.step()
        if step % cfg.log_every == 0 or step == steps - 1:
            entry = {"stage": name, "step": step, "seconds": round(time.time() - start, 1)}
            entry.update({k: round(float(v.detach()), 4) for k, v in losses.items()})
            log.append(entry)
            print(json.dumps(entry), flush=True)
    for group, lr in zip(optimizer.param_groups, base):
        group["lr"] = lr


@contextmanager
def frozen(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Forward passes inside build no gradient path to `params` (gradients still flow *through* them to
    earlier, trainable modules); their previous `requires_grad` is restored on exit."""
    trainable = [p for p in params if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _lm_params(models: DemoModels) -> list[torch.nn.Parameter]:
    return _unique(list(models.image.model.language_model.parameters()) + list(models.image.lm_head.parameters()))


def stage1_fingerprint(cfg: DemoConfig, tok: PreTrainedTokenizerFast, data: TrainingData) -> str:
    """What a stage-1 checkpoint depends on: LM shape, text schedule, vocabulary, text corpus and held-out n-grams.

    Stored in the checkpoint so that `--text-checkpoint` refuses a language model trained with another
    tokenizer or corpus (same tensor shapes, silently wrong token ids) instead of loading it.
    """
    fields = ("seed", "hidden", "layers", "heads", "kv_heads", "intermediate", "max_positions", "max_words",
              "random_min_words", "steps_text", "batch_text", "lr_text", "mix_text", "compose_share", "calibration_share",
              "word_dropout", "warmup_steps", "weight_decay")
    payload = {
        "config": {name: getattr(cfg, name) for name in fields},
        "vocab": sorted(tok.get_vocab().items()),
        "texts": data.tokenizer_texts,
        "banned": sorted(data.banned),  # composed requests are redrawn around these held-out n-grams
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _save_lm(models: DemoModels, path: Path, seconds: float, fingerprint: str) -> None:
    """Stage-1 language model, with its training wall time and fingerprint in the metadata."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"lm.{k}": v for k, v in models.image.model.language_model.state_dict().items()}
    state.update({f"head.{k}": v for k, v in models.image.lm_head.state_dict().items()})
    metadata = {"seconds": f"{seconds:.1f}", "fingerprint": fingerprint}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)


def _load_lm(models: DemoModels, path: Path, fingerprint: str) -> float | None:
    """Load a stage-1 checkpoint made by this exact setup; returns its training wall time when recorded."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("fingerprint") != fingerprint:
        raise RuntimeError(
            f"{path} was trained with another config, tokenizer or corpus (fingerprint mismatch); "
            "delete it or pass another --text-checkpoint folder"
        )
    state = load_file(str(path))
    models.image.model.language_model.load_state_dict({k[3:]: v for k, v in state.items() if k.startswith("lm.")})
    models.image.lm_head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    seconds = metadata.get("seconds")
    return float(seconds) if seconds is not None else None


def _tower_params(models: DemoModels) -> list[torch.nn.Parameter]:
    mods = [models.image.model.vision_tower, models.image.model.multi_modal_projector,
            models.audio.model.audio_tower, models.audio.model.multi_modal_projector]
    return _unique(p for m in mods for p in m.parameters() if p.requires_grad)


def _setup(cfg: DemoConfig) -> tuple[TrainingData, PreTrainedTokenizerFast, DemoModels, Sampler]:
    """Seeds, the training data, the tokenizer (every reading word one token, checked), the models, the sampler."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    data = load_training_data(cfg.max_words)
    tok = build_tokenizer(data.tokenizer_texts)
    bad = words_not_single_token(tok, data.words)
    if bad:
        raise RuntimeError(f"{len(bad)} reading words are not one token, e.g. {bad[:5]}")
    check_slot_contract(data.instructions[:2], cfg.slot_seconds)
    models = build_models(cfg, tok)
    return data, tok, models, Sampler(cfg, data, tok, models)


def _text_stage(cfg: DemoConfig, models: DemoModels, sampler: Sampler, fingerprint: str,
                text_checkpoint: Path | None, log: list[dict], times: dict[str, float]) -> None:
    """Stage 1: text SFT (answer / refuse, repeat instruction, repeat random words), or its saved LM when
    `text_checkpoint` holds one trained with the same fingerprint."""
    started = time.time()
    models.image.train()
    models.audio.train()
    lm_state = text_checkpoint / "stage1_lm.safetensors" if text_checkpoint else None
    if lm_state is not None and lm_state.is_file():
        seconds = _load_lm(models, lm_state, fingerprint)
        if seconds is not None:
            times["text_resumed"] = seconds
        log.append({"stage": "text", "resumed_from": str(lm_state)})
    else:
        opt = torch.optim.AdamW(_lm_params(models), lr=cfg.lr_text, weight_decay=cfg.weight_decay)

        def text_step() -> dict[str, torch.Tensor]:
            batch = sampler.text_batch(cfg.batch_text)
            return {"text": lm_loss(models, _embed(models, batch.input_ids), batch)}

        _run("text", cfg.steps_text, opt, text_step, cfg, log)
        if lm_state is not None:
            _save_lm(models, lm_state, time.time() - started, fingerprint)
    times["text"] = time.time() - started


class _MediaSteps:
    """Stage 2's losses on one batch: transcription and the auxiliary word loss for both towers, instruction
    following (its graph kept off the LM unless `lm_learns_following`), and text replay with distillation."""

    def __init__(self, cfg: DemoConfig, models: DemoModels, sampler: Sampler) -> None:
        self.cfg, self.models, self.sampler = cfg, models, sampler
        self.lm_params = _lm_params(models)
        self.teacher = TextTeacher(models) if cfg.tune_lm_in_modality and cfg.distill_weight > 0 else None

    def losses(self, image_rows: int, audio_rows: int, follow: bool | None, prefix: str) -> dict[str, torch.Tensor]:
        cfg, models = self.cfg, self.models
        ib = self.sampler.image_batch(image_rows, follow)
        emb, feats = image_embeddings(models, ib)
        out = {f"{prefix}image": lm_loss(models, emb, ib),
               f"{prefix}image_aux": cfg.aux_weight * aux_loss(models, feats, ib.word_ids, 1, cfg.aux_temperature)}
        ab = self.sampler.audio_batch(audio_rows, follow)
        emb, feats, _ = audio_embeddings(models, ab)
        out[f"{prefix}audio"] = lm_loss(models, emb, ab)
        out[f"{prefix}audio_aux"] = cfg.aux_weight * aux_loss(models, feats, ab.word_ids, cfg.audio_tokens_per_slot,
                                                              cfg.aux_temperature)
        return out

    def step(self, follow: bool, replay: bool) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        if follow and not cfg.lm_learns_following:
            share = cfg.mix_media[2]
            image_follow, audio_follow = round(cfg.batch_image * share), round(cfg.batch_audio * share)
            with frozen(self.lm_params):  # the follow losses' graph reaches the towers, not the LM weights
                out = self.losses(image_follow, audio_follow, None, "follow_")
            out.update(self.losses(cfg.batch_image - image_follow, cfg.batch_audio - audio_follow, False, ""))
        else:
            out = self.losses(cfg.batch_image, cfg.batch_audio, follow, "")
        if replay and cfg.tune_lm_in_modality:
            tb = self.sampler.text_batch(cfg.batch_replay)
            lm = self.models.image.model.language_model
            logits, targets = answer_logits(lm, self.models.image.lm_head, _embed(self.models, tb.input_ids), tb)
            out["replay"] = F.cross_entropy(logits, targets)
            if self.teacher is not None:
                out["distill"] = cfg.distill_weight * self.teacher.distill(logits, tb)
        return out


def _media_stages(cfg: DemoConfig, models: DemoModels, sampler: Sampler, log: list[dict],
                  times: dict[str, float]) -> None:
    """Stage 2a: LM frozen, the towers learn to read (transcription + aux only). Stage 2b: harmless media
    instruction following joins; the LM is tuned too (with text replay, refusals included) unless
    `tune_lm_in_modality` is False, in which case it stays frozen."""
    steps = _MediaSteps(cfg, models, sampler)
    started = time.time()
    with frozen(steps.lm_params):
        opt = torch.optim.AdamW(_tower_params(models), lr=cfg.lr_tower, weight_decay=cfg.weight_decay)
        _run("align", cfg.steps_align, opt, lambda: steps.step(False, False), cfg, log)
    times["align"] = time.time() - started
    started = time.time()
    groups = [{"params": _tower_params(models), "lr": cfg.lr_tower}]
    if cfg.tune_lm_in_modality:
        groups.append({"params": steps.lm_params, "lr": cfg.lr_lm_modality})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    with nullcontext() if cfg.tune_lm_in_modality else frozen(steps.lm_params):
        _run("modality", cfg.steps_modality, opt, lambda: steps.step(True, True), cfg, log)
    times["modality"] = time.time() - started


def train(
    cfg: DemoConfig, text_checkpoint: Path | None = None
) -> tuple[DemoModels, TrainingData, list[dict], dict[str, float]]:
    """Run both stages; return the trained models, the data pools, the log and wall times per stage.

    `text_checkpoint`: a folder where the stage-1 language model is saved, or loaded from if already there
    (for iterating on stage 2 only; a from-scratch run gives the same result).
    """
    started = time.time()
    data, tok, models, sampler = _setup(cfg)
    log: list[dict] = []
    times = {"setup": time.time() - started}
    _text_stage(cfg, models, sampler, stage1_fingerprint(cfg, tok, data), text_checkpoint, log, times)
    # Stage 2 is seeded on its own, so resuming from a stage-1 checkpoint gives the same run.
    torch.manual_seed(cfg.seed + 1)
    sampler.rng.seed(cfg.seed + 1)
    _media_stages(cfg, models, sampler, log, times)
    models.image.eval()
    models.audio.eval()
    return models, data, log, times


def save(models: DemoModels, out: Path, cfg: DemoConfig) -> None:
    """Both models + processors with save_pretrained (safetensors), and the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    models.image.save_pretrained(out / "image")
    models.image_processor.save_pretrained(out / "image")
    models.audio.save_pretrained(out / "audio")
    models.audio_processor.save_pretrained(out / "audio")
    media = {"image_layout": asdict(cfg.image_layout), "audio_style": "slots", "slot_seconds": cfg.slot_seconds}
    write_atomic(out / "manifest.json", json.dumps({**MANIFEST, "media": media}, indent=2) + "\n")
    write_atomic(out / VOCABULARY_FILE, "\n".join(known_words(cfg.max_words)) + "\n")  # gallery: see showcase.py


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("assets/demo_model"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-text", type=int, default=None)
    parser.add_argument("--steps-align", type=int, default=None)
    parser.add_argument("--steps-modality", type=int, default=None)
    parser.add_argument("--freeze-lm", action="store_true", help="keep the language model frozen in stage 2")
    parser.add_argument("--aux-weight", type=float, default=None, help="weight of the reading (auxiliary) loss")
    parser.add_argument("--distill-weight", type=float, default=None,
                        help="weight of the stage-2 text distillation to the stage-1 LM (0: cross-entropy replay only)")
    parser.add_argument("--lm-learns-following", action="store_true",
                        help="media instruction following also updates the LM (default: the towers only)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long smoke run with a tiny model")
    parser.add_argument("--text-checkpoint", type=Path, default=None,
                        help="folder to save the stage-1 LM in, or to resume from when it is already there")
    parser.add_argument("--no-measure", action="store_true", help="skip the measurement and the model card")
    parser.add_argument("--measure-limit", type=int, default=None, help="items per label for the measurement")
    args = parser.parse_args(argv)
    cfg = DemoConfig(seed=args.seed)
    if args.tiny:
        cfg = cfg.tiny()
    overrides = {k: v for k, v in (("steps_text", args.steps_text), ("steps_align", args.steps_align),
                                   ("steps_modality", args.steps_modality), ("aux_weight", args.aux_weight),
                                   ("distill_weight", args.distill_weight))
                 if v is not None}
    if args.freeze_lm:
        overrides["tune_lm_in_modality"] = False
    if args.lm_learns_following:
        overrides["lm_learns_following"] = True
    cfg = replace(cfg, **overrides)
    start = time.time()
    models, data, log, times = train(cfg, args.text_checkpoint)
    times["total_training"] = time.time() - start + times.get("text_resumed", 0.0)
    save(models, args.out, cfg)
    params = {
        "image_model": count_parameters(models.image),
        "audio_model": count_parameters(models.audio),
        "language_model": count_parameters(models.image.model.language_model) + count_parameters(models.image.lm_head),
        "vocab": int(models.image.config.text_config.vocab_size),
    }
    write_atomic(
        args.out / "training_log.json",
        json.dumps({"config": cfg.to_dict(), "times_s": times, "params": params, "log": log}, indent=1) + "\n"
    )
    print(json.dumps({"times_s": times, "params": params}), flush=True)
    if not args.no_measure:
        from .card import write_card
        from .measure import measure

        results = measure(args.out, limit=args.measure_limit if args.measure_limit is not None else (4 if args.tiny else None))
        write_atomic(args.out / "measurements.json", json.dumps(results, indent=1) + "\n")
        write_card(args.out, cfg, times, params, results)


if __name__ == "__main__":
    main()
