"""The built-in demo model: a toy MLLM (LLaVA image model + Qwen2-Audio audio model around one small Qwen2 LM),
trained in-house so that the modality-drift collapse of text-learned refusal, and its repair, are real.

Train: `python -m explorer.demo_model.train --out assets/demo_model --seed 0`;
measure: `python -m explorer.demo_model.measure assets/demo_model`.
"""

from .config import DemoConfig

__all__ = ["DemoConfig"]
