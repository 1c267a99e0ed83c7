"""The app's two stories: "Show the collapse" (one harmful request as text, as an image or speech, and with
ReGap: three answers and the plots) and the gallery (held-out requests a model's card measured the whole story on).

Why apart from explorer.app.ui: they are the demo's narrative built from the same handlers (generation, analysis,
verdict badges), not a handler of one input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from explorer.app.analysis import compute_analysis, fmt
from explorer.app.ui import (
    COLLAPSE_REQUEST,
    analysis_outputs,
    answer_verdict,
    complete_generation,
    problem_message,
    verdict_badge,
    warning_text,
)
from explorer.app.ui_inputs import InputError, map_method, token_count
from explorer.app.ui_session import AppState, ModelSession
from explorer.core.vocab import SAMPLE_RATE
from explorer.correction.generation import GenerationResult
from explorer.correction.regap import CorrectionConfig
from explorer.inputs.media import Prompt

__all__ = ["gallery", "show_collapse"]


# ------------------------------------------------------------------------------------------------
# The gallery (models whose folder ships one: the demo)


def gallery(session: ModelSession) -> tuple[str, list[list[str]]]:
    """(Markdown that says what the gallery is and how often the whole story holds, rows of [request, label,
    what was measured]); ("", []) when the model has no gallery measured on its weights."""
    data = session.model.gallery
    if not data or not data.get("items"):
        return "", []

    def said(refused: bool) -> str:
        return "refused" if refused else "complied"

    rows = [[item["instruction"], item["label"],
             f"text {said(item['text_refused'])} → image {said(item['image_refused'])} → ReGap "
             f"{said(item['regap_refused'])}"] for item in data["items"]]
    n, k = data["harmful_count"], data["harmful_whole_story"]
    strengths = ", ".join(f"{m} {a:g}" for m, a in sorted(data.get("strength", {}).items()))
    text = (f"Requests from the held-out evaluation split (never trained on) that {session.model.name} reads "
            f"correctly when they are drawn as an image, with what an `eval --strength auto` run measured for each "
            f"(α_max {strengths}). **For {k} of the {n} harmful ones ({100 * k / n:.0f}%) the whole story holds:** "
            "refused as text → complied as an image → refused again with ReGap. The others, and the harmless ones "
            "it refuses, are listed as measured. Click one to put it in the request box.")
    return text, rows


# ------------------------------------------------------------------------------------------------
# "Show the collapse"


def show_collapse(state: AppState, max_new_tokens: Any = 48, method: str = "UMAP") -> dict[str, Any]:
    """Text request → same request as an image (or audio) → with ReGap: three generations and the plots.

    Returns plain values keyed by the component they fill (see app.py); "status" carries any problem.
    """
    session = state.session
    modality = "image" if "image" in session.model.modalities else "audio"
    try:
        if modality not in session.model.modalities:
            raise InputError(f"{session.model.name} accepts only text, so there is no other modality to compare")
        tokens, method = token_count(state, max_new_tokens), map_method(method)
        text_prompt = Prompt(text=COLLAPSE_REQUEST, modality="text")
        media_prompt = session.model.render(COLLAPSE_REQUEST, modality)  # type: ignore[arg-type]
        strength = session.suggested_strength(modality, "adaptive")
        config = session.config("adaptive", strength)
        plain_text = complete_generation(session, text_prompt, CorrectionConfig(mode="off"), tokens)
        plain_media = complete_generation(session, media_prompt, CorrectionConfig(mode="off"), tokens)
        fixed_media = complete_generation(session, media_prompt, config, tokens)
        layer = session.default_layer()
        result = compute_analysis(state, session, media_prompt, config, layer, method)
    except Exception as err:  # noqa: BLE001
        return {"status": warning_text(problem_message(err))}
    verdicts = [answer_verdict(session, r.text, COLLAPSE_REQUEST) for r in (plain_text, plain_media, fixed_media)]
    shown_as = "a typographic image" if modality == "image" else "speech"

    def said(result: GenerationResult, verdict: str) -> str:
        excerpt = result.text.strip().replace("\n", " ")[:120] or "(empty)"
        return f"**{verdict}**: “{excerpt}”"

    steps = [
        f"1. **As text**, “{COLLAPSE_REQUEST}” → {said(plain_text, verdicts[0])}",
        f"2. **The same words as {shown_as}** (prompt: “{media_prompt.text}”) → {said(plain_media, verdicts[1])}",
        f"3. **{shown_as.capitalize()} with ReGap** (adaptive, s(x) = {fmt(fixed_media.score)}, "
        f"α_max = {strength:g}, α(x) = {fixed_media.alpha:.2f}) → {said(fixed_media, verdicts[2])}",
    ]
    if verdicts == ["refused", "complied", "refused"]:
        verdict = (f"**The collapse, and the fix:** the model refuses the request as text, complies when the same words "
                   f"arrive as {shown_as}, and ReGap restores the refusal by removing the {modality} drift.")
    else:
        verdict = ("**This model does not show the full story on this request** (as text / as "
                   f"{modality} / with ReGap: {' / '.join(verdicts)}). "
                   "The plots still show where its geometry moves; "
                   + (f"this model's card ({_card_path(session)}) says how often the correction restores refusals "
                      "on it, and why it does not always (the translation ceiling)."
                      if session.model.card is not None else
                      "the built-in demo model's card shows what each stage looks like on a model trained for it."))
    story = "### Show the collapse\n" + "\n".join(steps) + "\n\n" + verdict
    return {
        "status": "Built the collapse story on a built-in harmful request (a request only; no harmful content).",
        "story": story, "prompt": media_prompt.text,
        "image": media_prompt.image if modality == "image" else None,
        "audio": (SAMPLE_RATE, (np.asarray(media_prompt.audio) * 32767).astype(np.int16)) if modality == "audio" else None,
        "mode": "adaptive", "strength": strength, "layers_text": session.layers_text(config.layers), "layer": layer,
        **analysis_outputs(result),
        "plain_text": plain_media.text, "plain_info": verdict_badge(session, plain_media, COLLAPSE_REQUEST),
        "corrected_text": fixed_media.text, "corrected_info": verdict_badge(session, fixed_media, COLLAPSE_REQUEST),
    }


def _card_path(session: ModelSession) -> str:
    card = session.model.card
    assert card is not None
    try:
        return str(card.resolve().relative_to(Path.cwd()))
    except ValueError:  # never show a visitor the server's absolute paths
        return f"{card.parent.name}/{card.name}"
