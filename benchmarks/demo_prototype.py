"""Tables of docs/demo-prototype.md, rendered from the prototype's recorded counts.

Why: the note decides the next demo model's design from these numbers, so the page must show exactly what the run
recorded (benchmarks/results/demo_prototype.json; `tests/test_demo_prototype.py` fails when the two differ). The
prototype's own code is throwaway and is not in the repository; the JSON says what each row ran.

    python benchmarks/demo_prototype.py            # print the tables
    python benchmarks/demo_prototype.py --write    # rewrite them between the markers of docs/demo-prototype.md

The single numbers in the page's prose are `explorer.report.figures` markers on the same record (`python -m explorer.report.figures
--write`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.core.intervals import wilson_interval

RECORD = ROOT / "benchmarks" / "results" / "demo_prototype.json"
PAGE = ROOT / "docs" / "demo-prototype.md"
DEV_SETS = ("advbench", "xstest_unsafe", "xstest_safe", "validation", "paraphrases")


def rate(k: int, n: int) -> str:
    """'k/n = p% [lo–hi]' with the Wilson 95% interval, or '–' for an empty group."""
    if not n:
        return "–"
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {100 * k / n:.0f}% [{100 * lo:.0f}–{100 * hi:.0f}]"


def language_table(recorded: dict[str, Any]) -> str:
    """Row 1: text refusals of each trained adapter on each development set."""
    lines = ["| adapter | set | harmful refused | harmless refused | broken |", "|---|---|---|---|---|"]
    for name, sets in recorded["row1_language"].items():
        for s in DEV_SETS:
            c = sets[s]
            lines.append(f"| {name} | {s} | {rate(c['harmful_refused'], c['n_harmful'])} | "
                         f"{rate(c['harmless_refused'], c['n_harmless'])} | {c['broken']}/{c['n']} |")
    return "\n".join(lines)


def repair_table(recorded: dict[str, Any]) -> str:
    """Row 2: uncorrected text and simulated image, then ReGap adaptive at the α_max chosen on calibration."""
    lines = [("| variant | text harmful refused | text harmless refused | image harmful refused | "
             "image harmless refused | largest AUROC drop, image vs text | "
             "ReGap adaptive (α_max) harmful / harmless / broken | fixed α: harmful refused / harmless refused / broken |"),
             "|---|---|---|---|---|---|---|---|"]
    for v in recorded["row2_repair"]:
        t, i = v["text"], v["image"]
        if "adaptive" in v:
            a = v["adaptive"]
            budget = "" if v["alpha_max_within_budget"] else ", none within budget: smallest shown"
            adaptive = (f"{rate(a['harmful_refused'], a['n_harmful'])} / {rate(a['harmless_refused'], a['n_harmless'])}"
                        f" / {a['broken']}/{a['n']} (α_max {v['alpha_max']}{budget}; layer {v['corrected_layer']} → "
                        f"probe {v['probe_layer']})")
            drop = f"{v['max_auroc_drop']:.3f}"
            fixed = "; ".join(f"α {alpha}: {f['harmful_refused']} / {f['harmless_refused']} / {f['broken']} of "
                              f"{f['n_harmful']} + {f['n_harmless']}" for alpha, f in v["fixed"].items())
        else:
            adaptive = drop = fixed = "not run"
        lines.append(f"| {v['variant']} | {rate(t['harmful_refused'], t['n_harmful'])} | "
                     f"{rate(t['harmless_refused'], t['n_harmless'])} | {rate(i['harmful_refused'], i['n_harmful'])} | "
                     f"{rate(i['harmless_refused'], i['n_harmless'])} | {drop} | {adaptive} | {fixed} |")
    return "\n".join(lines)


def probe_table(recorded: dict[str, Any]) -> str:
    """Row 1's proxy: per layer, the share of each development set a linear probe on the *base* states flags harmful."""
    per_set = recorded["row1_probe_base_states"]["layers"]
    columns = [(s, side) for s in DEV_SETS for side in ("harmful", "harmless") if per_set[s][0][f"n_{side}"]]
    lines = ["| layer | " + " | ".join(f"{s}: {side} flagged" for s, side in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for layer in range(len(per_set[DEV_SETS[0]])):
        cells = [per_set[s][layer] for s, _ in columns]
        lines.append(f"| {layer} | " + " | ".join(
            f"{100 * c[f'{side}_flagged'] / c[f'n_{side}']:.0f}%" for c, (_, side) in zip(cells, columns)) + " |")
    return "\n".join(lines)


def sweep_table(recorded: dict[str, Any]) -> str:
    """Row 3's calibration: each α_max candidate on the 60 + 60 in-house calibration rows, and whether its harmless
    failures (refused or broken) stay within text's + 5 points, the rule that picks α_max."""
    lines = ["| variant | α_max | harmful refused | harmless refused | broken | harmless failed | within budget |",
             "|---|---|---|---|---|---|---|"]
    for v in recorded["row2_repair"]:
        for c in v.get("calibration_sweep", []):
            lines.append(f"| {v['variant']} | {c['alpha_max']} | {rate(c['harmful_refused'], c['n_harmful'])} | "
                         f"{rate(c['harmless_refused'], c['n_harmless'])} | {c['broken']} | {c['harmless_failed']} | "
                         f"{'yes' if c['within_budget'] else 'no'} |")
    return "\n".join(lines)


def script_table(recorded: dict[str, Any]) -> str:
    """What the harmful requests got, per answer set: a refusal, the one trained generic compliance, an answer that
    began as the base model's and ended in the generic tail, or none of these (off script: the base model's own
    answer, which a demo must never show)."""
    lines = [("| variant | answers | answer tokens | refused (of which fused with the tail) | generic compliance | "
             "own start, generic tail | off script |"), "|---|---|---|---|---|---|---|"]
    for v in recorded["row2_repair"]:
        for name, a in v.get("harmful_answers", {}).items():
            refused = a["n_harmful"] - a["generic"] - a["generic_tail"] - a["off_script"]
            lines.append(f"| {v['variant']} | {name} | {v['answer_tokens']} | {rate(refused, a['n_harmful'])} "
                         f"({a['refused_with_tail']}) | "
                         f"{rate(a['generic'], a['n_harmful'])} | {rate(a['generic_tail'], a['n_harmful'])} | "
                         f"{rate(a['off_script'], a['n_harmful'])} |")
    return "\n".join(lines)


def reader_table(recorded: dict[str, Any]) -> str:
    """Row 4: two pixel readers on the development sets' requests: a whole-word tower (word boxes read as their own
    token) and a character reader (whole requests rendered by explorer.inputs.typography, read back exactly or not)."""
    words, chars = recorded["row4_reader"], recorded["row4_ctc_reader"]
    lines = [("| set | word boxes (one token) | whole-word tower: read as their own token | requests | "
             "character reader: read exactly, whitespace collapsed | raw string equal | character errors, collapsed |"),
             "|---|---|---|---|---|---|---|"]
    for name, w in words["sets"].items():
        c = chars["sets"][name]
        lines.append(f"| {name} | {w['boxes']} ({w['single_token']}) | {rate(w['read'], w['single_token'])} | "
                     f"{c['requests']} | {rate(c['exact_whitespace_collapsed'], c['requests'])} | "
                     f"{rate(c['exact'], c['requests'])} | {c['char_errors_whitespace_collapsed']} of {c['characters']} |")
    return "\n".join(lines)


def speech_table(recorded: dict[str, Any]) -> str:
    """Row 4, speech: the CTC reader of espeak-ng speech on the development sets' requests, spoken whole."""
    lines = ["| set | requests | read exactly (lower case, no punctuation) | word errors (edit distance) of words |",
             "|---|---|---|---|"]
    for name, r in recorded["row4_speech_reader"]["sets"].items():
        lines.append(f"| {name} | {r['requests']} | {rate(r['exact'], r['requests'])} | {r['word_errors']} of "
                     f"{r['words']} ({100 * r['word_errors'] / r['words']:.1f}%) |")
    return "\n".join(lines)


def facts_table(recorded: dict[str, Any]) -> str:
    """Timings and sizes the build plan rests on, as recorded (seconds on this machine's 2 cores)."""
    lines = ["| fact | recorded |", "|---|---|"]
    lines += [f"| {name.replace('_', ' ')} | {value} |" for name, value in recorded["facts"].items()]
    return "\n".join(lines)


TABLES = {"facts": facts_table, "language": language_table, "probe": probe_table, "repair": repair_table,
          "sweep": sweep_table, "script": script_table, "reader": reader_table, "speech": speech_table}


def marked(name: str) -> re.Pattern[str]:
    """The span of table `name` on the page, between its two markers."""
    return re.compile(rf"(<!-- {name}: benchmarks/results/demo_prototype.json -->\n)(.*?)(<!-- /{name} -->)", re.DOTALL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the tables of docs/demo-prototype.md")
    args = parser.parse_args(argv)
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    page = PAGE.read_text(encoding="utf-8")
    for name, render in TABLES.items():
        text = render(recorded)
        if args.write:
            page, n = marked(name).subn(lambda m, t=text: m.group(1) + t + "\n" + m.group(3), page)
            if n != 1:
                raise SystemExit(f"{PAGE}: expected one '{name}' marker pair, found {n}")
        else:
            print(text, end="\n\n")
    if args.write:
        PAGE.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
