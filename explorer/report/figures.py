"""Every figure from its run: the measured numbers in the docs are written from the files that recorded them.

Why: a number typed by hand goes stale the day its run is redone (the README once quoted a repair rate two
checkpoints old, while the card beside it had the current one). So a measured figure sits between markers that
name where it comes from, and this module rewrites or checks it:

    <!-- fig: eval_summary:refusal_rate.image/adaptive/harmful:pct1 -->40.9%<!-- /fig -->

The spec is `SOURCE:PATH:FORMAT`. SOURCE names a recorded file of `SOURCES`, or a computation over recorded files
of `DERIVED` (few, named, each with its reason). For a file, PATH is the keys into it joined by "." (a key may hold
"/", as metrics keys do; a key that holds "." goes in brackets, `rates.[0.25]`; a number indexes a list); for a
computation, PATH is its argument. FORMAT is one of `FORMATS`; `count` is the length of what PATH names, and
`block` puts a whole text file (a table a benchmark printed) between the markers.

    python -m explorer.report.figures --check   # exit 1, listing file, line, written and recorded for each that differs
    python -m explorer.report.figures --write   # rewrite every marked figure from its source

>>> parse_path("strength_choices.adaptive.rates.[0.25].image/harmful")
['strength_choices', 'adaptive', 'rates', '0.25', 'image/harmful']
>>> FORMATS["pct1"](0.4090909)
'40.9%'
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

from explorer.core.storage import write_atomic

__all__ = ["DERIVED", "DOCUMENTS", "FORMATS", "MARKER", "SOURCES", "Figure", "Records", "check", "figures_in",
           "main", "parse_path", "recorded", "write"]

ROOT = Path(__file__).resolve().parents[2]

#: The recorded files a figure may quote, by short name (paths from the repository root).
SOURCES: dict[str, str] = {
    "eval_summary": "assets/demo_model/eval_summary.json",  # the demo's `eval --strength auto` run (the card's)
    "measurements": "assets/demo_model/measurements.json",  # `python -m explorer.demo_model.measure`
    "gallery": "assets/demo_model/gallery.json",  # `python -m explorer.demo_model.showcase`
    "speech_library": "benchmarks/results/speech_engines/library/metrics.json",
    "speech_espeak": "benchmarks/results/speech_engines/espeak-ng/metrics.json",
    "legibility": "benchmarks/results/legibility.md",  # `benchmarks/legibility.py`'s output
    # `benchmarks/judge_agreement.py` on the XSTest v2 completions (commit d7bb5bd), the phrase judge of today
    "judge_agreement": "benchmarks/results/judge_agreement.md",
    # issue 22's throwaway prototype (docs/demo-prototype.md): counts only, its code is not in the repository
    "demo_prototype": "benchmarks/results/demo_prototype.json",
    # the next demo's parts as they are built (docs/demo-build.md)
    "demo_text_adapter": "benchmarks/results/demo_text_adapter.json",  # benchmarks/demo_text_adapter.py
    "demo_reader": "benchmarks/results/demo_reader.json",  # benchmarks/demo_reader.py
    # the text adapter's recipes and strengths tried (benchmarks/demo_text_adapter.py --variant NAME)
    "demo_text_adapter_variants": "benchmarks/results/demo_text_adapter_variants.json",
    "demo_collapse": "benchmarks/results/demo_collapse.json",
    "demo_speech_reader": "benchmarks/results/demo_speech_reader.json",  # benchmarks/demo_speech_reader.py
    "demo_parts": "benchmarks/results/demo_parts.json",  # benchmarks/demo_parts.py: the committed parts re-measured
    # benchmarks/startup.py --runs 2 --out …, on the shipped demo and on the next demo's assembled folder
    "startup_demo": "benchmarks/results/startup_demo.json",
    "startup_demo_next": "benchmarks/results/startup_demo_next.json",
    # benchmarks/startup.py --runs 2 --out …, the shipped demo behind the launcher's status page (docs/app.md)
    "startup_launcher": "benchmarks/results/startup_launcher.json",
}

#: The documents whose figures are marked (globs from the repository root).
DOCUMENTS: tuple[str, ...] = ("README.md", "BENCHMARKS.md", "docs/*.md")

MARKER = re.compile(r"<!-- fig: (?P<spec>[^>]*?) -->(?P<value>(?:(?!<!-- fig:).)*?)<!-- /fig -->", re.DOTALL)
_OPENING = "<!-- fig:"
_KEY = re.compile(r"\[([^\]]*)\]|([^.\[\]]+)")


def _pct(decimals: int) -> Callable[[Any], str]:
    return lambda x: f"{100 * float(x):.{decimals}f}%"


def _fixed(decimals: int) -> Callable[[Any], str]:
    return lambda x: f"{float(x):.{decimals}f}"


def _integer(x: Any) -> str:
    """A count, with thousands separated as the docs write them ("2,701"); a fraction is an error, not rounded."""
    if isinstance(x, bool) or float(x) != int(x):
        raise ValueError(f"{x!r} is not a whole number (format int)")
    return f"{int(x):,}"


#: How a recorded value is written. pct1: 0.409 → "40.9%"; g: 2.0 → "2"; times: 5.29 → "5.3×"; count: len().
FORMATS: dict[str, Callable[[Any], str]] = {
    "pct0": _pct(0), "pct1": _pct(1), "f0": _fixed(0), "f1": _fixed(1), "f2": _fixed(2), "f3": _fixed(3),
    "g": lambda x: f"{float(x):g}", "int": _integer, "count": lambda x: _integer(len(x)),
    "times": lambda x: f"{float(x):.1f}×", "block": lambda x: "\n" + str(x).strip("\n") + "\n",
    "str": str,  # a recorded name (a ranking's winner, say), quoted as it is
}


def parse_path(path: str) -> list[str]:
    """The keys of a PATH: split at ".", except inside brackets (a key such as an α "0.25")."""
    keys = [bracketed or plain for bracketed, plain in _KEY.findall(path)]
    if path and not keys:
        raise ValueError(f"cannot read the path {path!r}")
    return keys


def _dig(value: Any, keys: list[str], where: str) -> Any:
    for i, key in enumerate(keys):
        if isinstance(value, list) and re.fullmatch(r"-?\d+", key):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            have = ", ".join(list(value)[:12]) if isinstance(value, dict) else type(value).__name__
            raise KeyError(f"{where} has no {'.'.join(keys[: i + 1])!r} (there: {have})")
    return value


class Records:
    """The recorded files under one repository root, each read once however many figures quote it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._read: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in SOURCES:
            raise KeyError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES) + sorted(DERIVED))}")
        if name not in self._read:
            path = self.root / SOURCES[name]
            text = path.read_text(encoding="utf-8")
            self._read[name] = json.loads(text) if path.suffix == ".json" else text
        return self._read[name]

    def generations(self, name: str) -> dict[tuple[str, str, str], dict[str, Any]]:
        """The `generations.jsonl` beside a source's `metrics.json`, keyed by (id, modality, mode)."""
        key = f"{name}/generations"
        if key not in self._read:
            path = (self.root / SOURCES[name]).with_name("generations.jsonl")
            rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            self._read[key] = {(r["id"], r["modality"], r["mode"]): r for r in rows}
        return self._read[key]


def _speech_agreement(field: str) -> Callable[[Records, str], int]:
    """How many items of one "<modality>/<mode>" got the same `field` (the answer's text, or its refusal verdict)
    from both speech engines: the two recorded runs differ only in the engine, so this is what the engine changes."""

    def count(files: Records, job: str) -> int:
        modality, mode = job.split("/")
        a, b = files.generations("speech_library"), files.generations("speech_espeak")
        keys = [k for k in a if k[1:] == (modality, mode)]
        if not keys or set(keys) != {k for k in b if k[1:] == (modality, mode)}:
            raise ValueError(f"the two speech-engine runs do not hold the same {job} items")
        return sum(a[k][field] == b[k][field] for k in keys)

    return count


#: Figures computed from recorded files, where no file holds the number itself.
DERIVED: dict[str, Callable[[Records, str], Any]] = {
    "speech_same_answer": _speech_agreement("text"),
    "speech_same_verdict": _speech_agreement("refused"),
}


def recorded(spec: str, files: Records) -> str:
    """The text a figure's spec says should be written, from its source (raises with the reason if it cannot)."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise ValueError(f"a figure spec is SOURCE:PATH:FORMAT, got {spec!r}")
    source, path, fmt = parts
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if source in DERIVED:
        value = DERIVED[source](files, path)
    else:
        value = _dig(files.get(source), parse_path(path), SOURCES.get(source, source))
    return FORMATS[fmt](value)


@dataclass(frozen=True)
class Figure:
    """One marked figure: where it is, what it says, and what its source says (or why that could not be read)."""

    path: Path
    line: int
    spec: str
    written: str
    recorded: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.written == self.recorded

    def describe(self, root: Path = ROOT) -> str:
        """`file:line: spec: written '…', recorded '…'`; for a block, its first line that differs."""
        where = f"{self.path.relative_to(root) if self.path.is_relative_to(root) else self.path}:{self.line}"
        if self.error is not None:
            return f"{where}: {self.spec}: {self.error}"
        written, recorded = self.written.strip(), (self.recorded or "").strip()
        if "\n" in written + recorded:
            pairs = enumerate(zip_longest(written.splitlines(), recorded.splitlines(), fillvalue=""), 1)
            index, (written, recorded) = next(((i, p) for i, p in pairs if p[0] != p[1]), (0, (written, recorded)))
            where += f" (its line {index})"
        return f"{where}: {self.spec}: written {written!r}, recorded {recorded!r}"


def _documents(root: Path) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in root.glob(pattern) if p.is_file()})


def figures_in(path: Path, files: Records) -> list[Figure]:
    """Every marked figure of one document, each with its recorded value; a marker left open is an error too."""
    text = path.read_text(encoding="utf-8")
    found: list[Figure] = []
    for match in MARKER.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        value: str | None = None
        error: str | None = None
        try:
            value = recorded(match["spec"], files)
        except (KeyError, ValueError, IndexError, TypeError, OSError) as err:
            error = str(err).strip("\"'")
        found.append(Figure(path, line, match["spec"], match["value"], value, error))
    if text.count(_OPENING) != len(found):
        found.append(Figure(path, 0, "", "", None, f"{text.count(_OPENING)} '{_OPENING}' openings but {len(found)} "
                            "complete markers: one is not closed with <!-- /fig --> or holds another"))
    return found


def check(root: Path = ROOT) -> tuple[list[Figure], list[Figure]]:
    """(every marked figure, those that differ from their source or cannot be read) over `DOCUMENTS`."""
    files = Records(root)
    figures = [f for doc in _documents(root) for f in figures_in(doc, files)]
    return figures, [f for f in figures if not f.ok]


def write(root: Path = ROOT) -> tuple[list[Figure], list[Figure]]:
    """Rewrite every readable figure from its source; → (figures changed, figures whose source could not be read,
    which are left as written)."""
    files = Records(root)
    changed: list[Figure] = []
    broken: list[Figure] = []
    for doc in _documents(root):
        figures = figures_in(doc, files)
        broken += [f for f in figures if f.error is not None]
        stale = [f for f in figures if f.error is None and not f.ok]
        if not stale:
            continue

        def fill(match: re.Match[str]) -> str:
            try:
                value = recorded(match["spec"], files)
            except (KeyError, ValueError, IndexError, TypeError, OSError):
                return match[0]
            return f"<!-- fig: {match['spec']} -->{value}<!-- /fig -->"

        write_atomic(doc, MARKER.sub(fill, doc.read_text(encoding="utf-8")))
        changed += stale
    return changed, broken


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m explorer.report.figures", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="list every figure that differs; exit 1 if any")
    action.add_argument("--write", action="store_true", help="rewrite every marked figure from its source")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.write:
        changed, broken = write(root)
        for figure in changed:
            print(f"rewrote {figure.describe(root)}")
        for figure in broken:
            print(f"cannot read {figure.describe(root)}", file=sys.stderr)
        print(f"{len(changed)} figure(s) rewritten, {len(broken)} unreadable")
        return 1 if broken else 0
    figures, wrong = check(root)
    for figure in wrong:
        print(figure.describe(root))
    print(f"{len(figures)} marked figure(s) in {len(_documents(root))} document(s); {len(wrong)} differ from their "
          "recorded source")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
