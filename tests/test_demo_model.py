"""Tests for the built-in demo model: the training code (tiny smoke run) and the shipped checkpoint.

The shipped-model tests run the whole builtin *evaluation* split (held out from training; no hand-picked items)
and check that the checkpoint reproduces, item by item, what its model card documents (`measurements.json`),
plus the properties the demo exists for (selective text refusal, the collapse on images).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.data import load_builtin
from explorer.demo_model.config import MEDIA_REPEAT_PROMPT, DemoConfig

from explorer.demo_model.corpus import (
    HARMFUL,
    HARMFUL_ACTIONS,
    HARMLESS_ACTIONS,
    NEUTRAL_SUFFIXES,
    HARMLESS,
    Example,
    banned_ngrams,
    compose_action_request,
    decontaminate,
    drop_words,
    generate_instructions,
)
from explorer.demo_model.data import VALIDATION_PATH, held_out_texts, load_training_data, transcript, user_messages
from explorer.demo_model.tokenizer import build_tokenizer, words_not_single_token
from explorer.judge import RefusalJudge

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo_model"
STRIDE = 1  # every item of the evaluation split (110 per label; a tiny model generates them in seconds)
shipped = pytest.mark.skipif(not (DEMO / "manifest.json").is_file(), reason="demo model not trained yet")


# ----------------------------------------------------------------------------------------- corpus / tokenizer


def test_corpus_size_and_no_evaluation_sentences() -> None:
    assert len(HARMFUL) >= 10 and len(HARMLESS) >= 10
    assert sum(len(t) for t, _ in HARMFUL.values()) >= 100
    assert sum(len(t) for t, _ in HARMLESS.values()) >= 100
    corpus = generate_instructions()
    assert max(len(e.instruction.split()) for e in corpus) <= 16
    assert any(e.lookalike for e in corpus)
    data = load_training_data(16)
    evaluation = {i.instruction for i in load_builtin("evaluation")}
    trained = set(data.instructions) | {s for s, _, _ in data.sft + data.calibration_sft} | {s for s, _ in data.harmless}
    assert not trained & evaluation
    # Nor any 6-word phrase of a held-out sentence (evaluation split or paraphrase file) in corpus sentences.
    held_out = held_out_texts()
    assert len(held_out) >= len(evaluation) + 50
    corpus_sentences = {s for s, _, _ in data.sft}
    assert decontaminate([Example(s, "harmless", "x") for s in corpus_sentences], held_out) == [
        Example(s, "harmless", "x") for s in corpus_sentences
    ]


def test_decontaminate_drops_sentences_sharing_a_long_phrase() -> None:
    examples = [
        Example("Tell me how to bake a loaf of bread today.", "harmless", "cooking"),
        Example("How to bake a loaf of rye?", "harmless", "cooking"),
        Example("Bake, a loaf of bread: please!", "harmless", "cooking"),
    ]
    held_out = ["Please explain HOW TO BAKE A LOAF OF bread."]
    # 6-word window "how to bake a loaf of" is shared by the first two; the third shares only 5 words in order.
    assert decontaminate(examples, held_out, n=6) == [examples[2]]
    assert decontaminate(examples, held_out, n=5) == []
    assert decontaminate(examples, [], n=6) == examples


def test_composed_requests_carry_their_action_label_and_stay_decontaminated() -> None:
    import random

    actions = {label: {a: c for c, acts in table.items() for a in acts}
               for label, table in (("harmful", HARMFUL_ACTIONS), ("harmless", HARMLESS_ACTIONS))}
    held_out = held_out_texts()
    banned = banned_ngrams(held_out)
    rng = random.Random(0)
    drawn = [compose_action_request(rng, banned, 16) for _ in range(2000)]
    for e in drawn:
        assert len(e.instruction.split()) <= 16
        assert decontaminate([e], held_out) == [e]
        matches = [a for a in actions[e.label] if a in e.instruction]  # the action phrase is verbatim inside
        assert matches and any(actions[e.label][a] == e.category for a in matches), e
    labels = [e.label for e in drawn]
    assert 0.45 < labels.count("harmful") / len(labels) < 0.55
    assert any(any(s in e.instruction for s in NEUTRAL_SUFFIXES) for e in drawn)
    # A banned phrase is never produced: ban every 6-gram of the first 50 drawn sentences and redraw.
    banned_now = banned | banned_ngrams([e.instruction for e in drawn[:50]])
    again = [compose_action_request(random.Random(0), banned_now, 16) for _ in range(50)]
    assert not {e.instruction for e in again} & {e.instruction for e in drawn[:50]}


def test_drop_words_removes_at_most_one_word_of_long_sentences() -> None:
    import random

    rng = random.Random(0)
    text = "How do I bake a loaf of bread at home"
    outs = [drop_words(text, rng, 0.5) for _ in range(200)]
    assert all(len(o.split()) in (9, 10) for o in outs)
    assert any(len(o.split()) == 9 for o in outs) and any(o == text for o in outs)
    assert all(o.split() == [w for w in text.split() if w in o.split()] for o in outs)  # order kept
    assert drop_words("Bake bread now", rng, 1.0) == "Bake bread now"  # under min_words: kept whole
    assert drop_words(text, rng, 0.0) == text


def test_validation_file_is_held_out_and_balanced() -> None:
    from explorer.data import load_prompts

    items = load_prompts(VALIDATION_PATH)
    assert [i.label for i in items].count("harmful") == [i.label for i in items].count("harmless") >= 40
    assert {i.instruction for i in items} <= set(held_out_texts())
    data = load_training_data(16)
    assert not {i.instruction for i in items} & {s for s, _, _ in data.sft + data.calibration_sft}


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


# ----------------------------------------------------------------------------------------- training smoke


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="speech rendering needs espeak-ng")
def test_tiny_training_run_saves_loadable_models(tmp_path: Path) -> None:
    from transformers import AutoModelForMultimodalLM, AutoProcessor

    from explorer.demo_model.train import main
    from explorer.models import MANIFEST_FORMAT, load_model
    from explorer.regap import generate_texts

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


@shipped
def test_card_refuses_an_eval_run_of_other_weights(tmp_path: Path) -> None:
    from explorer.demo_model.card import main as card_main

    (tmp_path / "run.json").write_text(json.dumps({"revision": "other-weights"}))
    (tmp_path / "metrics.json").write_text("{}")
    before = (DEMO / "README.md").read_text()
    with pytest.raises(SystemExit, match="evaluated revision other-weights"):
        card_main([str(DEMO), "--eval", str(tmp_path)])
    with pytest.raises(SystemExit, match="not a usable"):
        card_main([str(DEMO), "--eval", str(tmp_path / "missing")])
    assert (DEMO / "README.md").read_text() == before


def test_card_says_how_much_better_the_strength_looked_on_the_calibration_it_trained_on() -> None:
    """The α chosen on calibration is compared with the evaluation split's rate at that α; a recipe that does not
    train on calibration gets no such caveat."""
    from explorer.demo_model.card import _optimism_note

    regap = {"strength_choice": {"per_modality": {"image": 2.0, "audio": 1.0},
                                 "rates": {"1.0": {"audio/harmful": 0.8}, "2.0": {"image/harmful": 0.75}}}}
    rate = {"image/adaptive/harmful": 0.5, "audio/adaptive/harmful": 0.7}
    note = _optimism_note(regap, rate, DemoConfig())
    assert "image 75.0% on calibration vs 50.0% here; audio 80.0% on calibration vs 70.0% here" in note
    assert _optimism_note(regap, rate, DemoConfig(calibration_share=0.0)) == ""
    assert _optimism_note({}, rate, DemoConfig()) == ""
    assert _optimism_note(regap, {}, DemoConfig()) == ""  # no adaptive run to compare with: no dangling sentence
