"""Every figure from its run (explorer/report/figures.py): each marked figure in README.md, docs/ and BENCHMARKS.md equals
what its recorded file says; a changed record makes the check fail (and `--write` brings the text back in line);
and a percentage or speed-up typed outside a marker fails unless the allow-list below names it with its reason.
Quick: it reads JSON and Markdown, no model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from explorer.report import figures

ROOT = Path(__file__).resolve().parent.parent

#: The documents whose hand-typed measurements are guarded.
GUARDED = ("README.md", "docs/app.md", "BENCHMARKS.md")
#: A percentage ("40.9%") or a speed-up ("5.3×"; not a grid such as "2×2").
MEASURE_LIKE = re.compile(r"\d(?:[\d.,]*\d)?\s?%|\d(?:[\d.,]*\d)?\s?×(?!\s?\d)")
#: Percentages and speed-ups that may stand outside a marker: (document, the phrase that holds it, why it is no
#: measurement). A phrase must appear on the line, and the number must lie inside the phrase.
ALLOWED: list[tuple[str, str, str]] = [
    ("README.md", "95% Wilson", "a definition: the confidence level of the intervals metrics.json holds"),
    ("README.md", "95% stratified bootstrap", "a definition: the confidence level of the AUROC intervals"),
    ("README.md", "95% intervals and counts", "a definition: what compare.html shows"),
    ("docs/app.md", "≤ 0.01% pitch error",
     "a bound that follows from a constant of the code (uploads._MAX_RATIO_DENOMINATOR = 1,000), not a measurement"),
    ("BENCHMARKS.md", "The goal is 4× at batch 16", "a target, not a result"),
]


def _unmarked(text: str) -> str:
    """The text with every marked figure removed (its lines kept, so that line numbers still match)."""
    return figures.MARKER.sub(lambda m: "\n" * m[0].count("\n"), text)


def _copy_checkout(tmp_path: Path) -> Path:
    """The documents and every recorded source (with the generations the derived figures read) under tmp_path,
    every figure written from its source, so that each test starts from agreement whatever the checkout's state."""
    paths = {p.relative_to(ROOT) for pattern in figures.DOCUMENTS for p in ROOT.glob(pattern)}
    for source in figures.SOURCES.values():
        paths.add(Path(source))
        if source.endswith("metrics.json"):
            paths.add(Path(source).with_name("generations.jsonl"))
    for rel in paths:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, tmp_path / rel)
    figures.write(tmp_path)
    return tmp_path


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def test_every_marked_figure_equals_its_recorded_value():
    marked, wrong = figures.check(ROOT)
    assert not wrong, ("figures that differ from their recorded source (`python -m explorer.report.figures --write` "
                       "rewrites them):\n" + "\n".join(f.describe(ROOT) for f in wrong))
    per_document = {doc: sum(f.path == ROOT / doc for f in marked) for doc in GUARDED}
    assert all(per_document.values()), f"a guarded document lost its marked figures: {per_document}"


def test_a_changed_record_fails_the_check_and_write_restores_it(tmp_path, capsys):
    root = _copy_checkout(tmp_path)
    summary, gallery = root / figures.SOURCES["eval_summary"], root / figures.SOURCES["gallery"]
    key = "image/adaptive/harmful"
    before = figures.FORMATS["pct1"](json.loads(summary.read_text())["refusal_rate"][key])
    rate = 0.123 if before != "12.3%" else 0.456
    whole_story = json.loads(gallery.read_text())["harmful_whole_story"]
    _edit_json(summary, lambda d: d["refusal_rate"].__setitem__(key, rate))
    _edit_json(gallery, lambda d: d.__setitem__("harmful_whole_story", whole_story + 1))
    benchmarks = (root / "BENCHMARKS.md").read_text()

    _, wrong = figures.check(root)
    found = sorted((f.path.relative_to(root).as_posix(), f.spec, f.written, f.recorded) for f in wrong)
    after = figures.FORMATS["pct1"](rate)
    assert found == [
        ("README.md", f"eval_summary:refusal_rate.{key}:pct1", before, after),
        ("docs/app.md", "gallery:harmful_whole_story:int", str(whole_story), str(whole_story + 1)),
    ]
    assert figures.main(["--check", "--root", str(root)]) == 1
    printed = capsys.readouterr().out
    line = next(f.line for f in wrong if f.path.name == "README.md")
    assert f"README.md:{line}: eval_summary:refusal_rate.{key}:pct1: written {before!r}, recorded {after!r}" in printed

    assert figures.main(["--write", "--root", str(root)]) == 0
    assert figures.check(root)[1] == []
    assert f"-->{after}<!-- /fig -->" in (root / "README.md").read_text()
    assert (root / "BENCHMARKS.md").read_text() == benchmarks  # untouched: none of its figures changed


def test_derived_and_block_figures_follow_their_records(tmp_path):
    root = _copy_checkout(tmp_path)
    generations, other = (root / Path(figures.SOURCES[name]).with_name("generations.jsonl")
                          for name in ("speech_library", "speech_espeak"))
    rows = [json.loads(line) for line in generations.read_text().splitlines()]
    theirs = {(r["id"], r["modality"], r["mode"]): r["text"] for r in map(json.loads, other.read_text().splitlines())}
    agreeing = next(r for r in rows if (r["modality"], r["mode"]) == ("audio", "off")
                    and r["text"] == theirs[(r["id"], "audio", "off")])
    agreeing["text"] += " (edited)"
    generations.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = root / figures.SOURCES["legibility"]
    table.write_text(table.read_text() + "| one more row |\n")

    _, wrong = figures.check(root)
    by_spec = {f.spec: f for f in wrong}
    assert set(by_spec) == {"speech_same_answer:audio/off:int", "legibility::block"}
    same = by_spec["speech_same_answer:audio/off:int"]
    assert int(same.recorded) == int(same.written) - 1  # one answer fewer agrees between the two engines
    block = by_spec["legibility::block"]
    assert "| one more row |" in block.recorded and "| one more row |" not in block.written


def test_a_spec_that_cannot_be_read_is_reported_with_its_place(tmp_path):
    root = _copy_checkout(tmp_path)
    (root / "docs" / "extra.md").write_text(
        "first line\n"
        "a <!-- fig: eval_summary:refusal_rate.image/nowhere/harmful:pct1 -->1%<!-- /fig --> figure\n"
        "b <!-- fig: nosuch:x:pct1 -->1%<!-- /fig --> and c <!-- fig: gallery:harmful_count:pct9 -->1<!-- /fig -->\n"
        "d <!-- fig: gallery:harmful_count:int -->12\n")
    _, wrong = figures.check(root)
    messages = [f.describe(root) for f in wrong if f.path.name == "extra.md"]
    assert len(messages) == 4 and len(wrong) == 4, messages
    assert messages[0].startswith("docs/extra.md:2: ") and "has no 'refusal_rate.image/nowhere" in messages[0]
    assert messages[1].startswith("docs/extra.md:3: ") and "unknown source 'nosuch'" in messages[1]
    assert "unknown format 'pct9'" in messages[2]
    assert "not closed" in messages[3]
    assert figures.main(["--write", "--root", str(root)]) == 1  # written where it can, but said


def test_paths_and_formats():
    assert figures.parse_path("regap.mode_strengths.adaptive.image") == ["regap", "mode_strengths", "adaptive", "image"]
    assert figures.parse_path("rates.[0.25].image/harmful") == ["rates", "0.25", "image/harmful"]
    assert figures.parse_path("") == []
    formats = figures.FORMATS
    assert (formats["pct1"](0.05454545), formats["pct0"](0.725), formats["g"](2.0), formats["g"](0.25)) == \
        ("5.5%", "72%", "2", "0.25")
    assert (formats["int"](2701), formats["int"](7.0), formats["count"]([1, 2, 3]), formats["times"](5.29)) == \
        ("2,701", "7", "3", "5.3×")
    with pytest.raises(ValueError, match="not a whole number"):
        formats["int"](7.5)


def test_no_measurement_is_typed_outside_a_marker():
    unexplained, used = [], set()
    for doc in GUARDED:
        for number, line in enumerate(_unmarked((ROOT / doc).read_text(encoding="utf-8")).splitlines(), 1):
            for match in MEASURE_LIKE.finditer(line):
                allowed = [entry for entry in ALLOWED if entry[0] == doc and entry[1] in line and match[0] in entry[1]]
                used.update(entry[1] for entry in allowed)
                if not allowed:
                    unexplained.append(f"{doc}:{number}: {match[0]!r} in {line.strip()[:100]!r}")
    assert not unexplained, ("a percentage or speed-up outside a figure marker: mark it with its recorded source "
                             "(explorer/report/figures.py), or, if it is no measurement, add it to ALLOWED with the reason:\n"
                             + "\n".join(unexplained))
    stale = {entry[1] for entry in ALLOWED} - used
    assert not stale, f"allow-list entries no longer needed (remove them): {sorted(stale)}"


def test_the_guard_catches_a_typed_figure():
    line = "ReGap brings refusals to 56.4% on the demo, 5.3× faster at batch 16; a 2×2 grid; 95% intervals and counts"
    assert [m[0] for m in MEASURE_LIKE.finditer(line)] == ["56.4%", "5.3×", "95%"]
    assert MEASURE_LIKE.findall(_unmarked("to <!-- fig: a:b:pct1 -->40.9%<!-- /fig --> of them")) == []
