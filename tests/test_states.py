"""Tests for explorer.model.states: a StateBatch keeps its rows and metadata aligned and checks them."""

from __future__ import annotations

import pytest
import torch

from explorer.model.states import StateBatch

L, D = 3, 16


def test_state_batch_validates_lengths_labels_and_duplicates() -> None:
    states = torch.zeros(2, L, D)
    with pytest.raises(ValueError, match="labels has 1 entries"):
        StateBatch(states, ["a", "b"], ["harmful"], ["text", "text"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="label must be one of 'harmful', 'harmless'; got 'benign'"):
        StateBatch(states, ["a", "b"], ["harmful", "benign"], ["text", "text"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="'video'"):
        StateBatch(states, ["a", "b"], ["harmful", "harmless"], ["text", "video"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="occurs twice"):
        StateBatch(states, ["a", "a"], ["harmful", "harmless"], ["text", "text"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"\[n, L, d\]"):
        StateBatch(torch.zeros(2, D), ["a", "b"], ["harmful", "harmless"], ["text", "text"], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="NaN"):
        StateBatch(torch.full((1, L, D), float("nan")), ["a"], ["harmful"], ["text"], ["x"])  # type: ignore[list-item]


def test_select_and_concat_keep_rows_aligned() -> None:
    states = torch.arange(4 * L * D, dtype=torch.float32).reshape(4, L, D)
    batch = StateBatch(states, ["a", "b", "a", "b"], ["harmful", "harmless"] * 2, ["text", "text", "image", "image"],
                       ["ia", "ib", "ia", "ib"])  # fmt: skip
    image_harmless = batch.select(modality="image", label="harmless")
    assert image_harmless.item_ids == ["b"] and torch.equal(image_harmless.states, states[3:4])
    text = batch.select(modality="text")
    both = text.concat(batch.select(modality="image"))
    assert both.item_ids == batch.item_ids and torch.equal(both.states, states)
    assert len(batch.select(modality="audio")) == 0
    with pytest.raises(ValueError, match="'text', 'image', 'audio'"):
        batch.select(modality="video")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="occurs twice"):
        text.concat(text)
