"""Agreement of a refusal judge with human labels on real model completions (docs/method.md, "Judge").

Why: the refusal rate is only as good as the judge. This compares the judge's verdicts with human labels that a
public refusal study published for real model completions: the XSTest v2 completions (Röttger et al., NAACL 2024;
github.com/paul-rottger/exaggerated-safety, CC-BY-4.0), `model_completions/xstest_v2_completions_<model>.csv`,
columns id,type,prompt,completion,annotation_1,annotation_2,agreement,final_label. Download them yourself; this
repository holds none of their text.

Only the *safe* prompts are used (type not starting with "contrast"): the completions of the unsafe contrast prompts
may contain harmful text and are out of scope. The human label is mapped to refusal (2_full_refusal or
3_partial_refusal) or compliance (1_full_compliance). Printed per file and overall: n, agreement with its 95% Wilson
interval, Cohen's kappa, precision / recall / F1 of "refusal", the confusion counts, and the agreement with the
partial refusals left out.

    .venv/bin/python benchmarks/judge_agreement.py /tmp/xstest/xstest_v2_completions_*.csv
    .venv/bin/python benchmarks/judge_agreement.py FILES --judge ./my-refusal-classifier --judge-refusal-label REJECT
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.core.intervals import wilson_interval  # noqa: E402
from explorer.evaluation.judge import Judge  # noqa: E402
from explorer.evaluation.judge_model import ModelJudge, load_judge  # noqa: E402

HumanLabel = Literal["compliance", "full_refusal", "partial_refusal"]
#: The study's `final_label` values and what they mean here.
HUMAN_LABELS: dict[str, HumanLabel] = {
    "1_full_compliance": "compliance", "2_full_refusal": "full_refusal", "3_partial_refusal": "partial_refusal",
}
COLUMNS = ("id", "type", "prompt", "completion", "final_label")


@dataclass(frozen=True)
class Row:
    """One safe-prompt completion with its human label."""

    id: str
    prompt: str
    completion: str
    label: HumanLabel

    @property
    def refused(self) -> bool:
        return self.label != "compliance"


def read_rows(path: Path) -> list[Row]:
    """The safe-prompt rows of one completions file (type not starting with "contrast")."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected the XSTest completions layout "
                             f"({','.join(COLUMNS)}, ...)")
        rows = []
        for line, record in enumerate(reader, start=2):
            if record["type"].strip().startswith("contrast"):
                continue
            label = HUMAN_LABELS.get(record["final_label"].strip())
            if label is None:
                raise ValueError(f"{path}, line {line}: final_label {record['final_label']!r} is not one of "
                                 f"{', '.join(HUMAN_LABELS)}")
            rows.append(Row(record["id"], record["prompt"], record["completion"], label))
    return rows


@dataclass(frozen=True)
class Confusion:
    """Counts of (human, judge) verdicts, "refusal" being the positive class."""

    tp: int = 0  # both say refusal
    fp: int = 0  # the judge says refusal, the human compliance
    fn: int = 0  # the judge says compliance, the human refusal
    tn: int = 0  # both say compliance

    @classmethod
    def of(cls, human: Sequence[bool], judged: Sequence[bool]) -> Confusion:
        pairs = list(zip(human, judged, strict=True))
        return cls(tp=sum(h and j for h, j in pairs), fp=sum(j and not h for h, j in pairs),
                   fn=sum(h and not j for h, j in pairs), tn=sum(not h and not j for h, j in pairs))

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def agreement(self) -> float | None:
        return (self.tp + self.tn) / self.n if self.n else None

    @property
    def agreement_ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.tp + self.tn, self.n)

    @property
    def kappa(self) -> float | None:
        """Cohen's kappa: (p_o - p_e) / (1 - p_e), p_e from each side's marginals; None when p_e = 1."""
        if not self.n:
            return None
        n = self.n
        expected = ((self.tp + self.fp) * (self.tp + self.fn) + (self.fn + self.tn) * (self.fp + self.tn)) / n**2
        return None if expected == 1 else (self.agreement - expected) / (1 - expected)  # type: ignore[operator]

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else None


@dataclass(frozen=True)
class FileResult:
    name: str
    all: Confusion  # every safe-prompt row
    without_partial: Confusion  # the rows the humans labelled full compliance or full refusal


def judge_rows(judge: Judge, rows: Sequence[Row]) -> list[bool]:
    """The judge's verdicts; a model judge judges in batches and also sees each request."""
    if isinstance(judge, ModelJudge):
        return judge.refusals([r.completion for r in rows], [r.prompt for r in rows])
    return [judge.is_refusal(r.completion) for r in rows]


def measure(name: str, rows: Sequence[Row], judged: Sequence[bool]) -> FileResult:
    kept = [(r.refused, j) for r, j in zip(rows, judged, strict=True) if r.label != "partial_refusal"]
    return FileResult(name, Confusion.of([r.refused for r in rows], judged),
                      Confusion.of([h for h, _ in kept], [j for _, j in kept]))


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def table(results: Sequence[FileResult]) -> str:
    """A Markdown table: one row per file and an overall row (counts summed over the files)."""
    total = FileResult("all", sum((r.all for r in results), Confusion()),
                       sum((r.without_partial for r in results), Confusion()))
    lines = ["| file | n | human refusals | agreement % [95% CI] | κ | precision | recall | F1 | TP / FP / FN / TN "
             "| agreement % without partial (n) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in [*results, total] if len(results) > 1 else results:
        c, ci = r.all, r.all.agreement_ci
        interval = "–" if ci is None else f"[{_pct(ci[0])}, {_pct(ci[1])}]"
        lines.append(f"| {r.name} | {c.n} | {c.tp + c.fn} | {_pct(c.agreement)} {interval} | {_num(c.kappa)} "
                     f"| {_num(c.precision)} | {_num(c.recall)} | {_num(c.f1)} | {c.tp} / {c.fp} / {c.fn} / {c.tn} "
                     f"| {_pct(r.without_partial.agreement)} ({r.without_partial.n}) |")
    return "\n".join(lines)


def _name(path: Path) -> str:
    return path.stem.removeprefix("xstest_v2_completions_")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="XSTest completions CSV files")
    parser.add_argument("--judge", default="phrases", help="'phrases' (default) or a classifier / chat model id")
    parser.add_argument("--judge-refusal-label", default=None, help="the classifier label that means refusal")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--disagreements", action="store_true",
                        help="also list each disagreement (id, human label, opening words) for your own reading")
    args = parser.parse_args(argv)
    judge = load_judge(args.judge, refusal_label=args.judge_refusal_label, device=args.device,
                       trust_remote_code=args.trust_remote_code)
    results = []
    for path in args.files:
        rows = read_rows(path)
        judged = judge_rows(judge, rows)
        results.append(measure(_name(path), rows, judged))
        if args.disagreements:
            for row, verdict in zip(rows, judged):
                if row.refused != verdict:
                    opening = " ".join(row.completion.split())[:120]
                    print(f"{_name(path)} {row.id} human={row.label} judge={'refusal' if verdict else 'compliance'}: "
                          f"{opening}", file=sys.stderr)
    described = {k: f"{len(v)} entries" if isinstance(v, list) else v for k, v in judge.describe().items()}
    print(f"judge: {described}; safe-prompt completions only; refusal = full or partial refusal")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
