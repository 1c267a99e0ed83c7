"""Tests for explorer.model.models: clear load errors, composite model folders, strengths recorded beside the weights."""

from __future__ import annotations

import json
import shutil

import pytest
from noise_prompts import audio_prompt

from explorer.correction.regap import (
    CorrectionConfig,
)
from explorer.inputs.media import AUDIO_CARRIER
from explorer.model.loading import load_model
from explorer.model.models import ModelLoadError


def test_clear_errors(tmp_path, tiny_model_dir, tiny_llava):
    with pytest.raises(ModelLoadError, match="Supported families: .*llava"):
        load_model("no-such-org/no-such-model-xyz", device="cpu")
    with pytest.raises(ModelLoadError, match="not a model"):
        load_model(str(tmp_path), device="cpu")
    with pytest.raises(ModelLoadError, match="no model given"):
        load_model("  ")
    with pytest.raises(ModelLoadError, match="does not accept audio"):
        tiny_llava.encode([audio_prompt(AUDIO_CARRIER)])
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

    from explorer.model.loading import _chosen_strengths

    path = tmp_path / "eval_summary.json"
    assert _chosen_strengths(path, "rev") == {}  # no summary
    path.write_text("{not json")
    assert _chosen_strengths(path, "rev") == {}
    summary = {"revision": "rev", "regap": {"strength_choice": {"per_modality": {"image": 2.0, "audio": 1}}}}
    path.write_text(json.dumps(summary))
    assert _chosen_strengths(path, "rev") == {"adaptive": {"image": 2.0, "audio": 1.0}}  # an older summary
    summary["regap"]["mode_strengths"] = {"fixed": {"image": 0.5}, "adaptive": {"image": 1.5, "audio": 0.25}}
    path.write_text(json.dumps(summary))
    assert _chosen_strengths(path, "rev") == {"fixed": {"image": 0.5}, "adaptive": {"image": 1.5, "audio": 0.25}}
    assert _chosen_strengths(path, "other weights") == {}
    path.write_text(json.dumps({"revision": "rev", "regap": {"strength": 1.0}}))  # a run without --strength auto
    assert _chosen_strengths(path, "rev") == {}


def _composite(folder, tiny_model_dir, copies: dict[str, str], manifest: dict) -> None:
    """A composite model folder: sub-folder name -> a copy of that family's tiny model, and its manifest."""
    for name, family in copies.items():
        shutil.copytree(tiny_model_dir(family), folder / name)
    (folder / "manifest.json").write_text(json.dumps({"format": "explorer-model/1", **manifest}))


def test_a_composite_folder_is_loaded_from_its_manifest(tmp_path, tiny_model_dir):
    from explorer.model.loading import folder_revision

    folder = tmp_path / "composite"
    folder.mkdir()
    _composite(folder, tiny_model_dir, {"vision": "llava"}, {
        "backends": {"text": "vision", "image": "vision"},
        "media": {"image_layout": {"cols": 2, "rows": 2, "cell_width": 32, "cell_height": 32, "font_size": 9},
                  "audio_style": "slots", "slot_seconds": 0.5},
        "notice": "A **test** model.", "card": "README.md"})
    model = load_model(str(folder), device="cpu")
    assert model.name == "composite" and model.modalities == ("text", "image")
    assert model.media.image_layout.size == (64, 64) and model.media.slot_seconds == 0.5
    assert model.notice == "A **test** model." and model.card == folder / "README.md"
    assert model.render("one two three", "image").image.size == (64, 64)
    assert model.revision == folder_revision(folder) == folder_revision(folder / "vision")  # one backend folder


@pytest.mark.parametrize(("manifest", "message"), [
    ({"format": "explorer-demo/1", "backends": {"text": "vision"}}, "format is 'explorer-demo/1'"),
    ({"format": "explorer-model/1", "backends": {"image": "vision"}}, "needs a 'text' entry"),
    ({"format": "explorer-model/1", "backends": {"text": "../elsewhere"}}, "points outside the model folder"),
    ({"format": "explorer-model/1", "backends": {"text": "vision"}, "card": "/etc/passwd"}, "points outside"),
    ({"format": "explorer-model/1", "backends": {"text": "vision"}, "media": {"audio_style": "words"}},
     "media.audio_style must be one of"),
    ({"format": "explorer-model/1", "backends": {"text": "vision"}, "media": {"slot_seconds": 0}}, "slot_seconds"),
])
def test_a_bad_manifest_is_a_clear_error(tmp_path, manifest, message):
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="not a valid model manifest") as caught:
        load_model(str(tmp_path), device="cpu")
    assert message in str(caught.value)


def test_backends_said_to_share_a_language_model_must_have_equal_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "mismatch"
    folder.mkdir()
    _composite(folder, tiny_model_dir, {"vision": "llava", "speech": "qwen2_audio"}, {
        "backends": {"text": "vision", "image": "vision", "audio": "speech"}, "shared_language_model": True})
    with pytest.raises(ModelLoadError, match="share one language model, but their weights differ"):
        load_model(str(folder), device="cpu")


@pytest.mark.parametrize("family", ["llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3", "smolvlm", "idefics3",
                                    "qwen2_audio", "sge_reading_lm"])
def test_the_class_looked_up_is_the_auto_classs_own(tiny_model_dir, family):
    """The loader looks up the one class AutoModelForMultimodalLM maps a config to (no import of every family);
    it must be exactly the class the Auto class itself instantiates."""
    from transformers import AutoConfig, AutoModelForMultimodalLM

    from explorer.model.loading import _multimodal_class, register_own_families

    register_own_families()
    folder = tiny_model_dir(family)
    config = AutoConfig.from_pretrained(folder)
    assert _multimodal_class(config, trust_remote_code=False) is type(AutoModelForMultimodalLM.from_config(config))
    assert _multimodal_class(config, trust_remote_code=True) is AutoModelForMultimodalLM  # remote code: the Auto path
