"""The collector's pace for bulk work (core.gc_tuning)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from core.gc_tuning import GEN0_THRESHOLD, tune_gc


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_the_first_generation_is_collected_less_often_and_the_others_as_before() -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (GEN0_THRESHOLD, 10, 10)


def test_a_higher_threshold_or_a_collector_turned_off_is_left_alone() -> None:
    gc.set_threshold(GEN0_THRESHOLD * 2, 5, 5)
    tune_gc()
    assert gc.get_threshold() == (GEN0_THRESHOLD * 2, 5, 5)
    gc.set_threshold(0, 10, 10)
    tune_gc()
    assert gc.get_threshold() == (0, 10, 10)
