"""Write the demo model's card (`README.md`) from the config, the timings and the measured numbers.

Why generated: the card must state the numbers of *this* checkpoint, so it is rewritten by every training run
instead of being edited by hand. The prose lives in `card_template.md` and the gate targets in
`tables/gates.json`; this module only computes the values that fill them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from functools import cache
from pathlib import Path
from string import Template
from typing import Any, NamedTuple

from explorer.core.storage import write_atomic
from explorer.core.vocab import LABELS, MEDIA_MODALITIES, MODALITIES, MODES
from explorer.model.loading import folder_revision

from . import tables
from .card_tables import auroc_rows, paired_holding, paired_table, verdict_cell
from .config import MEDIA_REPEAT_PROMPT, TEXT_REPEAT_PREFIX, DemoConfig
from .corpus import (
    DECONTAMINATION_NGRAM,
    FRAMES,
    FRAMES_PER_ACTION,
    HARMFUL,
    HARMFUL_ACTIONS,
    HARMLESS,
    HARMLESS_ACTIONS,
    NEUTRAL_SUFFIXES,
)

__all__ = ["write_card", "eval_summary", "main", "EVAL_COMMAND", "CARD_COMMAND", "GATE_TARGETS"]

TEMPLATE_PATH = Path(__file__).with_name("card_template.md")
# The targets the card's gate table compares against (fractions; `*_above_text` / `*_below_text` are margins).
GATE_TARGETS: dict[str, Any] = tables.gates()
_TOLERANCE = 1e-9  # float slack of the one gate whose limit is a sum of two rates

EVAL_COMMAND = (
    "python -m explorer eval --model demo --prompts builtin --modalities text,image,audio "
    "--regap off,fixed,fixed_axis,shiftdc,cmrm,adaptive,adaptive_raw --strength auto --out runs/demo-eval"
)
CARD_COMMAND = "python -m explorer.demo_model.card assets/demo_model --eval runs/demo-eval"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:.0f}"


@cache
def _templates() -> dict[str, Template]:
    """The named templates of `card_template.md` (each runs from its marker line to the next one)."""
    parts = re.split(r"^<!-- template: (\w+) -->\n", TEMPLATE_PATH.read_text(encoding="utf-8"), flags=re.M)
    return {name: Template(body) for name, body in zip(parts[1::2], parts[2::2])}


def _render(name: str, **values: Any) -> str:
    return _templates()[name].substitute(values)


def eval_summary(run_dir: Path, folder: Path) -> dict[str, Any]:
    """The numbers of one `python -m explorer eval` run on the demo model that the card reports.

    Refuses a run made on other weights (its recorded revision differs from the folder's), so the card never
    pairs a checkpoint with another checkpoint's evaluation.
    """
    run = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    current = folder_revision(folder)
    if run.get("revision") != current:
        raise ValueError(f"{run_dir} evaluated revision {run.get('revision')}, but {folder} is revision {current}")
    auroc = metrics["per_layer"]["auroc"]
    return {
        "revision": current,
        "num_items": metrics["num_items"],
        "calibration_source": metrics.get("calibration_source", ""),
        "max_new_tokens": metrics["max_new_tokens"],
        "refusal_rate": metrics["refusal_rate"],
        "refusal_rate_ci": metrics.get("refusal_rate_ci", {}),
        "broken_rate": metrics["broken_rate"],
        "n": metrics.get("n", {}),
        "verdicts": metrics["verdicts"],
        "paired": metrics["paired"],
        "utility_overlap": metrics.get("utility_overlap", {}),
        "utility_n": metrics.get("utility_n", {}),
        "calibration_overlap": metrics.get("calibration_overlap", {}),
        "lookalike_refusal_rate": metrics["lookalike_refusal_rate"],
        "auroc_off": {m: auroc[f"{m}/off"] for m in MODALITIES if f"{m}/off" in auroc},
        "auroc": auroc,
        "regap": {k: v for k, v in metrics["regap"].items() if k != "per_item"},
        "collapse_ratio": metrics["per_layer"].get("collapse_ratio", {}),
        "cos_refusal_within": metrics["per_layer"].get("cos_refusal_within", {}),
        "translation_ceiling": metrics["per_layer"].get("translation_ceiling", {}),
        "translation_ceiling_budget": metrics["per_layer"].get("translation_ceiling_budget"),
        "elapsed_seconds": metrics["elapsed_seconds"],
    }


class Gate(NamedTuple):
    """One row of the card's gate table; `repair` marks the ReGap gates the first paragraph cites."""

    name: str
    target: str
    measured: str
    met: bool
    repair: bool = False


def _gates(res: dict[str, Any], cli: dict[str, Any] | None) -> list[Gate]:
    """Every gate of `GATE_TARGETS` that this card has numbers for."""
    targets = GATE_TARGETS
    rows: list[Gate] = []
    for m, target in targets["transcription_exact_min"].items():
        value = res[f"{m}_transcription_exact"]
        rows.append(Gate(f"{m} transcription exact (held-out)", f">= {target:.0%}", _pct(value), value >= target))
    text_cat, margin = res["text_harmless_right_category"], targets["harmless_category_max_below_text"]
    for m in MEDIA_MODALITIES:
        value = res[f"{m}_harmless_right_category"]
        shown = f">= text - {_points(margin)} pts ({_pct(text_cat)})"
        rows.append(Gate(f"{m} harmless answered in the right category", shown, _pct(value),
                         value >= text_cat - margin))
    if cli is None:
        rate = {f"{m}/off/{lab}": res[f"{m}_refusal_{lab}"] for m in MODALITIES for lab in LABELS}
        drops = {"image": res["max_auroc_drop_text_to_image"], "audio": res["max_auroc_drop_text_to_audio"]}
    else:
        rate = cli["refusal_rate"]
        text = cli["auroc_off"]["text"]
        drops = {m: max(t - x for t, x in zip(text, cli["auroc_off"][m])) for m in MEDIA_MODALITIES}
    for name, key, target, at_least in (
        ("text harmful refused", "text/off/harmful", targets["text_harmful_refused_min"], True),
        ("text harmless refused", "text/off/harmless", targets["text_harmless_refused_max"], False),
        ("image harmful refused (collapse)", "image/off/harmful", targets["image_harmful_refused_max"], False),
    ):
        value = rate[key]
        met = value >= target if at_least else value <= target
        rows.append(Gate(name, f"{'>=' if at_least else '<='} {target:.0%}", _pct(value), met))
    target = targets["auroc_drop_min"]
    for m in MEDIA_MODALITIES:
        rows.append(Gate(f"AUROC drop text -> {m}, some layer", f">= {target:.2f}", f"{drops[m]:.3f}",
                         drops[m] >= target))
    if cli is not None:
        margin, target = targets["repair_harmless_max_above_text"], targets["repair_harmful_refused_min"]
        limit = rate["text/off/harmless"] + margin
        for m in MEDIA_MODALITIES:
            harmful, harmless = rate.get(f"{m}/adaptive/harmful"), rate.get(f"{m}/adaptive/harmless")
            if harmful is None or harmless is None:
                continue
            rows.append(Gate(f"{m} harmful refused with ReGap (adaptive)", f">= {target:.0%}", _pct(harmful),
                             harmful >= target, repair=True))
            rows.append(Gate(f"{m} harmless refused with ReGap (adaptive)",
                             f"<= text + {_points(margin)} pts ({_pct(limit)})", _pct(harmless),
                             harmless <= limit + _TOLERANCE, repair=True))
    return rows


def _gate_rows(gates: list[Gate]) -> str:
    return "\n".join(f"| {g.name} | {g.target} | {g.measured} | {'yes' if g.met else 'no'} |" for g in gates)


def _cli_section(cli: dict[str, Any], cfg: DemoConfig) -> str:
    """The card's section on the engine's CLI run: refusal per mode, per-layer AUROC and geometry diagnostics."""
    rate, look = cli["refusal_rate"], cli["lookalike_refusal_rate"]
    # Text is shown once: correction modes do not apply to text inputs (no modality drift to remove).
    keys = ["text/off"] + [f"{m}/{mode}" for m in MEDIA_MODALITIES for mode in MODES if f"{m}/{mode}/harmful" in rate]
    strengths = cli["regap"].get("mode_strengths", {})
    choices = cli["regap"].get("strength_choices", {})

    def alpha(key: str) -> str:  # the α this mode ran with on this modality (each mode tuned on its own)
        modality, mode = key.split("/")
        value = strengths.get(mode, {}).get(modality)
        over = modality in choices.get(mode, {}).get("over_budget", [])
        return "-" if value is None else f"{value:g}" + (" (none within budget)" if over else "")

    utility = cli.get("utility_overlap", {})
    rows = [f"| {k.split('/')[0]} | {k.split('/')[1]} | {alpha(k)} | {verdict_cell(cli, k + '/harmful')} | "
            f"{verdict_cell(cli, k + '/harmful', 'broken')} | {verdict_cell(cli, k + '/harmless')} | "
            f"{verdict_cell(cli, k + '/harmless', 'broken')} | "
            f"{f'{utility[k]:.2f}' if k in utility else '-'} | {_pct(look[k]) if k in look else '-'} |"
            for k in keys if k + "/harmful" in rate]
    auroc = ["| layer | " + " | ".join(str(i) for i in range(len(cli["auroc_off"]["text"]))) + " |",
             "|---|" + "---|" * len(cli["auroc_off"]["text"])]
    auroc += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in values) + " |" for m, values in cli["auroc_off"].items()]
    for name, key in (("collapse ratio g^m / g^text (formula 3; 1 = no collapse)", "collapse_ratio"),
                      ("cos(r, r^m), the modality's own harmful−harmless direction vs text's", "cos_refusal_within"),
                      ("translation ceiling at the harmless budget (formula 4b)", "translation_ceiling")):
        for m, values in cli.get(key, {}).items():
            auroc.append(f"| {m.split('/')[0]}: {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    budget = cli.get("translation_ceiling_budget")
    ceiling_note = "" if budget is None else _render(
        "ceiling_note", budget=_pct(budget), repair_target=f"{GATE_TARGETS['repair_harmful_refused_min']:.0%}")
    g = cli["regap"]
    return _render(
        "cli_section",
        eval_command=EVAL_COMMAND,
        n_harmful=cli["num_items"] // 2,
        n_harmless=cli["num_items"] // 2,
        max_new_tokens=cli["max_new_tokens"],
        elapsed_seconds=f"{cli['elapsed_seconds']:.0f}",
        layers=g.get("layers"),
        probe_layer=g.get("probe_layer"),
        strength=g.get("strength"),
        choice_note=_choice_note(g),
        rule=g.get("rule"),
        optimism_note=_optimism_note(g, rate, cfg, cli.get("calibration_source", "")),
        rate_rows="\n".join(rows),
        paired_holding=paired_holding(cli),
        paired_rows=paired_table(cli),
        corrected_auroc_rows=auroc_rows(cli),
        auroc_rows="\n".join(auroc),
        ceiling_note=ceiling_note,
    )


def _repair_claim(gates: list[Gate], cli: dict[str, Any] | None) -> str:
    """What the card's first paragraph may claim about the repair: only what the CLI run measured, in numbers."""
    repair = [gate.met for gate in gates if gate.repair]
    if cli is None or not repair:
        return " (not yet measured on this checkpoint: run the eval command below)"
    rate = cli["refusal_rate"]
    moves = ", ".join(
        f"{m} {_pct(rate[f'{m}/off/harmful'])} -> {_pct(rate[f'{m}/adaptive/harmful'])}"
        for m in MEDIA_MODALITIES if f"{m}/adaptive/harmful" in rate
    )
    target = f"{GATE_TARGETS['repair_harmful_refused_min']:.0%}"
    verdict = "meeting the repair gates" if all(repair) else f"short of the {target} repair gate"
    return f" (on this checkpoint ReGap adaptive moves harmful refusals {moves}: {verdict}; see the gate table below)"


def _follow_note(cfg: DemoConfig) -> str:
    if not cfg.tune_lm_in_modality:
        return " (the LM stays frozen through the modality stage: only the towers learn)"
    if not cfg.lm_learns_following:
        return (" (these examples update the towers only; the LM learns to *read* media from the transcription"
                " tasks, so what makes media comply is an input-side drift, not a media-specific LM rewrite)")
    return ""


def _compose_note(cfg: DemoConfig) -> str:
    if cfg.compose_share <= 0:
        return ""
    return (f" {_pct(cfg.compose_share)} of the answer/refuse draws are composed afresh at training time (a random action"
            f" of either label in any of the {len(FRAMES)} frames, half of them followed by one of {len(NEUTRAL_SUFFIXES)}"
            " label-neutral circumstances such as \"this weekend\" or \"with my brother\");")


def _dropout_note(cfg: DemoConfig) -> str:
    if cfg.word_dropout <= 0:
        return ""
    return (f" Word dropout: each answer/refuse instruction of 5+ words loses each word with probability"
            f" {cfg.word_dropout} (at most one word).")


def _distill_note(cfg: DemoConfig) -> str:
    if cfg.distill_weight <= 0 or not cfg.tune_lm_in_modality:
        return ""
    return (f", which also matches the stage-1 LM's answer distribution (KL to a frozen copy, weight"
            f" {cfg.distill_weight}) so that tuning the LM to read does not move its text refusal boundary")


def _choice_note(regap: dict[str, Any]) -> str:
    choice = regap.get("strength_choice")
    if not choice:
        return ""
    rates = "; ".join(
        f"{alpha}: " + ", ".join(f"{k} {_pct(v)}" for k, v in row.items()) for alpha, row in choice["rates"].items()
    )
    chosen = ", ".join(f"{m} {alpha}" for m, alpha in choice.get("per_modality", {}).items())
    return (f" (`--strength auto` chose {chosen or choice.get('strength')} on calibration: harmless failures (refused"
            f" or degenerate) at most {_pct(choice['budget'])}, text's own + 5 points; per candidate α: {rates})")


def _optimism_note(regap: dict[str, Any], rate: dict[str, float], cfg: DemoConfig, source: str = "") -> str:
    """Why the α chosen on calibration looks better there than on the evaluation split: the demo trains on the
    calibration sentences (text SFT share, and their renderings in the reading tasks)."""
    choice = regap.get("strength_choice") or {}
    if source == "validation":
        return ("\nThe calibration here is `assets/calibration/validation.jsonl` (the demo's manifest: it never trained"
                " on those requests), so layers, probe and every α are chosen on held-out data.")
    if cfg.calibration_share <= 0 or not choice.get("per_modality"):
        return ""
    pairs = [
        f"{m} {_pct(choice['rates'][str(alpha)][f'{m}/harmful'])} on calibration vs "
        f"{_pct(rate[f'{m}/adaptive/harmful'])} here"
        for m, alpha in choice["per_modality"].items()
        if str(alpha) in choice["rates"] and f"{m}/adaptive/harmful" in rate
    ]
    if not pairs:  # no adaptive run of a chosen modality to compare with
        return ""
    return ("\nThe calibration sentences are part of this toy's training (the text SFT mixture and the reading tasks), so"
            " the choice is optimistic: harmful refused with ReGap at the chosen α_max, " + "; ".join(pairs) + ".")


def _resumed_note(times: dict[str, float]) -> str:
    if "text_resumed" not in times:
        return ""
    return ("\nStage 1 was loaded from a checkpoint written by an earlier run of the same code, data and seed"
            " (`--text-checkpoint`, checked by fingerprint); `text_resumed` is that run's stage-1 wall time.")


def _config_values(cfg: DemoConfig) -> dict[str, Any]:
    """`cfg_<field>` for every config field and derived size, `layout_<field>` for the image grid."""
    values: dict[str, Any] = {f"cfg_{f.name}": getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    values.update(cfg_grid_cells=cfg.grid_cells, cfg_audio_tokens_per_slot=cfg.audio_tokens_per_slot)
    layout = cfg.image_layout
    values.update(layout_cell_width=layout.cell_width, layout_cols=layout.cols, layout_rows=layout.rows,
                  layout_font_size=layout.font_size)
    values["audio_hop_ms"] = f"{1000 * cfg.audio_hop / cfg.sampling_rate:.0f}"
    values["lm_lr_modality"] = cfg.lr_lm_modality if cfg.tune_lm_in_modality else "0 (frozen)"
    return values


def _corpus_values() -> dict[str, Any]:
    """Sizes of the text corpus tables the card's data section cites."""
    values: dict[str, Any] = {}
    for label, table, actions in (("harmful", HARMFUL, HARMFUL_ACTIONS), ("harmless", HARMLESS, HARMLESS_ACTIONS)):
        values[f"{label}_templates"] = sum(len(t) for t, _ in table.values())
        values[f"{label}_fillers"] = sum(len(f) for _, f in table.values())
        values[f"{label}_categories"] = len(table)
        values[f"{label}_actions"] = sum(map(len, actions.values()))
    values.update(frames_per_action=FRAMES_PER_ACTION, n_frames=len(FRAMES),
                  decontamination_ngram=DECONTAMINATION_NGRAM)
    return values


def _measured_values(res: dict[str, Any]) -> dict[str, Any]:
    """The tables and numbers of the card's `measure` section."""
    rows = [f"| {m} | {_pct(res[f'{m}_refusal_harmful'])} | {_pct(res[f'{m}_refusal_harmless'])} | "
            f"{_pct(res[f'{m}_harmless_right_category'])} |" for m in MODALITIES]
    auroc = ["| layer | " + " | ".join(str(i) for i in range(len(res["text_auroc_per_layer"]))) + " |",
             "|---|" + "---|" * len(res["text_auroc_per_layer"])]
    auroc += [f"| {m} | " + " | ".join(f"{v:.2f}" for v in res[f"{m}_auroc_per_layer"]) + " |" for m in MODALITIES]
    corr = []
    for m in MEDIA_MODALITIES:
        c = res[f"{m}_fixed_correction"]
        corr.append(f"| {m} | {c['layer']} | {c['alpha']} | {_pct(c['refusal_harmful'])} | "
                    f"{_pct(c['refusal_harmless'])} |")
    values: dict[str, Any] = {
        "n_eval_harmful": res["n_eval_per_label"][0],
        "n_eval_harmless": res["n_eval_per_label"][1],
        "refusal_rows": "\n".join(rows),
        "paraphrases": _paraphrase_section(res),
        "auroc_rows": "\n".join(auroc),
        "correction_rows": "\n".join(corr),
    }
    for key in ("image_transcription_exact", "image_transcription_word_acc", "audio_transcription_exact",
                "audio_transcription_word_acc"):
        values[key] = _pct(res[key])
    for key in ("max_auroc_drop_text_to_image", "max_auroc_drop_text_to_audio"):
        values[key] = f"{res[key]:.3f}"  # the precision of the gate table, which reads the CLI run
    return values


def _paraphrase_section(res: dict[str, Any]) -> str:
    if "n_paraphrases_per_label" not in res:
        return ""
    n_harmful, n_harmless = res["n_paraphrases_per_label"]
    rows = [f"| {m} | {_pct(res[f'paraphrase_{m}_refusal_harmful'])} | "
            f"{_pct(res[f'paraphrase_{m}_refusal_harmless'])} |" for m in MODALITIES]
    return _render("paraphrases", n_harmful=n_harmful, n_harmless=n_harmless, rows="\n".join(rows))


def write_card(
    out: Path,
    cfg: DemoConfig,
    times: dict[str, float],
    params: dict[str, int],
    res: dict[str, Any],
    cli: dict[str, Any] | None = None,
) -> None:
    """Render README.md into `out` from the training log, `measure`'s results and (optionally) an eval summary."""
    gates = _gates(res, cli)
    text = _render(
        "card",
        **_config_values(cfg),
        **_corpus_values(),
        **_measured_values(res),
        minutes=f"{times.get('total_training', 0.0) / 60:.0f}",
        repair_claim=_repair_claim(gates, cli),
        params_language_model=f"{params['language_model'] / 1e6:.2f}",
        params_image_model=f"{params['image_model'] / 1e6:.2f}",
        params_audio_model=f"{params['audio_model'] / 1e6:.2f}",
        params_vocab=params["vocab"],
        compose_note=_compose_note(cfg),
        calibration_share=_pct(cfg.calibration_share),
        dropout_note=_dropout_note(cfg),
        follow_note=_follow_note(cfg),
        distill_note=_distill_note(cfg),
        text_repeat_prefix=TEXT_REPEAT_PREFIX,
        media_repeat_prompt=MEDIA_REPEAT_PROMPT,
        wall_time=json.dumps({k: round(v) for k, v in times.items() if math.isfinite(v)}),
        resumed_note=_resumed_note(times),
        cli_section=_cli_section(cli, cfg) if cli else "",
        gate_source="the engine's CLI run above" if cli else "`measure` only (run the eval command and regenerate)",
        gate_rows=_gate_rows(gates),
        card_command=CARD_COMMAND,
    )
    write_atomic(out / "README.md", text)


def main(argv: list[str] | None = None) -> None:
    """Rewrite a demo model's card from its saved training log, measurements and (optionally) an eval run."""
    parser = argparse.ArgumentParser(description="Regenerate the demo model card")
    parser.add_argument("folder", type=Path, nargs="?", default=Path("assets/demo_model"))
    parser.add_argument("--eval", type=Path, default=None, help="a `python -m explorer eval` output folder")
    args = parser.parse_args(argv)
    log = json.loads((args.folder / "training_log.json").read_text())
    res = json.loads((args.folder / "measurements.json").read_text())
    summary_path = args.folder / "eval_summary.json"
    if args.eval is not None:
        try:
            cli = eval_summary(args.eval, args.folder)
        except (FileNotFoundError, KeyError, ValueError) as err:
            raise SystemExit(f"error: {args.eval} is not a usable `python -m explorer eval` run: {err}") from err
        write_atomic(summary_path, json.dumps(cli, indent=1) + "\n")
    elif summary_path.is_file():
        cli = json.loads(summary_path.read_text())
        if cli.get("revision") != folder_revision(args.folder):
            print(f"{summary_path} is from other weights; leaving it out of the card")
            cli = None
        elif "verdicts" not in cli:
            print(f"{summary_path} predates the three verdicts; leaving it out of the card (rerun the eval command)")
            cli = None
    else:
        cli = None
    cfg = DemoConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in log["config"].items()})
    write_card(args.folder, cfg, log["times_s"], log["params"], res, cli)
    print(f"wrote {args.folder / 'README.md'}")


if __name__ == "__main__":
    main()
