"""The next demo's committed parts (assets/demo_parts) are the files the docs name: each weight file matches its
pinned checksum, each part loads with the class the build loads it with, and each was trained with the documented
recipe (so a changed file or a retrained part with other settings fails here, not in an hour-long build)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explorer.demo_model.safety_adapter import PROJECTIONS, AdapterConfig
from explorer.model.pinned_base import file_sha256
from explorer.model.speech_reader import SpeechReader
from explorer.model.text_reader import TextReader

PARTS = Path(__file__).resolve().parent.parent / "assets" / "demo_parts"
SUMS = [line.split() for line in (PARTS / "SHA256SUMS").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(("digest", "name"), SUMS, ids=[name for _, name in SUMS])
def test_every_weight_file_matches_its_pinned_checksum(digest: str, name: str) -> None:
    assert file_sha256(PARTS / name) == digest


def test_every_weight_file_in_the_folder_is_pinned() -> None:
    weights = sorted(str(p.relative_to(PARTS)) for p in PARTS.rglob("*.safetensors"))
    assert weights == sorted(name for _, name in SUMS)


def test_the_text_adapter_is_the_documented_recipe_on_the_documented_layers() -> None:
    folder = PARTS / "text_adapter_v4"
    config = json.loads((folder / "adapter_config.json").read_text())
    recipe = json.loads((folder / "training.json").read_text())["config"]
    assert (config["r"], config["lora_alpha"]) == (AdapterConfig.rank, AdapterConfig.alpha)
    assert sorted(config["target_modules"]) == sorted(PROJECTIONS)
    assert config["layers_to_transform"] == list(range(AdapterConfig.first_layer, 30))  # SmolLM2-135M: 30 layers
    assert {k: recipe[k] for k in ("kl_weight", "margin_weight", "margin", "refusal_margin_weight", "seed")} == {
        "kl_weight": 2.0, "margin_weight": 1.0, "margin": 2.0, "refusal_margin_weight": 1.0, "seed": 0}


def test_the_readers_load_with_their_classes_and_their_recorded_settings() -> None:
    image = TextReader.from_pretrained(PARTS / "image_reader_24")
    assert image.config.height == 24
    speech = SpeechReader.from_pretrained(PARTS / "speech_reader")
    for reader, folder, steps in ((image, "image_reader_24", 1500), (speech, "speech_reader", 2500)):
        training = json.loads((PARTS / folder / "training.json").read_text())
        assert training["steps"] == steps
        assert training["parameters"] == sum(p.numel() for p in reader.parameters())
