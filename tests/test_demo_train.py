"""Tests for the demo's training code: losses reach the right parameters, a tiny run saves a loadable model folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from needs import needs_speech

from explorer.demo_model.config import DemoConfig
from explorer.demo_model.data import (
    load_training_data,
    user_messages,
)
from explorer.demo_model.tokenizer import build_tokenizer, words_not_single_token


def test_text_teacher_distillation_is_zero_for_the_teacher_and_grows_with_change() -> None:
    from explorer.demo_model.build import build_models
    from explorer.demo_model.data import Sampler
    from explorer.demo_model.train import TextTeacher, answer_logits

    cfg = DemoConfig().tiny()
    data = load_training_data(cfg.max_words)
    tok = build_tokenizer(data.tokenizer_texts)
    models = build_models(cfg, tok)
    teacher = TextTeacher(models)
    batch = Sampler(cfg, data, tok, models).text_batch(4)
    lm, head = models.image.model.language_model, models.image.lm_head
    logits, _ = answer_logits(lm, head, lm.embed_tokens(batch.input_ids), batch)
    assert teacher.distill(logits, batch).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        head.weight.add_(0.5 * torch.randn_like(head.weight))  # the student drifts; the copy does not
    logits, _ = answer_logits(lm, head, lm.embed_tokens(batch.input_ids), batch)
    loss = teacher.distill(logits, batch)
    assert loss.item() > 1e-3
    loss.backward()
    assert head.weight.grad is not None and not any(p.requires_grad for p in teacher.head.parameters())


def test_every_reading_word_is_one_token() -> None:
    data = load_training_data(16)
    tok = build_tokenizer(data.tokenizer_texts)
    assert words_not_single_token(tok, data.words) == []
    assert tok.decode(tok.encode("zqxj unseenword", add_special_tokens=False)) == "zqxj unseenword"


@pytest.mark.slow
@needs_speech
def test_tiny_training_run_saves_loadable_models(tmp_path: Path) -> None:
    from transformers import AutoModelForMultimodalLM, AutoProcessor

    from explorer.correction.generation import generate_texts
    from explorer.demo_model.train import main
    from explorer.model.loading import load_model
    from explorer.model.manifest import MANIFEST_FORMAT

    checkpoint = tmp_path / "stage1"
    args = ["--out", str(tmp_path), "--tiny", "--no-measure", "--steps-modality", "1", "--text-checkpoint", str(checkpoint)]
    main(args + ["--steps-text", "2"])
    assert json.loads((tmp_path / "manifest.json").read_text())["format"] == MANIFEST_FORMAT
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert "text_resumed" not in log["times_s"]
    main(args + ["--steps-text", "2"])  # same setup: stage 1 is loaded, not retrained
    assert json.loads((tmp_path / "training_log.json").read_text())["times_s"]["text_resumed"] >= 0
    with pytest.raises(RuntimeError, match="fingerprint mismatch"):
        main(args + ["--steps-text", "3"])  # another stage-1 schedule must not reuse that checkpoint
    assert all(np.isfinite(v) for e in log["log"] for k, v in e.items() if k not in ("stage", "step", "seconds"))
    # The saved folder is a model folder like any other: the engine loads it from its manifest, and its greedy
    # answers equal the ones Hugging Face's own classes give for the same chat-template prompt.
    model = load_model(str(tmp_path), device="cpu")
    assert model.modalities == ("text", "image", "audio") and model.media.audio_style == "slots"
    assert model.media.image_layout == DemoConfig().tiny().image_layout
    engine_answer = generate_texts(model, [model.render("How do I bake bread?", "text")], max_new_tokens=3)
    for kind in ("image", "audio"):
        hf_model = AutoModelForMultimodalLM.from_pretrained(tmp_path / kind)
        proc = AutoProcessor.from_pretrained(tmp_path / kind)
        prompt = proc.apply_chat_template(user_messages("How do I bake bread?"), add_generation_prompt=True, tokenize=False)
        inputs = proc(text=[prompt], return_tensors="pt")
        out = hf_model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert [proc.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()] == \
            engine_answer


def test_follow_losses_under_frozen_reach_towers_not_the_language_model() -> None:
    """The `lm_learns_following=False` recipe: a media loss computed inside `frozen(lm_params)` gives the
    towers a gradient and the LM none; a loss computed outside (reading) still reaches the LM."""
    from explorer.demo_model.build import build_models
    from explorer.demo_model.data import Sampler
    from explorer.demo_model.train import _lm_params, frozen, image_embeddings, lm_loss

    cfg = DemoConfig().tiny()
    data = load_training_data(cfg.max_words)
    tok = build_tokenizer(data.tokenizer_texts)
    models = build_models(cfg, tok)
    sampler = Sampler(cfg, data, tok, models)
    lm_params = _lm_params(models)
    with frozen(lm_params):
        batch = sampler.image_batch(2, None)
        follow = lm_loss(models, image_embeddings(models, batch)[0], batch)
    assert all(p.requires_grad for p in lm_params)  # restored
    follow.backward()
    assert all(p.grad is None for p in lm_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in models.image.model.multi_modal_projector.parameters())
    batch = sampler.image_batch(2, False)
    lm_loss(models, image_embeddings(models, batch)[0], batch).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in lm_params)


def test_config_rejects_misaligned_audio_slots() -> None:
    with pytest.raises(ValueError, match="multiple of 4"):
        DemoConfig(audio_hop=1000)
