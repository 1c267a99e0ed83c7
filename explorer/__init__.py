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

from explorer.core.vocab import LABELS, MODALITIES, MODES
from explorer.correction.generation import (
    GenerationResult,
    generate,
    generate_batch,
    generate_texts,
)
from explorer.correction.regap import (
    CorrectionConfig,
    choose_defaults,
    corrected,
    plan_correction,
)
from explorer.evaluation.calibration import (
    Calibration,
    calibrate,
    load_calibration_items,
)
from explorer.evaluation.compare import compare_runs, load_run, write_comparison
from explorer.evaluation.eval_settings import EvalSettings
from explorer.evaluation.judge import Judge, RefusalJudge
from explorer.evaluation.judge_model import ModelJudge, load_judge
from explorer.evaluation.runner import evaluate
from explorer.geometry.embedding import embed_2d
from explorer.geometry.profile import Profile, build_profile
from explorer.inputs.data import Instruction, load_builtin, load_prompts
from explorer.inputs.importers import FORMATS, load_prompt_sources, load_source
from explorer.inputs.media import Prompt, render
from explorer.inputs.uploads import MediaError, load_audio, load_image
from explorer.model.capture import (
    CaptureSettings,
    capture_items,
    capture_prompts,
    record_layers,
)
from explorer.model.loading import load_model
from explorer.model.models import LoadedModel, ModelLoadError
from explorer.model.states import StateBatch

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
