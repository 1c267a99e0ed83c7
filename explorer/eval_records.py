"""The evaluation's record files: where records are appended, how they are read back, and the one order they are
finally written in.

Why a module: a run appends one JSON line per generation as soon as it exists (so a killed run loses at most the
line being written); a data-parallel run appends to one file per rank (`generations.rank<r>.jsonl`, no two
processes ever write one file); at the end the main process writes `generations.jsonl` once, in the canonical
order of a single uninterrupted run, and removes the rank files. Reading back takes every file present, so a
run resumes whatever the number of processes before or now.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from .data import Instruction
from .storage import write_atomic

__all__ = ["GENERATIONS", "canonical_records", "read_done", "record_key", "shard_file", "shard_files",
           "states_path", "write_canonical"]

GENERATIONS = "generations.jsonl"


def record_key(item_id: str, modality: str, mode: str) -> str:
    return f"{modality}/{mode}/{item_id}"


def shard_file(out_dir: Path, rank: int | None) -> Path:
    """Where a process appends its records: the run's file, or its rank's own in a data-parallel run."""
    return out_dir / (GENERATIONS if rank is None else f"generations.rank{rank}.jsonl")


def shard_files(out_dir: Path) -> list[Path]:
    """The per-rank record files present, by rank."""
    return sorted(out_dir.glob("generations.rank*.jsonl"), key=lambda p: int(p.stem.removeprefix("generations.rank")))


def _drop_cut_line(path: Path) -> None:
    """A run killed mid-write leaves a last line without its newline: cut it off, so the records appended by
    the resumed run start on a line of their own (that one item is generated again)."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def read_done(out_dir: Path, repair: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every record of the run, from `generations.jsonl` and any rank files, by key (a later line wins).

    `repair`: the file this process appends to; a line cut by a kill is removed from it first. Other files are
    read as they are (another rank may be writing them) and a cut line there is simply not read.
    """
    if repair is not None:
        _drop_cut_line(repair)
    done: dict[str, dict[str, Any]] = {}
    for path in [out_dir / GENERATIONS, *shard_files(out_dir)]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that item is generated again
            done[record_key(record["id"], record["modality"], record["mode"])] = record
    return done


def canonical_records(
    items: Sequence[Instruction], jobs: Iterable[tuple[str, str]], text_modes: Sequence[str],
    done: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """The records in the order one uninterrupted process writes them: job by job, items in order, each text
    record followed by its copies under `text_modes`; then any other record the folder holds (an earlier run's
    items beyond this run's --limit), in their own order, so that nothing is lost."""
    ordered: list[dict[str, Any]] = []
    seen: set[str] = set()
    for modality, mode in jobs:
        for item in items:
            keys = [record_key(item.id, modality, mode)]
            if modality == "text":
                keys += [record_key(item.id, "text", m) for m in text_modes]
            for key in keys:
                if key in done and key not in seen:
                    ordered.append(done[key])
                    seen.add(key)
    ordered += [record for key, record in done.items() if key not in seen]
    return ordered


def write_canonical(out_dir: Path, records: list[dict[str, Any]]) -> None:
    """Write `generations.jsonl` once, atomically, then remove the rank files it now holds."""
    write_atomic(out_dir / GENERATIONS, "".join(json.dumps(record) + "\n" for record in records))
    for path in shard_files(out_dir):
        path.unlink(missing_ok=True)


def states_path(out_dir: Path, modality: str, mode: str, item_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id)
    return out_dir / "states" / modality / mode / f"{safe}.safetensors"
