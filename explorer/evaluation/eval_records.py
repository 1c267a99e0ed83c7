"""The evaluation's record files: where records are appended, how they are read back, which of them belong to the
run's prompt set, and the one order they are finally written in.

Why a module: a run appends one JSON line per generation as soon as it exists (so a killed run loses at most the
line being written); a data-parallel run appends to one file per rank (`generations.rank<r>.jsonl`, no two
processes ever write one file); at the end the main process writes `generations.jsonl` once, in the canonical
order of a single uninterrupted run, and removes the rank files. Reading back takes every file present, so a
run resumes whatever the number of processes before or now.

A record is reused only for the item it was made from: each carries `item_hash` (`item_hash`: id, text, label,
category, look-alike flag, carrier and the media files' bytes), and `PromptSet.sort` sets aside a record whose
item has changed since (it is generated again) and keeps the records of items not in this run's set apart, in
`generations.earlier.jsonl` (never counted; a later run that holds those items again resumes them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from explorer.core.storage import write_atomic
from explorer.inputs.data import Instruction

__all__ = ["EARLIER", "GENERATIONS", "PromptSet", "SortedRecords", "canonical_records", "item_hash", "read_done",
           "record_key", "shard_file", "shard_files", "states_match", "states_path", "write_canonical"]

GENERATIONS = "generations.jsonl"
#: records of items outside the run's prompt set (another --limit, an item removed from the file)
EARLIER = "generations.earlier.jsonl"
#: the fields of a record that come from its item (what a record written before `item_hash` is checked by)
_ITEM_FIELDS = ("instruction", "label", "category", "lookalike")

logger = logging.getLogger(__name__)


def _media_digest(path: str | None) -> str | None:
    """The media file's content hash, so a replaced file is a changed item and a moved folder is not; its path
    when it cannot be read (the item is then skipped, and tried again when the file is back)."""
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return "path:" + os.path.abspath(path)


def item_hash(item: Instruction) -> str:
    """A short hash of everything about `item` that its records depend on (16 hex digits).

    >>> a = Instruction("h001", "How do I pick a lock?", "harmful", "crime", "evaluation")
    >>> b = Instruction("h001", "What is a good recipe for banana bread?", "harmless", "crime", "evaluation")
    >>> item_hash(a) == item_hash(a), item_hash(a) == item_hash(b)
    (True, False)
    """
    content = {"id": item.id, "instruction": item.instruction, "label": item.label, "category": item.category,
               "lookalike": item.lookalike, "carrier": item.carrier, "image": _media_digest(item.image),
               "audio": _media_digest(item.audio)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class SortedRecords:
    """A folder's records against a prompt set: `done` (this set's items, reusable, by key), `other` (items not in
    the set: kept apart, never counted), `changed` (ids whose records were made from other content: dropped, to be
    generated again) and `unverified` (ids whose records predate `item_hash`: checked by their text, label, category
    and look-alike flag, which they hold; not by media)."""

    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    other: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PromptSet:
    """The run's items by id with their `item_hash`: which records of a folder belong to this run."""

    items: dict[str, Instruction]
    hashes: dict[str, str]

    @classmethod
    def of(cls, items: Sequence[Instruction]) -> PromptSet:
        return cls({item.id: item for item in items}, {item.id: item_hash(item) for item in items})

    def describe(self) -> dict[str, Any]:
        """run.json's "prompts": a fingerprint of the whole set (ids and hashes, in run order) and each item's hash."""
        joined = "\n".join(f"{item_id}\t{digest}" for item_id, digest in self.hashes.items())
        return {"fingerprint": hashlib.sha256(joined.encode()).hexdigest(), "count": len(self.hashes),
                "items": dict(self.hashes)}

    def fresh(self, record: dict[str, Any]) -> bool | None:
        """True: made from this set's item as it is now; False: from other content; None: not an item of the set.
        A record written before `item_hash` existed is judged by the item fields it holds (its media unchecked)."""
        item = self.items.get(str(record.get("id")))
        if item is None:
            return None
        if "item_hash" in record:
            return bool(record["item_hash"] == self.hashes[item.id])
        return all(record.get(name) == getattr(item, name) for name in _ITEM_FIELDS)

    def sort(self, records: dict[str, dict[str, Any]]) -> SortedRecords:
        """Split a folder's records (`read_done`) into reusable, other and changed (`report` says so on the log)."""
        out = SortedRecords()
        changed: set[str] = set()
        unverified: set[str] = set()
        for key, record in records.items():
            verdict = self.fresh(record)
            if verdict is None:
                out.other[key] = record
            elif not verdict:
                changed.add(record["id"])
            else:
                if "item_hash" not in record:
                    unverified.add(record["id"])
                    record = {**record, "item_hash": self.hashes[record["id"]]}  # checked once, recorded
                out.done[key] = record
        out.changed = [item_id for item_id in self.items if item_id in changed]
        out.unverified = [item_id for item_id in self.items if item_id in unverified]
        return out

    def report(self, sorted_records: SortedRecords) -> None:
        """Say on the log what a resumed run does with records that are not simply reused."""
        if sorted_records.changed:
            ids = sorted_records.changed
            logger.warning("%d of %d items changed since their records were written (%s%s): their old records are "
                           "dropped and they are generated again", len(ids), len(self.items), ", ".join(ids[:5]),
                           ", …" if len(ids) > 5 else "")
        if sorted_records.unverified:
            logger.warning("%d items' records predate item hashes: reused where their text, label, category and "
                           "look-alike flag match the prompt set (their media files cannot be checked)",
                           len(sorted_records.unverified))
        if sorted_records.other:
            ids = sorted({record["id"] for record in sorted_records.other.values()})
            logger.warning("%d records of %d items not in this prompt set (%s%s) are kept apart in %s and not "
                           "counted", len(sorted_records.other), len(ids), ", ".join(ids[:5]),
                           ", …" if len(ids) > 5 else "", EARLIER)


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


def read_done(
    out_dir: Path, repair: Path | None = None, prompts: PromptSet | None = None
) -> dict[str, dict[str, Any]]:
    """Every record of the folder, from `generations.earlier.jsonl`, `generations.jsonl` and any rank files, by key
    (a later line wins, except that a record of an item as `prompts` has it is never replaced by one of other
    content: a resumed run's new record then beats an older rank file's stale one).

    `repair`: the file this process appends to; a line cut by a kill is removed from it first. Other files are
    read as they are (another rank may be writing them) and a cut line there is simply not read.
    """
    if repair is not None:
        _drop_cut_line(repair)
    done: dict[str, dict[str, Any]] = {}
    for path in [out_dir / EARLIER, out_dir / GENERATIONS, *shard_files(out_dir)]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: that item is generated again
            key = record_key(record["id"], record["modality"], record["mode"])
            if prompts is not None and key in done and prompts.fresh(done[key]) and not prompts.fresh(record):
                continue
            done[key] = record
    return done


def canonical_records(
    items: Sequence[Instruction], jobs: Iterable[tuple[str, str]], text_modes: Sequence[str],
    done: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """The records in the order one uninterrupted process writes them: job by job, items in order, each text
    record followed by its copies under `text_modes`; then any other record of these items the folder holds
    (a modality or mode an earlier run had), in their own order, so that nothing is lost."""
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


def write_canonical(
    out_dir: Path, records: list[dict[str, Any]], other: Iterable[dict[str, Any]] = ()
) -> None:
    """Write `generations.jsonl` once, atomically, with the run's records, and `generations.earlier.jsonl` with
    the records of items outside its set (first: a kill in between leaves a record twice, never nowhere), then
    remove the rank files they now hold."""
    other = list(other)
    if other:
        write_atomic(out_dir / EARLIER, "".join(json.dumps(record) + "\n" for record in other))
    write_atomic(out_dir / GENERATIONS, "".join(json.dumps(record) + "\n" for record in records))
    if not other:
        (out_dir / EARLIER).unlink(missing_ok=True)
    for path in shard_files(out_dir):
        path.unlink(missing_ok=True)


def states_match(path: Path, digest: str) -> bool:
    """Whether the states file at `path` was written for the item whose hash is `digest` (its metadata says so; a
    file written before item hashes says nothing and is trusted like its record). An item changed, generated
    again and killed before its record, then changed back, must not get the other content's states."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # missing, truncated, garbled: read_states says None too, and the item is generated again
        return False
    return metadata.get("item_hash", digest) == digest


def states_path(out_dir: Path, modality: str, mode: str, item_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in item_id)
    return out_dir / "states" / modality / mode / f"{safe}.safetensors"
