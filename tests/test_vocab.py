"""Tests for explorer.core.vocab: the one vocabulary and the one parser of each user syntax."""

from __future__ import annotations

import pytest

from explorer.core import vocab
from explorer.core.vocab import MODES, check_choice, normalise_layer, parse_layer_window


def test_vocabulary_is_defined_once_and_used_by_every_stage() -> None:
    from explorer.app import ui
    from explorer.correction import regap

    assert vocab.MODALITIES == ("text", "image", "audio") and vocab.LABELS == ("harmful", "harmless")
    assert MODES == ("off", "fixed", "fixed_axis", "adaptive", "adaptive_raw", "shiftdc", "cmrm", "cmrm_sample")
    assert ui.MODES is MODES and regap.Mode is vocab.Mode


def test_check_choice_names_the_value_and_the_allowed_ones() -> None:
    check_choice("mode", "fixed", MODES)
    with pytest.raises(ValueError, match="mode must be one of 'off', 'fixed', 'fixed_axis', 'adaptive', 'adaptive_raw', 'shiftdc', "
                       "'cmrm', 'cmrm_sample'; got 'x'"):
        check_choice("mode", "x", MODES)


def test_parse_layer_window_accepts_one_layer_or_a_window() -> None:
    assert parse_layer_window("", 4) == () and parse_layer_window(None, 4) == ()
    assert parse_layer_window("default", 4) == () and parse_layer_window(" 2 ", 4) == (2,)
    assert parse_layer_window("1-3", 4) == (1, 2, 3)


@pytest.mark.parametrize("bad", ["4", "x", "3-1", "1,2", "0,2", "-1", "1-4", "1-", "2.5"])
def test_parse_layer_window_rejects_rather_than_reinterprets(bad: str) -> None:
    with pytest.raises(ValueError, match="corrected layers are one layer") as caught:
        parse_layer_window(bad, 4)
    assert repr(bad) in str(caught.value) and "0..3" in str(caught.value)


def test_normalise_layer() -> None:
    assert normalise_layer(0, 6) == 0 and normalise_layer(-1, 6) == 5 and normalise_layer(-6, 6) == 0
    for bad in (6, -7):
        with pytest.raises(ValueError, match=f"layer {bad} out of range for a model with 6 layers"):
            normalise_layer(bad, 6)
    with pytest.raises(ValueError, match="integer"):
        normalise_layer(1.0, 6)  # type: ignore[arg-type]
