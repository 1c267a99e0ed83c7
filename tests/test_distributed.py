"""Data-parallel evaluation: 2 processes (torchrun, gloo on CPU) == 1 process, fresh and after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from explorer.core.distributed import (
    SINGLE,
    Ranks,
    gather_rows,
    ranks_from_env,
    sum_counts,
)

ROOT = Path(__file__).resolve().parent.parent

KILLABLE_CLI = ROOT / "tests" / "killable_cli.py"  # the CLI whose rank KILL_RANK dies at its KILL_AT-th batch


def test_ranks_from_the_torchrun_environment():
    assert ranks_from_env({}) is SINGLE
    assert ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Ranks(3, 4, 1)
    with pytest.raises(ValueError, match="rank 4 of 4"):
        ranks_from_env({"RANK": "4", "WORLD_SIZE": "4"})
    shards = [Ranks(r, 3).shard(list(range(8))) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4, 7], [2, 5]]


def _collectives(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ranks = Ranks(rank, world)
    full = torch.arange(7 * 2, dtype=torch.float32).reshape(7, 2)
    gathered = gather_rows(ranks, full[rank::world], 7)
    counts = sum_counts(ranks, [rank + 1, 10])
    if rank == 0:
        torch.save({"gathered": gathered, "counts": counts}, out_file)
    dist.destroy_process_group()


@pytest.mark.slow  # more than one process
def test_gather_rows_and_sum_counts_over_two_gloo_processes(tmp_path):
    """Uneven shards (7 rows over 2 ranks) come back in item order, bit for bit; counts add up exactly."""
    out = tmp_path / "out.pt"
    mp.spawn(_collectives, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    result = torch.load(out)
    torch.testing.assert_close(result["gathered"], torch.arange(14, dtype=torch.float32).reshape(7, 2),
                               rtol=0, atol=0)
    assert result["counts"] == [3, 20]


def _eval(model: str, tmp_path: Path, out: Path, cache: Path, processes: int,
          kill_at: int = 0) -> subprocess.CompletedProcess:
    script = KILLABLE_CLI
    args = ["eval", "--model", model, "--device", "cpu", "--modalities", "text,image",
            "--regap", "off,fixed,adaptive", "--strength", "auto", "--threshold", "auto", "--calibration-limit", "3",
            "--limit", "3", "--max-new-tokens", "5", "--batch-size", "2", "--cache-dir", str(cache), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "KILL_AT": str(kill_at), "KILL_RANK": "1",
           "OMP_NUM_THREADS": "1"}
    # The one-process run also gets a fresh interpreter here. Run in the test's own (killable_cli.in_this_process),
    # the torchrun runs after it aborted at exit in 2 of 6 full-suite runs ("terminate called without an active
    # exception", after writing the whole run); not reproduced in 18 runs of this test or 24 of the command alone.
    if processes == 1:
        command = [sys.executable, str(script), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   str(script), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT, timeout=900)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]


def _assert_same_run(single: Path, parallel: Path) -> None:
    one, two = _lines(single), _lines(parallel)
    assert [(r["modality"], r["mode"], r["id"]) for r in one] == [(r["modality"], r["mode"], r["id"]) for r in two]
    for a, b in zip(one, two):
        assert a.keys() == b.keys()
        for key in a:
            if key in ("score", "alpha") and a[key] is not None:
                assert a[key] == pytest.approx(b[key], abs=1e-5), (a["id"], key)  # float noise of other batches
            else:
                assert a[key] == b[key], (a["id"], key)
    m1, m2 = (json.loads((p / "metrics.json").read_text()) for p in (single, parallel))
    assert m1["refusal_rate"] == m2["refusal_rate"] and m1["skipped"] == m2["skipped"]
    assert m1["regap"]["strength_choice"] == m2["regap"]["strength_choice"]
    assert m1["regap"]["modality_strengths"] == m2["regap"]["modality_strengths"]
    one_tau, two_tau = (m["regap"]["threshold_choices"]["adaptive"] for m in (m1, m2))  # scored per shard, gathered
    assert one_tau["counts"] == two_tau["counts"] == {"image/harmful": 3, "image/harmless": 3}
    assert one_tau["per_modality"]["image"] == pytest.approx(two_tau["per_modality"]["image"], abs=1e-5)
    assert one_tau["separation"] == two_tau["separation"]  # the AUROC of all ranks' scores, gathered
    assert [(r["id"], r["modality"], r["mode"]) for r in m1["regap"]["per_item"]] == \
        [(r["id"], r["modality"], r["mode"]) for r in m2["regap"]["per_item"]]
    for name, table in m1["per_layer"].items():
        if isinstance(table, dict):
            for key, values in table.items():  # per-layer lists, or per-layer [low, high] intervals
                np.testing.assert_allclose(values, m2["per_layer"][name][key], rtol=0, atol=1e-5, err_msg=key)
        else:
            assert table == m2["per_layer"][name]
    assert not list(parallel.glob("generations.rank*.jsonl"))  # merged, then removed


@pytest.mark.slow
def test_two_processes_equal_one_fresh_and_after_a_kill(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir("llava"))
    single = _eval(model, tmp_path, tmp_path / "single", tmp_path / "cache1", processes=1)
    assert single.returncode == 0, single.stderr[-3000:]
    parallel = _eval(model, tmp_path, tmp_path / "parallel", tmp_path / "cache2", processes=2)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    _assert_same_run(tmp_path / "single", tmp_path / "parallel")

    # Rank 1 is SIGKILLed mid-evaluation (torchrun then stops rank 0); the same command resumes to the same run.
    killed = tmp_path / "killed"
    first = _eval(model, tmp_path, killed, tmp_path / "cache3", processes=2, kill_at=4)
    assert first.returncode != 0
    assert not (killed / "metrics.json").exists()
    shards = {path.name: {(r["modality"], r["mode"], r["id"]) for r in map(json.loads, path.read_text().splitlines())
                          if r.get("id")} for path in killed.glob("generations.rank*.jsonl")}
    assert shards["generations.rank1.jsonl"]  # rank 1 wrote its records of the jobs before the kill ...
    assert not shards.get("generations.rank0.jsonl", set()) & shards["generations.rank1.jsonl"]  # ... its items only
    again = _eval(model, tmp_path, killed, tmp_path / "cache3", processes=2)
    assert again.returncode == 0, again.stderr[-3000:]
    _assert_same_run(tmp_path / "single", killed)
