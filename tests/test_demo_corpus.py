"""Tests for explorer.demo_model.corpus and its data tables: sizes, held-out sentences never trained on, composition."""

from __future__ import annotations

from explorer.demo_model.corpus import (
    HARMFUL,
    HARMFUL_ACTIONS,
    HARMLESS,
    HARMLESS_ACTIONS,
    NEUTRAL_SUFFIXES,
    Example,
    banned_ngrams,
    compose_action_request,
    decontaminate,
    drop_words,
    generate_instructions,
)
from explorer.demo_model.data import (
    VALIDATION_PATH,
    held_out_texts,
    load_training_data,
)
from explorer.inputs.data import load_builtin


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
    from explorer.inputs.data import load_prompts

    items = load_prompts(VALIDATION_PATH)
    assert [i.label for i in items].count("harmful") == [i.label for i in items].count("harmless") >= 40
    assert {i.instruction for i in items} <= set(held_out_texts())
    data = load_training_data(16)
    assert not {i.instruction for i in items} & {s for s, _, _ in data.sft + data.calibration_sft}
