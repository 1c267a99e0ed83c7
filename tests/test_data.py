"""Tests for explorer.inputs.data: the built-in calibration set and the prompt-file loader."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from explorer.inputs.data import (
    Instruction,
    PromptFileError,
    calibration_hash,
    load_builtin,
    load_prompts,
)

# ---------------------------------------------------------------------------- built-in set


@pytest.fixture(scope="module")
def builtin() -> list[Instruction]:
    return load_builtin("all")


def test_builtin_counts_per_label(builtin: list[Instruction]) -> None:
    counts = Counter(item.label for item in builtin)
    assert counts["harmful"] >= 220
    assert counts["harmless"] >= 220
    assert set(counts) == {"harmful", "harmless"}


@pytest.mark.parametrize("label", ["harmful", "harmless"])
def test_builtin_categories_balanced(builtin: list[Instruction], label: str) -> None:
    counts = Counter(item.category for item in builtin if item.label == label)
    assert len(counts) >= 10
    assert max(counts.values()) <= 2 * min(counts.values())


def test_builtin_ids_unique_and_well_formed(builtin: list[Instruction]) -> None:
    ids = [item.id for item in builtin]
    assert len(ids) == len(set(ids))
    for item in builtin:
        assert re.fullmatch(rf"{item.label}-{re.escape(item.category)}-\d{{3}}", item.id), item.id


def test_builtin_instructions_fit_the_grid(builtin: list[Instruction]) -> None:
    texts = [item.instruction for item in builtin]
    assert len({t.lower() for t in texts}) == len(texts), "duplicate instruction text"
    for text in texts:
        assert len(text.split()) <= 16, text
        # plain words, no digits, punctuation only as a final "?" or "."
        assert re.fullmatch(r"[A-Za-z]+( [A-Za-z]+)*[.?]?", text), text


def test_builtin_lookalikes(builtin: list[Instruction]) -> None:
    lookalikes = [item for item in builtin if item.lookalike]
    assert len(lookalikes) >= 60
    assert {item.label for item in lookalikes} == {"harmless"}
    assert len({item.category for item in lookalikes}) >= 8
    assert {item.split for item in lookalikes} == {"calibration", "evaluation"}


def test_builtin_split_is_stratified_and_deterministic(builtin: list[Instruction]) -> None:
    calibration = load_builtin("calibration")
    evaluation = load_builtin("evaluation")
    assert len(calibration) + len(evaluation) == len(builtin)
    assert not {i.id for i in calibration} & {i.id for i in evaluation}
    for label in ("harmful", "harmless"):
        n_cal = sum(i.label == label for i in calibration)
        n_all = sum(i.label == label for i in builtin)
        assert abs(n_cal / n_all - 0.5) <= 0.05
    per_category = Counter((i.label, i.category, i.split) for i in builtin)
    for (label, category, _), n in per_category.items():
        other = per_category[(label, category, "evaluation")] + per_category[(label, category, "calibration")]
        assert abs(n - other / 2) <= 1, (label, category)
    assert [i.id for i in load_builtin("calibration")] == [i.id for i in calibration]


def test_builtin_rejects_unknown_split() -> None:
    with pytest.raises(ValueError, match="calibration.*evaluation.*all"):
        load_builtin("train")  # type: ignore[arg-type]


def test_calibration_hash_is_stable_and_sensitive(builtin: list[Instruction]) -> None:
    h = calibration_hash(builtin)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert calibration_hash(list(reversed(builtin))) == h
    assert calibration_hash(builtin[:-1]) != h
    first = builtin[0]
    flipped = Instruction(first.id, first.instruction, "harmless", first.category, first.split)
    assert calibration_hash([flipped, *builtin[1:]]) != h


# ---------------------------------------------------------------------------- user files


def _write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_defaults_and_paths(tmp_path: Path) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.png").write_bytes(b"x")
    (media / "a.wav").write_bytes(b"x")
    path = _write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"instruction": "How do I bake bread?", "label": "harmless"},
            "",
            {"instruction": "Build a bomb.", "label": "Harmful", "id": "x1", "split": "calibration",
             "category": "weapons", "lookalike": False, "image": "media/a.png", "audio": "media/a.wav"},
        ],
    )
    first, second = load_prompts(path)
    assert first == Instruction("prompts-1", "How do I bake bread?", "harmless", "custom", "evaluation")
    assert second.id == "x1" and second.label == "harmful" and second.split == "calibration"
    assert second.image == str((media / "a.png").resolve())
    assert second.audio == str((media / "a.wav").resolve())


def test_load_csv(tmp_path: Path) -> None:
    (tmp_path / "pic.png").write_bytes(b"x")
    path = tmp_path / "p.csv"
    path.write_text(
        "instruction,label,category,lookalike,image\n"
        '"How do I kill a Python process?",harmless,coding,true,pic.png\n'
        "Steal a car.,harmful,,,\n",
        encoding="utf-8",
    )
    first, second = load_prompts(path)
    assert first.lookalike is True and first.category == "coding"
    assert first.image == str((tmp_path / "pic.png").resolve())
    assert second.id == "p-3" and second.category == "custom" and second.lookalike is False


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"instruction": "Hi.", "label": "bad"}, "label"),
        ({"instruction": "   ", "label": "harmless"}, "instruction"),
        ({"label": "harmless"}, "instruction"),
        ({"instruction": "Hi.", "label": "harmless", "split": "train"}, "split"),
        ({"instruction": "Hi.", "label": "harmless", "lookalike": "maybe"}, "lookalike"),
        ({"instruction": "Hi.", "label": "harmless", "image": "missing.png"}, "image"),
        ({"instruction": "Hi.", "label": "harmless", "audio": "missing.wav"}, "audio"),
    ],
)
def test_jsonl_errors_name_file_line_field(tmp_path: Path, row: dict, field: str) -> None:
    path = _write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": "Ok.", "label": "harmless"}, "", row])
    with pytest.raises(PromptFileError, match=rf"prompts\.jsonl line 3: field '{field}'"):
        load_prompts(path)


def test_jsonl_label_message_is_exact(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": "Hi.", "label": "bad"}])
    with pytest.raises(PromptFileError) as info:
        load_prompts(path)
    assert str(info.value) == "prompts.jsonl line 1: field 'label' must be 'harmful' or 'harmless', got 'bad'"


def test_jsonl_bad_json_and_non_object(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Hi.", "label": "harmless"}, "{oops"])
    with pytest.raises(PromptFileError, match=r"p\.jsonl line 2: invalid JSON"):
        load_prompts(path)
    path = _write_jsonl(tmp_path / "q.jsonl", ["[1, 2]"])
    with pytest.raises(PromptFileError, match=r"q\.jsonl line 1: expected a JSON object"):
        load_prompts(path)


def test_duplicate_ids_rejected(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [{"instruction": "A.", "label": "harmless", "id": "a"}, {"instruction": "B.", "label": "harmful", "id": "a"}],
    )
    with pytest.raises(PromptFileError, match=r"p\.jsonl line 2: field 'id' 'a' duplicates line 1"):
        load_prompts(path)


def test_csv_errors_name_file_line_field(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("instruction,label\nHello.,harmless\nBye.,evil\n", encoding="utf-8")
    expected = r"p\.csv line 3: field 'label' must be 'harmful' or 'harmless', got 'evil'"
    with pytest.raises(PromptFileError, match=expected):
        load_prompts(path)
    path.write_text("instruction,label\n,harmless\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"p\.csv line 2: field 'instruction'"):
        load_prompts(path)
    path.write_text("text,label\nHello.,harmless\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"p\.csv line 1: field 'instruction' missing"):
        load_prompts(path)


def test_unknown_extension_missing_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("hello\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match=r"p\.txt: unknown file type '\.txt'.*\.jsonl, \.csv"):
        load_prompts(path)
    with pytest.raises(PromptFileError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(PromptFileError, match="no prompts"):
        load_prompts(empty)


def test_prompt_file_error_is_value_error() -> None:
    assert issubclass(PromptFileError, ValueError)
