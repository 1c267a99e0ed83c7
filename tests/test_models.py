"""Tests for explorer.models: clear load errors, composite model folders, strengths recorded beside the weights."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.loading import load_model
from explorer.media import AUDIO_CARRIER, Prompt
from explorer.models import ModelLoadError
from explorer.regap import (
    CorrectionConfig,
)


def _audio_prompt(text: str, seed: int = 0) -> Prompt:
    wave = np.random.default_rng(seed).normal(0, 0.1, 16000).astype(np.float32)
    return Prompt(text=text, audio=wave, modality="audio")


def test_clear_errors(tmp_path, tiny_model_dir, tiny_llava):
    with pytest.raises(ModelLoadError, match="Supported families: .*llava"):
        load_model("no-such-org/no-such-model-xyz", device="cpu")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="no model given"):
        load_model("  ")
    with pytest.raises(ModelLoadError, match="does not accept audio"):
        tiny_llava.encode([_audio_prompt(AUDIO_CARRIER)])
    # a model whose processor and tokenizer have no chat template
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_model_dir("llava"), bare)
    for name in ("chat_template.jinja", "chat_template.json"):
        (bare / name).unlink(missing_ok=True)
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = bare / name
        if path.exists():
            import json

            data = json.loads(path.read_text())
            data.pop("chat_template", None)
            path.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_model(str(bare), device="cpu")
    with pytest.raises(ValueError, match="mode must be one of"):
        CorrectionConfig(mode="bogus")  # type: ignore[arg-type]


def test_demo_strengths_come_only_from_a_summary_of_the_same_weights(tmp_path):
    import json

    from explorer.loading import _chosen_strengths

    path = tmp_path / "eval_summary.json"
    assert _chosen_strengths(path, "rev") == {}  # no summary
    path.write_text("{not json")
    assert _chosen_strengths(path, "rev") == {}
    summary = {"revision": "rev", "regap": {"strength_choice": {"per_modality": {"image": 2.0, "audio": 1}}}}
    path.write_text(json.dumps(summary))
    assert _chosen_strengths(path, "rev") == {"image": 2.0, "audio": 1.0}
    assert _chosen_strengths(path, "other weights") == {}
    path.write_text(json.dumps({"revision": "rev", "regap": {"strength": 1.0}}))  # a run without --strength auto
    assert _chosen_strengths(path, "rev") == {}
