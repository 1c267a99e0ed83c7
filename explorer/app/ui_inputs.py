"""What the app accepts from a visitor: every input checked, bounded and turned into a Prompt or a config.

Why its own module: this is the app's trust boundary. A payload's file path is opened only inside Gradio's
upload folder (or a folder the operator listed), and one message answers for every other path, existing or
not; every number is checked against the bounds the page shows; the corrected-layers text goes through the
one layer-window parser. Each function raises `InputError` (or `MediaError`) with a message that says what to
change; the handlers in `explorer/app/ui.py` turn it into a toast and keep serving.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from explorer.app.analysis import Analysis, compute_analysis
from explorer.app.ui_session import STRENGTH_MAX, AppSettings, AppState, ModelSession
from explorer.core.vocab import MODES, parse_layer_window
from explorer.correction.regap import CorrectionConfig
from explorer.inputs.media import AUDIO_CARRIER, IMAGE_CARRIER, Prompt
from explorer.inputs.uploads import load_audio, load_image

__all__ = [
    "InputError", "analysis_of", "bounded", "correction_config", "is_local_request", "layer_shown", "make_prompt",
    "map_method", "media_source", "model_switch_refusal", "request_text", "short_repr", "text_value", "token_count",
]

_CARRIERS = (IMAGE_CARRIER, AUDIO_CARRIER)


class InputError(ValueError):
    """Input the app cannot use; the message says what to change."""


def _allowed_roots(settings: AppSettings) -> list[Path]:
    from gradio.utils import get_upload_folder

    return [Path(get_upload_folder()).resolve(), *(Path(root).resolve() for root in settings.media_roots)]


def media_source(value: Any, settings: AppSettings) -> tuple[Any, str | None]:
    """(what to decode, the name to show the user) for an input value.

    A file path (a Gradio payload {"path": ..., "orig_name": ...} or a bare string) is accepted only inside
    Gradio's upload folder or `settings.media_roots`; anything else is refused before it is opened, with one
    message whether or not the file exists. Arrays and PIL images (in-process callers) pass as they are.
    """
    shown: str | None = None
    if isinstance(value, dict):
        name = value.get("orig_name")
        shown = name[:120] if isinstance(name, str) and name else None
        if not value.get("path"):
            raise InputError("the file did not arrive (a payload without a path); upload it again")
        value = value["path"]
    # Arrays, (rate, samples) pairs and PIL images come from in-process callers only: a web payload is a file.
    if value is None or isinstance(value, (np.ndarray, tuple)) or type(value).__module__.startswith("PIL"):
        return value, shown
    if not isinstance(value, (str, Path)):
        raise InputError(f"cannot use a {type(value).__name__} as an image or audio input; upload a file")
    path = Path(value)
    shown = shown or path.name
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in _allowed_roots(settings)):
        raise InputError(f"{shown!r} was not uploaded through this page; upload the file instead")
    return resolved, shown


#: Host names (with or without a port) that mean "this machine"; anything else in a request's Host header means the
#: page was reached through another name: a reverse proxy in front, or DNS rebinding.
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Headers a reverse proxy adds: their presence means the real client is elsewhere, whatever the peer address says.
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def _is_loopback_address(host: str | None) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name of a Host header without its port: "127.0.0.1:7860" → "127.0.0.1", "[::1]:7860" → "::1"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_local_request(client_host: str | None, headers: Any) -> bool:
    """True only for a request from this machine that also names this machine: a loopback peer, a loopback Host
    header, and no proxy header. A reverse proxy's peer address is loopback too, so the Host header and the proxy
    headers decide; a DNS-rebinding page sends its own name as Host."""
    headers = {str(k).lower(): str(v) for k, v in dict(headers or {}).items()}
    if any(name in headers for name in _PROXY_HEADERS):
        return False
    return _is_loopback_address(client_host) and _host_name(headers.get("host", "")) in _LOOPBACK_NAMES


def model_switch_refusal(settings: AppSettings, model_id: str, local: bool) -> str | None:
    """Why this request may not load `model_id`, or None when it may. Decided from the server's policy and the
    request alone: a refused id is never looked up, and every refused id gets the same message."""
    if settings.model_switch == "any" or (settings.model_switch == "local" and local):
        return None
    if settings.model_switch == "listed":
        return None if model_id in settings.allowed_models else (
            f"this server serves only these models: {', '.join(settings.allowed_models)}")
    if settings.model_switch == "local":
        return ("models can be switched from the page only on this machine itself (http://127.0.0.1 or "
                "http://localhost, no proxy); the operator can allow it with --allow-model-switch or --allowed-models")
    return ("switching models from the page is turned off on this server (its operator can start it with "
            "--allow-model-switch, or list models with --allowed-models)")


def text_value(name: str, value: Any) -> str:
    """A text field's value, stripped: None is "", anything else that is not text (an API caller's number, list or
    object) is refused with a message."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text; got a {type(value).__name__}")
    return value.strip()


#: The 2-D maps the page offers (the radio's choices).
MAP_METHODS = ("UMAP", "PCA")


def map_method(value: Any) -> str:
    """The 2-D map's method as the page names it; anything else is refused rather than silently drawn as PCA."""
    method = text_value("the 2-D map", value).upper()
    if method not in MAP_METHODS:
        raise InputError(f"the 2-D map must be one of {', '.join(MAP_METHODS)}; got {short_repr(value)}")
    return method


def short_repr(value: Any, limit: int = 40) -> str:
    """`repr(value)` cut to `limit` characters: a message never echoes a megabyte back (nor fails on an integer too
    long to print)."""
    try:
        text = repr(value)
    except ValueError:  # int with more digits than Python prints
        return "a number too long to print"
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def bounded(name: str, value: Any, low: float, high: float, whole: bool = False) -> float:
    """`value` as a number within [low, high] (the bounds the page shows), else an InputError that says so."""
    bounds = f"{int(low)}..{int(high)}" if whole else f"{low:g}..{high:g}"
    kind = "a whole number" if whole else "a number"
    shown = short_repr(value)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise InputError(f"{name} must be {kind} in {bounds}; got {shown}") from err
    if not math.isfinite(number) or not low <= number <= high or (whole and number != int(number)):
        raise InputError(f"{name} must be {kind} in {bounds}; got {shown}")
    return number


def make_prompt(session: ModelSession, settings: AppSettings, text: str | None, image: Any = None,
                audio: Any = None) -> tuple[Prompt, list[str]]:
    """The Prompt for the inputs, plus notices (e.g. audio trimmed). Raises InputError / MediaError."""
    text = text_value("the prompt", text)
    (image, image_name), (audio, audio_name) = media_source(image, settings), media_source(audio, settings)
    notices: list[str] = []
    if len(text) > settings.max_prompt_chars:
        raise InputError(f"the prompt has {len(text)} characters; keep it under {settings.max_prompt_chars}")
    if image is not None and audio is not None:
        raise InputError("give an image or an audio clip, not both: clear one of them")
    modality = "image" if image is not None else "audio" if audio is not None else "text"
    if modality == "text" and not text:
        raise InputError("the prompt is empty: type a request, or add an image or an audio clip")
    if modality not in session.model.modalities:
        raise InputError(f"{session.model.name} does not accept {modality} input (it accepts "
                         f"{', '.join(session.model.modalities)}); remove the {modality} or load another model")
    if modality == "image":
        if isinstance(image, np.ndarray):
            from PIL import Image

            image = Image.fromarray(image)
        pil = load_image(image, max_pixels=settings.max_image_pixels, name=image_name)
        request = session.rendered_request("image", media_only(pil, None).key)
        return Prompt(text=text or IMAGE_CARRIER, image=pil, modality="image", request=request), notices
    if modality == "audio":
        if isinstance(audio, (tuple, list)):
            audio = (int(audio[0]), np.asarray(audio[1]))
        samples, notice = load_audio(audio, max_seconds=settings.max_audio_seconds, name=audio_name)
        if notice:
            notices.append(notice)
        request = session.rendered_request("audio", media_only(None, samples).key)
        return Prompt(text=text or AUDIO_CARRIER, audio=samples, modality="audio", request=request), notices
    notices += unseen_words_notice(session, text)
    return Prompt(text=text, modality="text"), notices


def media_only(image: Any, audio: np.ndarray | None, request: str | None = None) -> Prompt:
    """A prompt of the medium alone (no text): its key names the medium, whatever text goes with it."""
    return Prompt(text="", image=image, audio=audio, modality="image" if image is not None else "audio",
                  request=request)


def unseen_words_notice(session: ModelSession, text: str) -> list[str]:
    """A notice when the request uses words the model never saw in training (models that list a vocabulary:
    the demo), since its answer to such a request says nothing about the mechanism."""
    unseen = session.model.unseen_words(text)
    if not unseen:
        return []
    shown = ", ".join(f"“{w}”" for w in unseen[:8]) + (" …" if len(unseen) > 8 else "")
    return [f"{session.model.name} never saw {'this word' if len(unseen) == 1 else 'these words'} in training: "
            f"{shown}. It knows only its training vocabulary, so its answer to this request is not meaningful; "
            "the gallery holds requests it reads."]


def correction_config(session: ModelSession, mode: str, strength: float, layers_text: str | None) -> CorrectionConfig:
    if not isinstance(mode, str) or mode not in MODES:
        raise InputError(f"correction mode must be one of {', '.join(MODES)}; got {short_repr(mode)}")
    alpha = bounded("strength", strength, 0.0, STRENGTH_MAX)
    try:
        layers = parse_layer_window(text_value("corrected layers", layers_text), session.num_layers)
    except ValueError as err:
        raise InputError(str(err)) from err
    return session.config(mode, alpha, layers)


def layer_shown(session: ModelSession, layer: Any) -> int:
    """The layer shown: 0..L-1 as on the slider (a negative index is refused, not wrapped to another layer)."""
    return int(bounded("layer shown", layer, 0, session.num_layers - 1, whole=True))


def token_count(state: AppState, max_new_tokens: Any) -> int:
    return int(bounded("max new tokens", max_new_tokens, 1, state.settings.max_new_tokens_limit, whole=True))


#: Longest request the page draws or speaks: a rendering costs CPU and a cache file per distinct text.
MAX_RENDER_WORDS = 80


def request_text(text: Any, settings: AppSettings) -> str:
    text = text_value("the request", text)
    if not text:
        raise InputError("type a request first; it is then drawn as an image or spoken as audio")
    if len(text) > settings.max_prompt_chars or len(text.split()) > MAX_RENDER_WORDS:
        raise InputError(f"the request is too long to render ({len(text.split())} words, {len(text)} characters); "
                         f"keep it under {MAX_RENDER_WORDS} words and {settings.max_prompt_chars} characters")
    if text in _CARRIERS:
        raise InputError("the prompt is already the carrier sentence; type the request itself to render it")
    return text


def analysis_of(state: AppState, text: str | None, image: Any, audio: Any, layer: Any, mode: str, strength: Any,
                layers_text: str | None, method: str) -> tuple[Analysis, Prompt, CorrectionConfig, list[str]]:
    """The page's inputs checked and analysed (Analyse and Export read the same thing): (analysis, prompt,
    correction, notices). Raises InputError / MediaError / ValueError with the message to show."""
    session = state.session
    prompt, notices = make_prompt(session, state.settings, text, image, audio)
    config = correction_config(session, mode, strength, layers_text)
    shown, method = layer_shown(session, layer), map_method(method)
    return compute_analysis(state, session, prompt, config, shown, method), prompt, config, notices
