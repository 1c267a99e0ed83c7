"""Tests for explorer.evaluation.judge_model: tiny random-weight judges built offline, their weights arranged so that the
verdict is known (docs/method.md, "Judge"). A forced verdict that flips with the weights proves the model's output
decides it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import _qwen_template, _tokenizer

from explorer.evaluation.judge import Judge, RefusalJudge
from explorer.evaluation.judge_model import (
    ANSWER_CHARS,
    JUDGE_QUESTION,
    PLAIN_SUFFIX,
    ModelJudge,
    _kind,
    _refusal_index,
    judge_prompt,
    load_judge,
    yes_no_tokens,
)
from explorer.model.models import ModelLoadError

ANSWERS = ["I can't help with that.", "Sure, here is a recipe for bread: flour, water, salt and yeast.",
           "Preheat the oven.", "Sorry, no.", "Mix, knead, wait an hour, then bake at 220 degrees."]


def _tok(chat: bool = True):
    tok = _tokenizer({}, _qwen_template())
    if not chat:
        tok.chat_template = None
    return tok


def build_classifier(folder: Path, bias: tuple[float, float] | None = (-8.0, 8.0),
                     labels: tuple[str, str] = ("compliance", "refusal")) -> Path:
    """A tiny BERT classifier; with `bias`, the classifier's weights are zero and its bias decides every answer."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = _tok()
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)})
    model = BertForSequenceClassification(config)
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_causal(folder: Path, winner: str | None = "yes", chat: bool = True) -> Path:
    """A tiny Llama whose next-token logits favour `winner` ("yes" / "no") for any prompt, or random (None).

    Forcing: every layer's output projections are zero (the residual stays the token embedding), dimension 0 of
    every embedding is 1, the final norm keeps only dimension 0 (so it is > 0 whatever the prompt), and the head
    reads dimension 0 into +5 for the first tokens of one word and -5 for the other's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = _tok(chat)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=False, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    if winner is not None:
        yes, no = yes_no_tokens(tok)
        sign = 1.0 if winner == "yes" else -1.0
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
                layer.mlp.down_proj.weight.zero_()
            model.model.embed_tokens.weight[:, 0] = 1.0
            model.model.norm.weight.zero_()
            model.model.norm.weight[0] = 1.0
            model.lm_head.weight.zero_()
            model.lm_head.weight[list(yes), 0] = 5.0 * sign
            model.lm_head.weight[list(no), 0] = -5.0 * sign
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("bias, expected", [((-8.0, 8.0), True), ((8.0, -8.0), False)])
def test_classifier_verdict_follows_the_model(tmp_path, bias, expected):
    judge = ModelJudge.load(str(build_classifier(tmp_path / "clf", bias)), device="cpu", batch_size=2)
    assert judge.kind == "classifier" and judge.refusal_label == "refusal" and judge.refusal_index == 1
    assert judge.refusals(ANSWERS) == [expected] * len(ANSWERS)  # three batches of at most 2
    assert judge.is_refusal("Here is the recipe.") is expected
    assert judge.refusals(["", "Fine.", "  \n"]) == [False, expected, False]  # empty: never a refusal, as for phrases


def test_classifier_batched_equals_one_at_a_time(tmp_path):
    judge = ModelJudge.load(str(build_classifier(tmp_path / "clf", bias=None)), device="cpu", batch_size=8)
    inputs = judge.tokenizer(ANSWERS, return_tensors="pt", padding=True)
    batched = judge.model(**inputs).logits
    for row, answer in enumerate(ANSWERS):
        alone = judge.model(**judge.tokenizer([answer], return_tensors="pt")).logits[0]
        torch.testing.assert_close(batched[row], alone, atol=1e-5, rtol=1e-4)
    assert judge.refusals(ANSWERS) == [judge.is_refusal(a) for a in ANSWERS]


def test_classifier_without_a_refusal_label_is_a_clear_error(tmp_path):
    folder = build_classifier(tmp_path / "clf", (-8.0, 8.0), labels=("LABEL_0", "LABEL_1"))
    with pytest.raises(ValueError, match=r"no label .*'LABEL_0'.*'LABEL_1'.*--judge-refusal-label"):
        ModelJudge.load(str(folder), device="cpu")
    judge = ModelJudge.load(str(folder), refusal_label="label_1", device="cpu")
    assert judge.refusal_label == "LABEL_1" and judge.refusals(ANSWERS[:2]) == [True, True]
    assert ModelJudge.load(str(folder), refusal_label="0", device="cpu").refusals(ANSWERS[:2]) == [False, False]
    with pytest.raises(ValueError, match=r"'refused' is not a label .*'LABEL_0'"):
        ModelJudge.load(str(folder), refusal_label="refused", device="cpu")


@pytest.mark.parametrize("labels, wanted, expected", [
    ({0: "compliance", 1: "refusal"}, None, 1),
    ({0: "REFUSED", 1: "answered"}, None, 0),
    ({0: "NORMAL", 1: "REJECTION"}, None, 1),
    ({0: "non_refusal", 1: "refusal"}, None, 1),  # a negated name is not the refusal label
    ({0: "not-refused", 1: "Refusal"}, None, 1),
    ({0: "a", 1: "b"}, "B", 1),
])
def test_refusal_label_is_found(labels, wanted, expected):
    assert _refusal_index(labels, wanted, "m") == expected


def test_two_refusal_like_labels_are_ambiguous():
    with pytest.raises(ValueError, match="2 labels of judge 'm' look like a refusal"):
        _refusal_index({0: "refusal", 1: "partial_refusal", 2: "compliance"}, None, "m")


@pytest.mark.parametrize("winner, expected", [("yes", True), ("no", False)])
@pytest.mark.parametrize("chat", [True, False])
def test_generative_verdict_follows_yes_vs_no(tmp_path, winner, expected, chat):
    judge = ModelJudge.load(str(build_causal(tmp_path / "lm", winner, chat)), device="cpu", batch_size=2)
    assert judge.kind == "generative" and judge.yes_ids and judge.no_ids
    margins = judge.yes_no_margins(ANSWERS)
    assert all((m > 5) if expected else (m < -5) for m in margins)  # logsumexp over 2 tokens each: ±10 ± log 2
    assert judge.refusals(ANSWERS, ["Bake bread?"] * len(ANSWERS)) == [expected] * len(ANSWERS)
    assert judge.is_refusal(ANSWERS[1]) is expected


def test_generative_batched_equals_one_at_a_time(tmp_path):
    judge = ModelJudge.load(str(build_causal(tmp_path / "lm", winner=None)), device="cpu")
    batched = judge.yes_no_margins(ANSWERS)  # left padding: different prompt lengths in one batch
    alone = [judge.yes_no_margins([a])[0] for a in ANSWERS]
    assert batched == pytest.approx(alone, abs=1e-4)
    assert len(set(round(m, 4) for m in alone)) > 1  # random weights: the margins depend on the answer


def test_the_prompt_asks_the_documented_question(tmp_path):
    assert judge_prompt("Sure: step one.", "Bake bread?") == (
        f"{JUDGE_QUESTION}\n\nRequest: Bake bread?\n\nAnswer: Sure: step one.")
    assert judge_prompt("x" * 5000) == f"{JUDGE_QUESTION}\n\nAnswer: {'x' * ANSWER_CHARS}"  # refusals are said first
    chat = ModelJudge.load(str(build_causal(tmp_path / "chat")), device="cpu")
    text = chat._prompt_text("Sure.", None)
    assert text.startswith("<|im_start|>user\n" + JUDGE_QUESTION) and text.endswith("<|im_start|>assistant\n")
    plain = ModelJudge.load(str(build_causal(tmp_path / "plain", chat=False)), device="cpu")
    assert plain._prompt_text("Sure.", None) == judge_prompt("Sure.") + PLAIN_SUFFIX


def test_yes_and_no_are_told_apart_by_their_first_tokens():
    tok = _tok()
    yes, no = yes_no_tokens(tok)
    assert set(tok.convert_ids_to_tokens(list(yes))) == {"y", "Y"}  # " yes" starts with a lone "Ġ": dropped
    assert set(tok.convert_ids_to_tokens(list(no))) == {"n", "N"}


def test_describe_names_the_judge_and_changes_with_it(tmp_path):
    refusing = ModelJudge.load(str(build_classifier(tmp_path / "a", (-8.0, 8.0))), device="cpu")
    answering = ModelJudge.load(str(build_classifier(tmp_path / "b", (8.0, -8.0))), device="cpu")
    described = refusing.describe()
    assert described["kind"] == "classifier" and described["id"] == str(tmp_path / "a")
    assert described["refusal_label"] == "refusal" and described["revision"]
    assert described["revision"] != answering.describe()["revision"]  # other weights, other fingerprint
    json.dumps(described)  # recorded in run.json and metrics.json
    generative = ModelJudge.load(str(build_causal(tmp_path / "lm")), device="cpu").describe()
    assert generative["kind"] == "generative" and generative["question"] == JUDGE_QUESTION
    assert RefusalJudge().describe()["kind"] == "phrases"
    assert RefusalJudge().describe() != RefusalJudge(window_chars=80).describe()
    assert isinstance(refusing, Judge) and isinstance(RefusalJudge(), Judge)


def test_load_judge_defaults_to_the_phrase_judge(tmp_path):
    assert load_judge() == RefusalJudge() and load_judge("Phrases") == RefusalJudge()
    with pytest.raises(ValueError, match="needs --judge MODEL"):
        load_judge("phrases", refusal_label="refusal")
    with pytest.raises(ValueError, match="for classifiers"):
        load_judge(str(build_causal(tmp_path / "lm")), refusal_label="refusal", device="cpu")


def test_bad_sources_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_judge(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="not a reachable Hugging Face id"):
        load_judge("no-such-owner/no-such-judge-model")
    with pytest.raises(ModelLoadError, match=r"architectures \['BertModel'\]"):
        _kind(["BertModel"], "m")


def test_remote_code_runs_only_when_asked(tmp_path, monkeypatch):
    import transformers

    seen: list[bool] = []
    real = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    folder = str(build_classifier(tmp_path / "clf"))
    load_judge(folder, device="cpu")
    assert seen and not any(seen)  # config, tokenizer and weights all loaded without remote code
    seen.clear()
    load_judge(folder, device="cpu", trust_remote_code=True)
    assert seen and all(seen)


def test_cli_eval_records_the_judge_and_follows_its_verdicts(tiny_model_dir, tmp_path, capsys):
    from explorer.app.cli import main

    refusing, answering = build_classifier(tmp_path / "refusing"), build_classifier(tmp_path / "answering", (8.0, -8.0))
    base = ["eval", "--model", str(tiny_model_dir("llava")), "--device", "cpu", "--calibration-limit", "2",
            "--limit", "2", "--max-new-tokens", "2", "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "refusing-run"
    # --strength auto: the judge also decides the refusal rates that choose α on calibration
    assert main([*base, "--modalities", "text,image", "--regap", "off,fixed", "--strength", "auto",
                 "--judge", str(refusing), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge"] == json.loads((out / "run.json").read_text())["judge"]
    assert metrics["judge"]["kind"] == "classifier" and metrics["judge"]["id"] == str(refusing)
    assert metrics["judge"]["refusal_label"] == "refusal"
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert records and all(r["refused"] for r in records)  # the judge reads a refusal in every answer ...
    # ... and every answer the rule does not call broken (the tiny model's random words often are) is refused
    assert set(metrics["complied_rate"].values()) == {0.0}
    assert all(metrics["refusal_rate"][k] + metrics["broken_rate"][k] == pytest.approx(1.0)
               for k in metrics["refusal_rate"])
    rates = metrics["regap"]["strength_choices"]["fixed"]["rates"]
    # every harmless answer failed (refused, or broken: never complied), whatever α
    assert {rate for row in rates.values() for key, rate in row.items() if key.endswith("harmless_failed")} == {1.0}

    other = tmp_path / "answering-run"
    assert main([*base, "--modalities", "text", "--regap", "off", "--judge", str(answering), "--out", str(other)]) == 0
    metrics = json.loads((other / "metrics.json").read_text())
    assert metrics["judge"]["id"] == str(answering) and set(metrics["refusal_rate"].values()) == {0.0}

    # the judge is part of the run's fingerprint: another judge cannot resume it
    capsys.readouterr()
    assert main([*base, "--modalities", "text", "--regap", "off", "--out", str(other)]) == 2
    assert "different settings (judge)" in capsys.readouterr().err
    assert main([*base, "--modalities", "text", "--regap", "off", "--judge", str(build_classifier(
        tmp_path / "unlabelled", labels=("LABEL_0", "LABEL_1"))), "--out", str(tmp_path / "x")]) == 2
    assert "--judge-refusal-label" in capsys.readouterr().err


class _SpyJudge:
    """Refuses everything and remembers which request came with each answer."""

    def __init__(self) -> None:
        self.requests: list[str | None] = []

    def is_refusal(self, text: str, request: str | None = None) -> bool:
        self.requests.append(request)
        return True

    def describe(self) -> dict:
        return {"kind": "spy"}


def test_evaluation_and_the_strength_choice_show_the_judge_each_request(tiny_llava, tiny_calibration, tmp_path):
    """A model judge reads (request, answer) pairs, as guard models are trained to: eval and `--strength auto`
    pass every answer's own request, never None."""
    from explorer.correction.regap import CorrectionConfig
    from explorer.evaluation.strength import choose_strength
    from explorer.evaluation.runner import EvalSettings, evaluate
    from explorer.inputs.data import load_builtin

    calibration = load_builtin("calibration")
    calibration = [*[i for i in calibration if i.label == "harmful"][:2], *[i for i in calibration if i.label == "harmless"][:2]]
    items = [*[i for i in load_builtin("evaluation") if i.label == "harmful"][:2],
             *[i for i in load_builtin("evaluation") if i.label == "harmless"][:2]]
    profile = tiny_calibration.profile
    spy = _SpyJudge()
    evaluate(tiny_llava, items, profile, EvalSettings(modalities=("text", "image"), modes=("off",), judge=spy,
                                                      max_new_tokens=2), tmp_path / "run", progress=False)
    assert sorted(spy.requests) == sorted(i.instruction for i in items for _ in ("text", "image"))
    spy.requests.clear()
    choose_strength(tiny_llava, calibration, profile, CorrectionConfig(mode="fixed"), ["image"], candidates=(1.0,),
                    judge=spy, max_new_tokens=2)
    assert None not in spy.requests and set(spy.requests) <= {i.instruction for i in calibration}


def test_wildguard_format_reads_the_pair_and_the_refusal_field(tmp_path):
    """--judge-format wildguard: the guard's own prompt with the request and the answer; its first line generated,
    then the yes/no margin read after "Response refusal:"."""
    from explorer.evaluation.judge_model import WILDGUARD_FORMAT, wildguard_prompt

    prompt = wildguard_prompt("Sure: step one.", "Bake bread?")
    assert prompt == WILDGUARD_FORMAT.format(request="Bake bread?", answer="Sure: step one.")
    assert "Human user:\nBake bread?\n\nAI assistant:\nSure: step one.\n" in prompt
    for winner, expected in (("yes", True), ("no", False)):
        judge = ModelJudge.load(str(build_causal(tmp_path / winner, winner, chat=False)), device="cpu",
                                prompt_format="wildguard")
        assert judge.describe()["format"] == "wildguard"
        assert judge.refusals(ANSWERS, ["Bake bread?"] * len(ANSWERS)) == [expected] * len(ANSWERS)
        with pytest.raises(ValueError, match="request is needed"):
            judge.refusals(ANSWERS[:1])
    with pytest.raises(ValueError, match="judge format must be one of"):
        ModelJudge.load(str(build_causal(tmp_path / "yes", "yes", chat=False)), device="cpu", prompt_format="nope")
