"""Safety Geometry Explorer: see why multimodal LLMs stop refusing, and correct it with ReGap.

The package is laid out as the data path (docs/architecture.md), one subpackage per stage, each importing only
the stages below it (tests/test_layout.py checks it):

    core        vocabulary, storage, intervals, multi-process plumbing
    inputs      prompts and public benchmarks → media (typographic images, speech) → a Prompt
    model       loading a family → its inputs → the forward pass with hooks → per-layer states
    geometry    refusal directions, separability, drift (docs/method.md), a model's profile, 2-D maps
    correction  ReGap and the peers' modes, generation with or without them
    report      figure builders (Plotly) and the documents' checked figures
    evaluation  judging answers, choosing strengths, running and comparing evaluations
    app         the web app's handlers, the CLI, their shared model options

The public API is re-exported here; `demo_model` trains and measures the built-in demo.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Where each public name lives. Imported on first use (PEP 562), so `import explorer.app.starting` or
#: `explorer.core.vocab` stays light (no torch, no Gradio): app.py answers its first visitor before those load.
_PUBLIC = {
    "LABELS": "explorer.core.vocab",
    "MODALITIES": "explorer.core.vocab",
    "MODES": "explorer.core.vocab",
    "GenerationResult": "explorer.correction.generation",
    "generate": "explorer.correction.generation",
    "generate_batch": "explorer.correction.generation",
    "generate_texts": "explorer.correction.generation",
    "CorrectionConfig": "explorer.correction.regap",
    "choose_defaults": "explorer.correction.regap",
    "corrected": "explorer.correction.regap",
    "plan_correction": "explorer.correction.regap",
    "Calibration": "explorer.evaluation.calibration",
    "calibrate": "explorer.evaluation.calibration",
    "load_calibration_items": "explorer.evaluation.calibration",
    "compare_runs": "explorer.evaluation.compare",
    "load_run": "explorer.evaluation.compare",
    "write_comparison": "explorer.evaluation.compare",
    "EvalSettings": "explorer.evaluation.eval_settings",
    "Judge": "explorer.evaluation.judge",
    "RefusalJudge": "explorer.evaluation.judge",
    "ModelJudge": "explorer.evaluation.judge_model",
    "load_judge": "explorer.evaluation.judge_model",
    "evaluate": "explorer.evaluation.runner",
    "embed_2d": "explorer.geometry.embedding",
    "Profile": "explorer.geometry.profile",
    "build_profile": "explorer.geometry.profile",
    "Instruction": "explorer.inputs.data",
    "load_builtin": "explorer.inputs.data",
    "load_prompts": "explorer.inputs.data",
    "FORMATS": "explorer.inputs.importers",
    "load_prompt_sources": "explorer.inputs.importers",
    "load_source": "explorer.inputs.importers",
    "Prompt": "explorer.inputs.media",
    "render": "explorer.inputs.media",
    "MediaError": "explorer.inputs.uploads",
    "load_audio": "explorer.inputs.uploads",
    "load_image": "explorer.inputs.uploads",
    "CaptureSettings": "explorer.model.capture",
    "capture_items": "explorer.model.capture",
    "capture_prompts": "explorer.model.capture",
    "record_layers": "explorer.model.capture",
    "load_model": "explorer.model.loading",
    "LoadedModel": "explorer.model.models",
    "ModelLoadError": "explorer.model.models",
    "StateBatch": "explorer.model.states",
}

__all__ = [
    "FORMATS",
    "LABELS",
    "MODALITIES",
    "MODES",
    "Calibration",
    "CaptureSettings",
    "CorrectionConfig",
    "EvalSettings",
    "GenerationResult",
    "Instruction",
    "Judge",
    "LoadedModel",
    "MediaError",
    "ModelJudge",
    "ModelLoadError",
    "Profile",
    "Prompt",
    "RefusalJudge",
    "StateBatch",
    "build_profile",
    "calibrate",
    "capture_items",
    "capture_prompts",
    "choose_defaults",
    "compare_runs",
    "corrected",
    "embed_2d",
    "evaluate",
    "generate",
    "generate_batch",
    "generate_texts",
    "load_audio",
    "load_builtin",
    "load_calibration_items",
    "load_image",
    "load_judge",
    "load_model",
    "load_prompt_sources",
    "load_prompts",
    "load_run",
    "load_source",
    "plan_correction",
    "record_layers",
    "render",
    "write_comparison",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once imported, a plain attribute
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
