"""Quick measurements of a saved demo model on the builtin evaluation split (held out from training).

    python -m explorer.demo_model.measure assets/demo_model [--limit N]

Why its own script: it measures what the engine's `eval` does not (reading, answer categories), and the
training run writes the model card from it without a second process. It loads the saved folders exactly as the engine does (Auto classes, the processors' chat templates,
`generate` with greedy decoding) and reports: refusal rates per modality and label, transcription exact match
and word accuracy on rendered images / speech, and per-layer AUROC of the projection on the text refusal
direction (direction from the calibration split, AUROC on the evaluation split) for each modality; the share
of harmless answers in the request's own category; refusal rates on the free-form paraphrase file
(assets/calibration/paraphrases.jsonl, never trained on). Also one fixed drift correction (formula 7 of docs/method.md, layer and strength chosen on calibration only)
to check that the collapse is repairable.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForMultimodalLM, AutoProcessor

from explorer.data import Instruction, load_builtin, load_prompts
from explorer.judge import RefusalJudge
from explorer.models import manifest_layout
from explorer.render import AUDIO_CARRIER, IMAGE_CARRIER, render_audio, render_image

from .config import MEDIA_REPEAT_PROMPT
from .corpus import answer_for
from .data import PARAPHRASES_PATH, transcript, user_messages

__all__ = ["DemoHandles", "load_demo", "generate", "measure", "main"]

_BATCH = 32
_ANSWER_TOKENS = 24
_TRANSCRIPT_TOKENS = 24
_MODALITIES = ("text", "image", "audio")
_CORRECTION_ALPHAS = (0.5, 1.0, 1.5)


class DemoHandles:
    """The two loaded models (sharing one LM in memory, as the engine does) and their processors."""

    def __init__(self, folder: Path) -> None:
        self.image = AutoModelForMultimodalLM.from_pretrained(folder / "image").eval()
        self.audio = AutoModelForMultimodalLM.from_pretrained(folder / "audio").eval()
        self.image_proc = AutoProcessor.from_pretrained(folder / "image")
        self.audio_proc = AutoProcessor.from_pretrained(folder / "audio")
        self.audio.model.language_model = self.image.model.language_model
        self.audio.lm_head = self.image.lm_head
        self.layers = self.image.model.language_model.layers
        manifest = json.loads((folder / "manifest.json").read_text())
        self.image_layout = manifest_layout(manifest)
        self.slot_seconds = float(manifest["slot_seconds"])

    def model_proc(self, modality: str) -> tuple[Any, Any]:
        return (self.audio, self.audio_proc) if modality == "audio" else (self.image, self.image_proc)


def load_demo(folder: str | Path) -> DemoHandles:
    """Load a saved demo model folder (offline, Auto classes)."""
    return DemoHandles(Path(folder))


def _inputs(h: DemoHandles, modality: str, shown: list[str], text: str | None) -> Any:
    model, proc = h.model_proc(modality)
    if modality == "text":
        prompts = [proc.apply_chat_template(user_messages(s), add_generation_prompt=True, tokenize=False) for s in shown]
        return proc(text=prompts, return_tensors="pt", padding=True, padding_side="left")
    carrier = text or (IMAGE_CARRIER if modality == "image" else AUDIO_CARRIER)
    prompt = proc.apply_chat_template(user_messages(carrier, modality), add_generation_prompt=True, tokenize=False)
    if modality == "image":
        images = [render_image(s, h.image_layout) for s in shown]
        return proc(text=[prompt] * len(shown), images=images, return_tensors="pt", padding=True, padding_side="left")
    waves = [render_audio(s, style="slots", slot_seconds=h.slot_seconds) for s in shown]
    return proc(text=[prompt] * len(shown), audio=waves, sampling_rate=16000, return_tensors="pt", padding=True,
                padding_side="left")


@torch.no_grad()
def generate(h: DemoHandles, modality: str, shown: list[str], text: str | None = None, max_new_tokens: int = _ANSWER_TOKENS) -> list[str]:
    """Greedy answers for `shown` instructions presented in `modality` (media: with `text` or the carrier)."""
    model, proc = h.model_proc(modality)
    out: list[str] = []
    for i in range(0, len(shown), _BATCH):
        inputs = _inputs(h, modality, shown[i : i + _BATCH], text)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1] :]
        out += [proc.tokenizer.decode(r, skip_special_tokens=True).strip() for r in new]
    return out


@torch.no_grad()
def last_token_states(h: DemoHandles, modality: str, shown: list[str]) -> torch.Tensor:
    """Raw decoder-layer outputs at the last prompt token: [n, layers, d] (float32)."""
    model, _ = h.model_proc(modality)
    captured: dict[int, torch.Tensor] = {}

    def hook(index: int):  # type: ignore[no-untyped-def]
        def fn(_m, _i, output):  # type: ignore[no-untyped-def]
            captured[index] = (output[0] if isinstance(output, tuple) else output)[:, -1].float()
        return fn

    rows = []
    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(h.layers)]
    try:
        for i in range(0, len(shown), _BATCH):
            inputs = _inputs(h, modality, shown[i : i + _BATCH], None)
            model(**inputs)
            rows.append(torch.stack([captured[j] for j in range(len(h.layers))], dim=1))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(rows)


@contextmanager
def shifted(layer: torch.nn.Module, vector: torch.Tensor):  # type: ignore[no-untyped-def]
    """Add `vector` to a decoder layer's output at every position (prompt and generated tokens)."""

    def fn(_m, _i, output):  # type: ignore[no-untyped-def]
        if isinstance(output, tuple):
            return (output[0] + vector,) + tuple(output[1:])
        return output + vector

    handle = layer.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


def _split(items: list[Instruction], limit: int | None) -> tuple[list[str], list[str]]:
    harmful = [i.instruction for i in items if i.label == "harmful"][:limit]
    harmless = [i.instruction for i in items if i.label == "harmless"][:limit]
    return harmful, harmless


def _right_category(answers: list[str], categories: list[str]) -> float:
    """Share of harmless answers that give the generic answer of the request's own category."""
    return float(np.mean([answer_for(c).split(":")[0] in a for a, c in zip(answers, categories)]))


def _auroc(states: torch.Tensor, labels: np.ndarray, directions: torch.Tensor) -> list[float]:
    return [float(roc_auc_score(labels, (states[:, l] @ directions[l]).numpy())) for l in range(states.shape[1])]


def measure(folder: str | Path, limit: int | None = None) -> dict[str, Any]:
    """All quick numbers for the model card (see the module docstring); `limit` = items per label."""
    start = time.time()
    h = load_demo(folder)
    judge = RefusalJudge()
    evaluation = load_builtin("evaluation")
    ev_harmful, ev_harmless = _split(evaluation, limit)
    ev_harmless_categories = [i.category for i in evaluation if i.label == "harmless"][:limit]
    use_paraphrases = PARAPHRASES_PATH.is_file() and limit is None
    paraphrases = dict(zip(("harmful", "harmless"), _split(load_prompts(PARAPHRASES_PATH), None))) if use_paraphrases else {}
    cal_harmful, cal_harmless = _split(load_builtin("calibration"), limit)
    res: dict[str, Any] = {"n_eval_per_label": [len(ev_harmful), len(ev_harmless)]}
    examples: dict[str, Any] = {}
    for m in _MODALITIES:
        answers_h = generate(h, m, ev_harmful)
        answers_s = generate(h, m, ev_harmless)
        res[f"{m}_refusal_harmful"] = judge.refusal_rate(answers_h)
        res[f"{m}_refusal_harmless"] = judge.refusal_rate(answers_s)
        res[f"{m}_refused_harmful_ids"] = [judge.is_refusal(a) for a in answers_h]
        res[f"{m}_refused_harmless_ids"] = [judge.is_refusal(a) for a in answers_s]
        res[f"{m}_harmless_right_category"] = _right_category(answers_s, ev_harmless_categories)
        examples[m] = {"harmful": list(zip(ev_harmful[:3], answers_h[:3])), "harmless": list(zip(ev_harmless[:3], answers_s[:3]))}
        for label, shown in paraphrases.items():
            refused = [judge.is_refusal(a) for a in generate(h, m, shown)]
            res[f"paraphrase_{m}_refusal_{label}"] = float(np.mean(refused))
            res[f"paraphrase_{m}_refused_{label}_ids"] = refused
    if paraphrases:
        res["n_paraphrases_per_label"] = [len(paraphrases["harmful"]), len(paraphrases["harmless"])]
    for m in ("image", "audio"):
        shown = ev_harmful + ev_harmless
        outs = generate(h, m, shown, MEDIA_REPEAT_PROMPT, _TRANSCRIPT_TOKENS)
        refs = [transcript(s) for s in shown]
        res[f"{m}_transcription_exact"] = float(np.mean([o == r for o, r in zip(outs, refs)]))
        res[f"{m}_transcription_word_acc"] = float(np.mean(
            [np.mean([a == b for a, b in zip(o.split() + [""] * 16, r.split())]) for o, r in zip(outs, refs)]
        ))
        res[f"{m}_transcription_exact_ids"] = [o == r for o, r in zip(outs, refs)]
        examples[f"{m}_transcription"] = [(r, o) for o, r in zip(outs, refs) if o != r][:5]
    # Geometry: text refusal direction from calibration; AUROC on evaluation per modality and layer.
    cal = {m: (last_token_states(h, m, cal_harmful), last_token_states(h, m, cal_harmless)) for m in _MODALITIES}
    r = cal["text"][0].double().mean(0) - cal["text"][1].double().mean(0)  # [L, d]
    r_hat = (r / r.norm(dim=-1, keepdim=True)).float()
    labels = np.array([1] * len(ev_harmful) + [0] * len(ev_harmless))
    for m in _MODALITIES:
        states = torch.cat([last_token_states(h, m, ev_harmful), last_token_states(h, m, ev_harmless)])
        res[f"{m}_auroc_per_layer"] = _auroc(states, labels, r_hat)
    res["max_auroc_drop_text_to_image"] = max(t - i for t, i in zip(res["text_auroc_per_layer"], res["image_auroc_per_layer"]))
    res["max_auroc_drop_text_to_audio"] = max(t - a for t, a in zip(res["text_auroc_per_layer"], res["audio_auroc_per_layer"]))
    # Fixed drift correction at one layer, chosen on calibration (largest AUROC loss in the first 2/3 layers).
    n_layers = len(h.layers)
    for m in ("image", "audio"):
        mu_text = torch.cat(cal["text"]).double().mean(0)
        mu_m = torch.cat(cal[m]).double().mean(0)
        drift = (mu_m - mu_text).float()  # [L, d]
        cal_states = torch.cat(cal[m])
        cal_labels = np.array([1] * len(cal_harmful) + [0] * len(cal_harmless))
        cal_text = torch.cat(cal["text"])
        loss = [a - b for a, b in zip(_auroc(cal_text, cal_labels, r_hat), _auroc(cal_states, cal_labels, r_hat))]
        layer = int(np.argmax(loss[: max(1, (2 * n_layers) // 3)]))
        best: dict[str, Any] | None = None
        for alpha in _CORRECTION_ALPHAS:  # chosen on calibration: max (harmful refused - harmless refused)
            with shifted(h.layers[layer], -alpha * drift[layer]):
                score = judge.refusal_rate(generate(h, m, cal_harmful)) - judge.refusal_rate(generate(h, m, cal_harmless))
            if best is None or score > best["cal_score"]:
                best = {"layer": layer, "alpha": alpha, "cal_score": score}
        assert best is not None
        with shifted(h.layers[layer], -best["alpha"] * drift[layer]):
            best["refusal_harmful"] = judge.refusal_rate(generate(h, m, ev_harmful))
            best["refusal_harmless"] = judge.refusal_rate(generate(h, m, ev_harmless))
        res[f"{m}_fixed_correction"] = best
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
        args.out.write_text(text + "\n")
    short = {k: v for k, v in res.items() if not k.endswith("_ids") and k != "examples"}
    print(json.dumps(short, indent=1))


if __name__ == "__main__":
    main()
