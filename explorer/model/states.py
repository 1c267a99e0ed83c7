"""`StateBatch`: captured per-layer states of n prompts with their parallel metadata.

Made by `capture` (one row per prompt and modality), read by `geometry` and `profile`. Why a class: the four
metadata lists must stay aligned with the tensor rows through selects and concats, and a `(item_id, modality)`
pair must be unique so that formula 5 can pair each media row with its text counterpart by id.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.core.vocab import LABELS, MODALITIES, Label, Modality, check_choice

__all__ = ["StateBatch"]


@dataclass
class StateBatch:
    """Captured states of ``n`` prompts with their parallel metadata (docs/architecture.md, "Contracts").

    Attributes:
        states: ``[n, L, d]`` floating tensor of raw decoder-layer outputs at the last prompt token.
        item_ids: instruction id of each row (the same id across modalities pairs the rows, formula 5).
        labels: ``"harmful"`` or ``"harmless"`` per row.
        modalities: ``"text"``, ``"image"`` or ``"audio"`` per row.
        instructions: the instruction text per row.

    A ``(item_id, modality)`` pair may occur only once, so pairing by id is unambiguous.
    """

    states: torch.Tensor
    item_ids: list[str]
    labels: list[Label]
    modalities: list[Modality]
    instructions: list[str]

    def __post_init__(self) -> None:
        if not isinstance(self.states, torch.Tensor):
            raise TypeError(f"states must be a torch.Tensor [n, L, d], got {type(self.states).__name__}")
        if self.states.ndim != 3:
            raise ValueError(f"states must have shape [n, L, d], got {tuple(self.states.shape)}")
        if not self.states.is_floating_point():
            raise ValueError(f"states must be a floating tensor (float32), got {self.states.dtype}")
        n = self.states.shape[0]
        self.item_ids = list(self.item_ids)
        self.labels = list(self.labels)
        self.modalities = list(self.modalities)
        self.instructions = list(self.instructions)
        for name in ("item_ids", "labels", "modalities", "instructions"):
            length = len(getattr(self, name))
            if length != n:
                raise ValueError(f"{name} has {length} entries but states has n={n} rows")
        for label in self.labels:
            check_choice("label", label, LABELS)
        for modality in self.modalities:
            check_choice("modality", modality, MODALITIES)
        seen: set[tuple[str, str]] = set()
        for item_id, modality in zip(self.item_ids, self.modalities):
            if (item_id, modality) in seen:
                raise ValueError(f"item id {item_id!r} occurs twice for modality {modality!r}")
            seen.add((item_id, modality))
        if n and not bool(torch.isfinite(self.states).all()):
            raise ValueError("states contain NaN or inf")

    def __len__(self) -> int:
        return int(self.states.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.states.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.states.shape[2])

    def _take(self, rows: list[int]) -> StateBatch:
        index = torch.tensor(rows, dtype=torch.long)
        return StateBatch(
            states=self.states.index_select(0, index),
            item_ids=[self.item_ids[i] for i in rows],
            labels=[self.labels[i] for i in rows],
            modalities=[self.modalities[i] for i in rows],
            instructions=[self.instructions[i] for i in rows],
        )

    def select(self, modality: Modality | None = None, label: Label | None = None) -> StateBatch:
        """Rows of one modality and/or label (``None`` keeps all), in their original order."""
        if modality is not None:
            check_choice("modality", modality, MODALITIES)
        if label is not None:
            check_choice("label", label, LABELS)
        rows = [
            i
            for i, (m, y) in enumerate(zip(self.modalities, self.labels))
            if (modality is None or m == modality) and (label is None or y == label)
        ]
        return self._take(rows)

    def concat(self, other: StateBatch) -> StateBatch:
        """This batch followed by ``other`` (same number of layers and hidden size)."""
        if other.states.shape[1:] != self.states.shape[1:]:
            raise ValueError(
                f"cannot concat batches with [L, d] = {tuple(self.states.shape[1:])} "
                f"and {tuple(other.states.shape[1:])}"
            )
        return StateBatch(
            states=torch.cat([self.states, other.states.to(self.states.dtype)], dim=0),
            item_ids=self.item_ids + other.item_ids,
            labels=self.labels + other.labels,
            modalities=self.modalities + other.modalities,
            instructions=self.instructions + other.instructions,
        )
