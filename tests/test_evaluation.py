"""Tests for explorer.evaluation: a run killed at any point resumes to exactly the uninterrupted result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Runs the CLI in a fresh interpreter whose generate() SIGKILLs the process at the N-th call: no cleanup, no
# finally blocks, exactly what an out-of-memory killer or a pulled plug does.
_KILL_AT = """
import os, signal, sys
import explorer.evaluation as evaluation
real, calls = evaluation.generate, [0]
def generate(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
evaluation.generate = generate
from explorer.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "generations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len({(r["modality"], r["mode"], r["id"]) for r in records}) == len(records)  # nothing twice
    return {f'{r["modality"]}/{r["mode"]}/{r["id"]}': r for r in records}


@pytest.mark.slow
def test_sigkilled_eval_resumes_to_the_uninterrupted_generations(tiny_model_dir, tmp_path):
    cache = tmp_path / "cache"
    args = ["eval", "--model", str(tiny_model_dir("llava")), "--device", "cpu", "--modalities", "text,image",
            "--regap", "off,fixed,adaptive", "--strength", "1.5", "--calibration-limit", "4", "--limit", "3",
            "--max-new-tokens", "6", "--cache-dir", str(cache)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole = subprocess.run([sys.executable, "-c", _KILL_AT, *args, "--out", str(tmp_path / "whole")],
                           env={**env, "KILL_AT": "0"}, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = tmp_path / "killed"
    first = subprocess.run([sys.executable, "-c", _KILL_AT, *args, "--out", str(killed)],
                           env={**env, "KILL_AT": "9"}, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert first.returncode == -9  # SIGKILL, mid-run
    done_before = _records(killed)
    assert 0 < len(done_before) < len(_records(tmp_path / "whole"))
    with (killed / "generations.jsonl").open("a") as sink:
        sink.write('{"id": "cut-by-the-kil')  # a line cut mid-write, as a kill during write() leaves it
    again = subprocess.run([sys.executable, "-c", _KILL_AT, *args, "--out", str(killed)],
                           env={**env, "KILL_AT": "0"}, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _records(killed) == _records(tmp_path / "whole")
    assert json.loads((killed / "metrics.json").read_text())["refusal_rate"] == \
        json.loads((tmp_path / "whole" / "metrics.json").read_text())["refusal_rate"]
