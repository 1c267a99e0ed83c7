"""Overhead of the engine relative to plain transformers calls; prints ratios (goal in brackets).

    python benchmarks/bench.py [--model demo] [--tiny llava] [--repeats 5]

- capture: `capture_prompts` (hooks on every layer + gather) vs the same batched forward without hooks [≤ 1.05]
- fixed / adaptive: `generation.generate` with a correction vs plain `model.generate`, 64 new tokens each,
  `min_new_tokens=64` so both sides produce the same number of tokens [≤ 1.05; adaptive adds a probe pass]
- calibration: `calibrate` on a fresh cache vs plain forwards over the same prompts (rendering included in
  both) [≤ 1.35]
Times are medians over repeats, after one warm-up. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from explorer.correction.generation import generate  # noqa: E402
from explorer.correction.regap import CorrectionConfig  # noqa: E402
from explorer.evaluation.calibration import calibrate, load_calibration_items  # noqa: E402
from explorer.model.capture import CaptureSettings, capture_prompts  # noqa: E402
from explorer.model.loading import load_model  # noqa: E402
from explorer.model.models import LoadedModel  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(model: LoadedModel, repeats: int) -> dict[str, float]:
    items = load_calibration_items("builtin", limit=8)
    modality = "image" if "image" in model.modalities else model.modalities[-1]
    prompts = [model.render(item, modality) for item in items]
    backend = model.backend(modality)
    settings = CaptureSettings(batch_size=len(prompts))

    @torch.inference_mode()
    def plain_forward():
        inputs = model.encode(prompts, padding_side="right")
        backend.model(**inputs, use_cache=False)

    ratios = {"capture": _median_time(lambda: capture_prompts(model, prompts, settings), repeats)
              / _median_time(plain_forward, repeats)}

    with tempfile.TemporaryDirectory() as cache:
        calibration = calibrate(model, items, [modality], cache_dir=Path(cache) / "warm")
    profile = calibration.profile
    prompt = prompts[0]
    tokenizer = backend.tokenizer

    @torch.inference_mode()
    def plain_generate():
        inputs = model.encode([prompt], padding_side="left")
        backend.model.generate(**inputs, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)

    def steered(mode: str):
        config = CorrectionConfig(mode=mode, strength=1.0)  # type: ignore[arg-type]
        return lambda: generate(model, prompt, profile, config, max_new_tokens=64, min_new_tokens=64)

    plain = _median_time(plain_generate, repeats)
    ratios["fixed"] = _median_time(steered("fixed"), repeats) / plain
    ratios["adaptive"] = _median_time(steered("adaptive"), repeats) / plain

    text_prompts = [model.render(item, "text") for item in items]

    def plain_calibration_forwards():
        for group in (text_prompts, [model.render(item, modality) for item in items]):
            with torch.inference_mode():
                model.backend(group[0].modality).model(**model.encode(group), use_cache=False)

    def fresh_calibration():
        with tempfile.TemporaryDirectory() as cache:
            calibrate(model, items, [modality], CaptureSettings(batch_size=len(items)), cache_dir=Path(cache))

    ratios["calibration"] = _median_time(fresh_calibration, repeats) / _median_time(plain_calibration_forwards, repeats)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="model id/folder (repeatable); 'demo'")
    parser.add_argument("--tiny", action="append", default=[], help="tiny random family from tests/tiny_models.py")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    models = args.model or (["demo"] if not args.tiny else [])
    goals = {"capture": 1.05, "fixed": 1.05, "adaptive": 1.05, "calibration": 1.35}
    targets: list[tuple[str, str]] = [(m, m) for m in models]
    tmp = Path(tempfile.mkdtemp())
    if args.tiny:
        from tiny_models import build_tiny_model

        targets += [(f"tiny-{f}", str(build_tiny_model(f, tmp / f))) for f in args.tiny]
    print(f"torch threads: {torch.get_num_threads()}; repeats: {args.repeats}")
    print(f"{'model':<18}" + "".join(f"{k:>14}" for k in goals))
    for name, source in targets:
        ratios = bench(load_model(source, device="auto"), args.repeats)
        print(f"{name:<18}" + "".join(f"{ratios[k]:>10.3f} {'ok' if ratios[k] <= goals[k] else '!!':>3}" for k in goals))
    print("goals: " + ", ".join(f"{k} ≤ {v}" for k, v in goals.items()))


if __name__ == "__main__":
    main()
