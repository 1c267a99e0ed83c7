"""Numbers for the demo model's card that the engine's `eval` does not give: reading, answer categories.

    python -m explorer.demo_model.measure assets/demo_model [--limit N] [--out measurements.json]

Everything runs through the engine (`load_model`, `LoadedModel.render`, `capture_prompts`, `generate_texts`,
`corrected`, the geometry formulas); only what is specific to a model trained on our own corpus lives here:
transcription of rendered requests (exact match and word accuracy), whether a harmless answer is the generic
answer of the request's own category, and refusal rates on the free-form paraphrase file
(assets/calibration/paraphrases.jsonl, never trained on). It also reports per-layer AUROC on the text refusal
direction (direction from the calibration split, AUROC on the held-out evaluation split) for each modality, and
one fixed drift correction (formula 7 of docs/method.md; layer and strength chosen on calibration only) to check
that the collapse is repairable.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.core.storage import write_atomic
from explorer.core.vocab import LABELS, MEDIA_MODALITIES, MODALITIES, Modality
from explorer.correction.generation import generate_texts
from explorer.correction.regap import corrected
from explorer.evaluation.judge import RefusalJudge
from explorer.geometry.formulas import auroc_per_layer, project, unit_directions
from explorer.inputs.data import Instruction, load_builtin, load_prompts
from explorer.inputs.media import Prompt
from explorer.model.capture import CaptureSettings, capture_prompts
from explorer.model.loading import load_model
from explorer.model.models import LoadedModel

from .config import MEDIA_REPEAT_PROMPT
from .corpus import answer_for
from .data import PARAPHRASES_PATH, transcript

__all__ = ["answers", "load_demo", "measure", "main"]

_BATCH = 32
_ANSWER_TOKENS = 24
_TRANSCRIPT_TOKENS = 24
_CORRECTION_ALPHAS = (0.5, 1.0, 1.5)


def load_demo(folder: str | Path) -> LoadedModel:
    """A saved demo model folder, loaded by the engine on the CPU in float32 (as the card's numbers were)."""
    return load_model(str(folder), device="cpu", dtype="float32")


def answers(model: LoadedModel, modality: Modality, shown: list[str], text: str | None = None,
            max_new_tokens: int = _ANSWER_TOKENS) -> list[str]:
    """Greedy answers for `shown` requests presented in `modality`; `text` replaces a media prompt's carrier."""
    prompts = [model.render(s, modality) for s in shown]
    if text is not None and modality != "text":
        prompts = [Prompt(text=text, image=p.image, audio=p.audio, modality=modality) for p in prompts]
    return generate_texts(model, prompts, max_new_tokens, batch_size=_BATCH)


def _states(model: LoadedModel, modality: Modality, shown: list[str]) -> torch.Tensor:
    """[n, layers, d] last-prompt-token states (the engine's capture)."""
    return capture_prompts(model, [model.render(s, modality) for s in shown], CaptureSettings(batch_size=_BATCH))


def _split(items: list[Instruction], limit: int | None) -> tuple[list[str], list[str]]:
    harmful = [i.instruction for i in items if i.label == "harmful"][:limit]
    harmless = [i.instruction for i in items if i.label == "harmless"][:limit]
    return harmful, harmless


def _right_category(replies: list[str], categories: list[str]) -> float:
    """Share of harmless answers that give the generic answer of the request's own category."""
    return float(np.mean([answer_for(c).split(":")[0] in a for a, c in zip(replies, categories)]))


def _labels(n_harmful: int, n_harmless: int) -> list[str]:
    return ["harmful"] * n_harmful + ["harmless"] * n_harmless


def _word_accuracy(output: str, reference: str) -> float:
    return float(np.mean([a == b for a, b in zip(output.split() + [""] * 16, reference.split())]))


def _reading(model: LoadedModel, modality: Modality, shown: list[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    outputs = answers(model, modality, shown, MEDIA_REPEAT_PROMPT, _TRANSCRIPT_TOKENS)
    refs = [transcript(s) for s in shown]
    exact = [o == r for o, r in zip(outputs, refs)]
    return {
        f"{modality}_transcription_exact": float(np.mean(exact)),
        f"{modality}_transcription_word_acc": float(np.mean([_word_accuracy(o, r) for o, r in zip(outputs, refs)])),
        f"{modality}_transcription_exact_ids": exact,
    }, [(r, o) for o, r in zip(outputs, refs) if o != r][:5]


def _fixed_correction(model: LoadedModel, modality: Modality, cal: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      cal_split: tuple[list[str], list[str]], ev_split: tuple[list[str], list[str]],
                      unit: torch.Tensor, judge: RefusalJudge) -> dict[str, Any]:
    """One fixed drift correction at the layer where calibration AUROC drops most (first 2/3 of the layers), α
    chosen on calibration (max harmful-refused minus harmless-refused), then measured on the evaluation split."""
    cal_harmful, cal_harmless = cal_split
    labels = _labels(len(cal_harmful), len(cal_harmless))
    drift = (torch.cat(cal[modality]).double().mean(0) - torch.cat(cal["text"]).double().mean(0)).float()  # [L, d]
    text_auroc = auroc_per_layer(project(torch.cat(cal["text"]), unit), labels)
    media_auroc = auroc_per_layer(project(torch.cat(cal[modality]), unit), labels)
    loss = [t - m for t, m in zip(text_auroc, media_auroc)]
    layer = int(np.argmax(loss[: max(1, (2 * model.num_layers) // 3)]))
    vectors = {layer: drift[layer]}
    best: dict[str, Any] | None = None
    for alpha in _CORRECTION_ALPHAS:
        with corrected(model, vectors, alpha, "all"):
            score = (judge.refusal_rate(answers(model, modality, cal_harmful))
                     - judge.refusal_rate(answers(model, modality, cal_harmless)))
        if best is None or score > best["cal_score"]:
            best = {"layer": layer, "alpha": alpha, "cal_score": score}
    assert best is not None
    with corrected(model, vectors, best["alpha"], "all"):
        best["refusal_harmful"] = judge.refusal_rate(answers(model, modality, ev_split[0]))
        best["refusal_harmless"] = judge.refusal_rate(answers(model, modality, ev_split[1]))
    return best


def measure(folder: str | Path, limit: int | None = None) -> dict[str, Any]:
    """All quick numbers for the model card (see the module docstring); `limit` = items per label."""
    start = time.time()
    model = load_demo(folder)
    judge = RefusalJudge()
    evaluation = load_builtin("evaluation")
    ev_harmful, ev_harmless = _split(evaluation, limit)
    ev_harmless_categories = [i.category for i in evaluation if i.label == "harmless"][:limit]
    use_paraphrases = PARAPHRASES_PATH.is_file() and limit is None
    paraphrases = dict(zip(LABELS, _split(load_prompts(PARAPHRASES_PATH), None))) if use_paraphrases else {}
    cal_harmful, cal_harmless = _split(load_builtin("calibration"), limit)
    res: dict[str, Any] = {"n_eval_per_label": [len(ev_harmful), len(ev_harmless)]}
    examples: dict[str, Any] = {}
    for m in MODALITIES:
        answers_h = answers(model, m, ev_harmful)
        answers_s = answers(model, m, ev_harmless)
        res[f"{m}_refusal_harmful"] = judge.refusal_rate(answers_h)
        res[f"{m}_refusal_harmless"] = judge.refusal_rate(answers_s)
        res[f"{m}_refused_harmful_ids"] = [judge.is_refusal(a) for a in answers_h]
        res[f"{m}_refused_harmless_ids"] = [judge.is_refusal(a) for a in answers_s]
        res[f"{m}_harmless_right_category"] = _right_category(answers_s, ev_harmless_categories)
        examples[m] = {"harmful": list(zip(ev_harmful[:3], answers_h[:3])), "harmless": list(zip(ev_harmless[:3], answers_s[:3]))}
        for label, shown in paraphrases.items():
            refused = [judge.is_refusal(a) for a in answers(model, m, shown)]
            res[f"paraphrase_{m}_refusal_{label}"] = float(np.mean(refused))
            res[f"paraphrase_{m}_refused_{label}_ids"] = refused
    if paraphrases:
        res["n_paraphrases_per_label"] = [len(paraphrases["harmful"]), len(paraphrases["harmless"])]
    for m in MEDIA_MODALITIES:
        reading, mistakes = _reading(model, m, ev_harmful + ev_harmless)
        res.update(reading)
        examples[f"{m}_transcription"] = mistakes
    # Geometry: text refusal direction from calibration; AUROC on evaluation per modality and layer.
    cal = {m: (_states(model, m, cal_harmful), _states(model, m, cal_harmless)) for m in MODALITIES}
    unit = unit_directions((cal["text"][0].double().mean(0) - cal["text"][1].double().mean(0)).float())
    ev_labels = _labels(len(ev_harmful), len(ev_harmless))
    for m in MODALITIES:
        states = torch.cat([_states(model, m, ev_harmful), _states(model, m, ev_harmless)])
        res[f"{m}_auroc_per_layer"] = auroc_per_layer(project(states, unit), ev_labels)
    for m in MEDIA_MODALITIES:
        res[f"max_auroc_drop_text_to_{m}"] = max(t - x for t, x in zip(res["text_auroc_per_layer"], res[f"{m}_auroc_per_layer"]))
    for m in MEDIA_MODALITIES:
        res[f"{m}_fixed_correction"] = _fixed_correction(
            model, m, cal, (cal_harmful, cal_harmless), (ev_harmful, ev_harmless), unit, judge
        )
    res["examples"] = examples
    res["seconds"] = round(time.time() - start, 1)
    return res


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Quick numbers for a saved demo model")
    parser.add_argument("folder", type=Path, nargs="?", default=Path("assets/demo_model"))
    parser.add_argument("--limit", type=int, default=None, help="items per label (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here as well")
    args = parser.parse_args(argv)
    res = measure(args.folder, args.limit)
    text = json.dumps(res, indent=1)
    if args.out:
        write_atomic(args.out, text + "\n")
    short = {k: v for k, v in res.items() if not k.endswith("_ids") and k != "examples"}
    print(json.dumps(short, indent=1))


if __name__ == "__main__":
    main()
