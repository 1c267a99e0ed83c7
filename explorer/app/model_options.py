"""The options that choose and calibrate a model (--model, --device, --dtype, …): one declaration for the CLI
(explorer.app.cli) and the app (app.py), in a module of its own so that the app does not import the CLI and, with it,
the evaluation, comparison and importers it never runs."""

from __future__ import annotations

import argparse

__all__ = ["add_model_arguments"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose and calibrate a model: one declaration for the CLI and the app (app.py)."""
    parser.add_argument("--model", default="demo", help="Hugging Face id, local model folder, or 'demo' (default)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bf16 on GPUs that have it, else fp16; fp32 on CPU), float32, bfloat16, float16")
    parser.add_argument("--device-map", default=None, help="'auto' to spread a large model over several GPUs")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code shipped with the checkpoint (off by default: only for sources you trust)")
    parser.add_argument("--calibration", default="default",
                        help="'default' (the model's own: builtin, or validation for the demo), 'builtin' (the "
                             "shipped calibration split), 'validation' (the shipped validation file) or a JSONL/CSV")
    parser.add_argument("--calibration-limit", type=int, default=None, help="at most N calibration items per label")
