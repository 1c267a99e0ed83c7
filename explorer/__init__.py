"""Safety Geometry Explorer: see why multimodal LLMs stop refusing, and correct it with ReGap.

The data path, one module per stage: `data` (instructions) → `render` (text / image / audio prompts) →
`models` (load, build inputs) → `capture` (per-layer states) → `geometry` (refusal directions, metrics,
profiles) → `regap` (corrected generation) → `judge` → `evaluate` / `plots` / `ui`. Formulas: docs/method.md.
"""

from .calibration import Calibration, calibrate, load_calibration_items
from .capture import CaptureSettings, capture_items, capture_prompts, record_layers
from .data import Instruction, load_builtin, load_prompts
from .evaluate import EvalSettings, evaluate
from .geometry import Profile, StateBatch, build_profile, embed_2d
from .judge import RefusalJudge
from .models import LoadedModel, ModelLoadError, load_model
from .regap import CorrectionConfig, GenerationResult, choose_defaults, corrected, generate
from .render import MediaError, Prompt, load_audio, load_image, render

__all__ = [
    "Calibration",
    "CaptureSettings",
    "CorrectionConfig",
    "EvalSettings",
    "GenerationResult",
    "Instruction",
    "LoadedModel",
    "MediaError",
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
    "corrected",
    "embed_2d",
    "evaluate",
    "generate",
    "load_audio",
    "load_builtin",
    "load_calibration_items",
    "load_image",
    "load_model",
    "load_prompts",
    "record_layers",
    "render",
]
