"""Two LoRAs combined into one folder merge into exactly the weights the two give merged one after the other."""

from __future__ import annotations

import json

import pytest
import torch

from explorer.demo_model.lora_files import ADAPTER_CONFIG, combine_loras, lora_scaling


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def _random_lora(folder, rank: int, alpha: int, seed: int) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "down_proj"], layers_to_transform=[2, 3],
                        init_lora_weights=False)  # random A and B: a non-zero delta
    get_peft_model(_tiny_llama(), config).save_pretrained(folder)


def _merged(model, folder, strength: float = 1.0):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    wrapped = PeftModel.from_pretrained(model, str(folder))
    for module in wrapped.modules():
        if isinstance(module, LoraLayer):
            for name in module.scaling:
                module.scaling[name] *= strength
    return wrapped.merge_and_unload()


def test_combined_lora_equals_the_two_merged_in_turn_at_their_strengths(tmp_path):
    _random_lora(tmp_path / "text", rank=4, alpha=8, seed=1)
    _random_lora(tmp_path / "media", rank=2, alpha=2, seed=2)
    combine_loras([(tmp_path / "text", 1.5), (tmp_path / "media", 0.7)], tmp_path / "both")
    config = json.loads((tmp_path / "both" / ADAPTER_CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], lora_scaling(config)) == (6, 6, 1.0)
    expected = _merged(_merged(_tiny_llama(), tmp_path / "text", 1.5), tmp_path / "media", 0.7).state_dict()
    got = _merged(_tiny_llama(), tmp_path / "both").state_dict()
    base = _tiny_llama().state_dict()
    changed = [k for k in base if not torch.equal(base[k], expected[k])]
    assert len(changed) == 4  # q_proj and down_proj on layers 2 and 3
    for key in base:
        torch.testing.assert_close(got[key], expected[key], atol=1e-5, rtol=1e-5)


def test_loras_on_different_modules_or_with_patterns_are_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    _random_lora(tmp_path / "a", rank=2, alpha=2, seed=1)
    get_peft_model(_tiny_llama(), LoraConfig(r=2, lora_alpha=2, target_modules=["v_proj"],
                                             init_lora_weights=False)).save_pretrained(tmp_path / "b")
    with pytest.raises(ValueError, match="different modules"):
        combine_loras([(tmp_path / "a", 1.0), (tmp_path / "b", 1.0)], tmp_path / "out")
    with pytest.raises(ValueError, match="use_rslora"):
        lora_scaling({"r": 2, "lora_alpha": 2, "use_rslora": True})
    with pytest.raises(ValueError, match="at least one"):
        combine_loras([], tmp_path / "out")
