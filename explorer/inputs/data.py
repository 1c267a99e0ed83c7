"""Instructions: the built-in calibration set and user prompt files.

Every later stage (render, capture, geometry, regap) works on `Instruction` records, so this module is
the one place where files are parsed and checked. A bad row fails here, with the file, line and field in
the message, instead of surfacing later as a confusing tensor shape or a missing image.

>>> items = load_builtin("calibration")
>>> sorted({i.label for i in items})
['harmful', 'harmless']
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

from explorer.core.vocab import LABELS, Label, Modality

__all__ = [
    "BUILTIN_PATH",
    "VALIDATION_PATH",
    "Instruction",
    "Label",
    "Modality",
    "PromptFileError",
    "Split",
    "calibration_hash",
    "load_builtin",
    "load_prompts",
]

Split = Literal["calibration", "evaluation"]

BUILTIN_PATH = Path(__file__).resolve().parents[2] / "assets" / "calibration" / "instructions.jsonl"
#: Held-out requests written apart from the built-in file: the demo model's calibration (it never trained on them).
VALIDATION_PATH = BUILTIN_PATH.parent / "validation.jsonl"

_SPLITS: tuple[str, ...] = get_args(Split)
_SUFFIXES = (".jsonl", ".csv")
_DEFAULT_CATEGORY = "custom"
_TRUE = {"true", "1", "yes", "y"}
_FALSE = {"false", "0", "no", "n", ""}


@dataclass(frozen=True)
class Instruction:
    """One request with its ground-truth label.

    `image` / `audio` are absolute paths to user-supplied media; when set, `render` shows that media
    instead of the rendered instruction, so a researcher can test their own screenshots or recordings (with
    `carrier` as the text beside them when a benchmark gives one).
    """

    id: str
    instruction: str
    label: Label
    category: str
    split: Split
    lookalike: bool = False
    image: str | None = None
    audio: str | None = None
    #: the text a benchmark shows with its own media (FigStep's instruction, MM-SafetyBench's rephrased question,
    #: JailbreakV's jailbreak query); None = the explorer's neutral carrier sentence
    carrier: str | None = None

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"Instruction {self.id!r}: label must be one of {LABELS}, got {self.label!r}")
        if self.split not in _SPLITS:
            raise ValueError(f"Instruction {self.id!r}: split must be one of {_SPLITS}, got {self.split!r}")
        if not self.instruction.strip():
            raise ValueError(f"Instruction {self.id!r}: instruction text is empty")


class PromptFileError(ValueError):
    """A prompt file could not be parsed; the message names the file, the line and the field."""


def load_builtin(split: Literal["calibration", "evaluation", "all"] = "all") -> list[Instruction]:
    """Return the shipped instructions (harmful and harmless, with look-alikes).

    The split is fixed in the file, so a profile calibrated on "calibration" can be evaluated on
    "evaluation" without any item leaking between the two.
    """
    allowed = ("calibration", "evaluation", "all")
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")
    items = _builtin_items()
    return [item for item in items if split == "all" or item.split == split]


@lru_cache(maxsize=1)
def _builtin_items() -> tuple[Instruction, ...]:
    # The built-in file must state every field; a missing split there is a bug, not a user default.
    items = tuple(_parse_file(BUILTIN_PATH, require_split=True))
    if not items:
        raise PromptFileError(f"{BUILTIN_PATH}: the built-in calibration file is empty")
    return items


def load_prompts(path: str | Path) -> list[Instruction]:
    """Load a user prompt file (JSONL or CSV) into `Instruction`s.

    Columns: `instruction`, `label` (required); `category`, `id`, `split`, `lookalike`, `image`, `audio`
    (optional). Media paths are resolved relative to the file's folder and must exist, so a typo is
    reported now rather than in the middle of a long capture run. A missing `split` means "evaluation";
    a missing `id` becomes "<file stem>-<line>".
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: file not found")
    items = _parse_file(path, require_split=False)
    if not items:
        raise PromptFileError(f"{path.name}: no prompts found; add rows with 'instruction' and 'label'")
    return items


def calibration_hash(items: Iterable[Instruction]) -> str:
    """sha256 over (id, instruction, label) of the items, independent of their order.

    Stored in every profile so that a profile can be matched to the exact calibration items it was
    computed from; order does not change the class means, so it does not change the hash either.
    """
    triples = sorted((item.id, item.instruction, item.label) for item in items)
    payload = json.dumps(triples, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------
# Parsing


def _parse_file(path: Path, *, require_split: bool) -> list[Instruction]:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise PromptFileError(
            f"{path.name}: unknown file type {path.suffix!r}; use one of {', '.join(_SUFFIXES)}"
        )
    rows = _jsonl_rows(path) if suffix == ".jsonl" else _csv_rows(path)
    items: list[Instruction] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        item = _row_to_instruction(row, path=path, line=line, require_split=require_split)
        if item.id in first_line:
            raise PromptFileError(
                f"{path.name} line {line}: field 'id' {item.id!r} duplicates line {first_line[item.id]}; "
                "ids must be unique"
            )
        first_line[item.id] = line
        items.append(item)
    return items


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise PromptFileError(f"{path.name} line {line}: invalid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise PromptFileError(
                    f"{path.name} line {line}: expected a JSON object like "
                    f'{{"instruction": "...", "label": "harmful"}}, got {type(row).__name__}'
                )
            yield line, row


def _csv_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        for required in ("instruction", "label"):
            if required not in header:
                raise PromptFileError(
                    f"{path.name} line 1: field {required!r} missing from the CSV header {header}"
                )
        reader.fieldnames = header
        for row in reader:
            # line_num is the physical line where this row ends (quoted fields may span lines).
            cleaned = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            if not cleaned:
                continue
            yield reader.line_num, cleaned


def _row_to_instruction(
    row: Mapping[str, Any], *, path: Path, line: int, require_split: bool
) -> Instruction:
    where = f"{path.name} line {line}"

    def text_field(name: str, *, required: bool = False) -> str | None:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise PromptFileError(f"{where}: field {name!r} is missing or empty")
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise PromptFileError(f"{where}: field {name!r} must be a string, got {value!r}")
        return str(value).strip()

    instruction = text_field("instruction", required=True)
    label = (text_field("label", required=True) or "").lower()
    if label not in LABELS:
        raise PromptFileError(
            f"{where}: field 'label' must be 'harmful' or 'harmless', got {row.get('label')!r}"
        )
    split = text_field("split", required=require_split)
    split = "evaluation" if split is None else split.lower()
    if split not in _SPLITS:
        raise PromptFileError(
            f"{where}: field 'split' must be 'calibration' or 'evaluation', got {row.get('split')!r}"
        )
    return Instruction(
        id=text_field("id") or f"{path.stem}-{line}",
        instruction=instruction or "",
        label=label,  # type: ignore[arg-type]  # checked against LABELS above
        category=text_field("category") or _DEFAULT_CATEGORY,
        split=split,  # type: ignore[arg-type]  # checked against _SPLITS above
        lookalike=_parse_bool(row.get("lookalike"), where=where),
        image=_media_path(text_field("image"), field="image", base=path.parent, where=where),
        audio=_media_path(text_field("audio"), field="audio", base=path.parent, where=where),
    )


def _parse_bool(value: Any, *, where: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise PromptFileError(f"{where}: field 'lookalike' must be true or false, got {value!r}")


def _media_path(value: str | None, *, field: str, base: Path, where: str) -> str | None:
    if value is None:
        return None
    resolved = (base / Path(value).expanduser()).resolve()
    if not resolved.is_file():
        raise PromptFileError(
            f"{where}: field {field!r} points to {value!r}, but {resolved} does not exist; "
            "paths are relative to the prompt file's folder"
        )
    return str(resolved)
