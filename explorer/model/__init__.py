"""Stage 2, the model: loading any supported family (loading, models, model_view), the project's own reading-LM family
and its pinned base (reading_lm, reading_processor, text_reader, speech_reader, pinned_base), and the forward pass
with hooks that captures per-layer states (capture, states).
"""
