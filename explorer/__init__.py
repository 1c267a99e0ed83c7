"""Safety Geometry Explorer: see why multimodal LLMs stop refusing, and correct it with ReGap.

The data path, one module per stage (docs/architecture.md): `data` (instructions) → `media` (text / image /
audio prompts; `uploads` opens user files safely) → `loading` (find and load a model) → `models` (a loaded
model builds its inputs) → `capture` (per-layer states, a `StateBatch`) → `geometry` (formulas) and `profile` (a model's geometry, saved) → `regap`
(the correction; `peers`: ShiftDC and CMRM) and `generation` → `judge` → `evaluation` / `plots` / `ui`; `importers`
reads public benchmarks, `compare` and `run_view` read finished runs. Words shared by all of them: `vocab`.
Formulas: docs/method.md.
"""

from .calibration import Calibration, calibrate, load_calibration_items
from .capture import CaptureSettings, capture_items, capture_prompts, record_layers
from .compare import compare_runs, load_run, write_comparison
from .data import Instruction, load_builtin, load_prompts
from .embedding import embed_2d
from .evaluation import EvalSettings, evaluate
from .generation import GenerationResult, generate, generate_batch, generate_texts
from .importers import FORMATS, load_prompt_sources, load_source
from .judge import Judge, RefusalJudge
from .judge_model import ModelJudge, load_judge
from .loading import load_model
from .media import Prompt, render
from .models import LoadedModel, ModelLoadError
from .profile import Profile, build_profile
from .regap import CorrectionConfig, choose_defaults, corrected, plan_correction
from .states import StateBatch
from .uploads import MediaError, load_audio, load_image
from .vocab import LABELS, MODALITIES, MODES

__all__ = [
    "FORMATS",
    "Calibration",
    "CaptureSettings",
    "CorrectionConfig",
    "EvalSettings",
    "GenerationResult",
    "Instruction",
    "Judge",
    "LABELS",
    "LoadedModel",
    "MODALITIES",
    "MODES",
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
    "load_prompt_sources",
    "load_run",
    "load_source",
    "load_image",
    "load_judge",
    "load_model",
    "load_prompts",
    "plan_correction",
    "record_layers",
    "render",
    "write_comparison",
]
