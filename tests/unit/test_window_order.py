"""The write windows of a scoring call: length-sorted, bounded in cost, in an order that
keeps every stretch near the mean item rate, continued by a handed-back rest
(engine.window_order)."""

from __future__ import annotations

import random
from itertools import pairwise

from core.inputs.items import InputItem
from engine.reuse import Entry
from engine.window_order import (
    _PACE,
    ITEM_COST,
    RAMP_GROWTH,
    RAMP_START,
    WindowPart,
    balanced_order,
    scoring_windows,
)


def entries(lengths: list[int], job_id: str = "job") -> list[Entry]:
    return [
        (job_id, index, InputItem(item_id=str(index), text="x" * length))
        for index, length in enumerate(lengths)
    ]


def length(entry: Entry) -> int:
    return len(entry[2].text or "")


def lengths_of(windows: list[list[Entry]]) -> list[list[int]]:
    return [[length(entry) for entry in window] for window in windows]


# Windows of one 512-text chunk of sentiment-mini (bench texts), as the earlier order ran
# them: (texts, seconds). Shortest and longest alternately, the first two turns of ~1.4 s
# scored 259 texts and the rest of the chunk 253 in twice the time.
MEASURED = [(128, 0.49), (3, 0.14), (128, 0.70), (21, 0.75), (110, 0.86), (48, 0.76), (74, 0.74)]


def deviations(order: list[int]) -> list[float]:
    """Per prefix of ``order``: texts scored minus the chunk's mean rate times the time."""
    rate = sum(n for n, _ in MEASURED) / sum(t for _, t in MEASURED)
    items = seconds = 0.0
    found = []
    for window in order:
        items += MEASURED[window][0]
        seconds += MEASURED[window][1]
        found.append(items - rate * seconds)
    return found


def test_every_stretch_scores_near_the_mean_rate() -> None:
    order = balanced_order([n for n, _ in MEASURED], [t for _, t in MEASURED])
    assert sorted(order) == list(range(len(MEASURED)))
    # Never more than half a full window ahead of or behind the mean rate ...
    assert max(abs(d) for d in deviations(order)) < 64
    # ... where alternating the shortest and the longest ran 106 texts ahead.
    assert max(abs(d) for d in deviations([0, 1, 2, 3, 4, 5, 6])) > 100


def test_windows_of_one_rate_keep_their_order() -> None:
    assert balanced_order([4, 4, 4, 2], [4.0, 4.0, 4.0, 2.0]) == [0, 1, 2, 3]
    assert balanced_order([], []) == []


def test_windows_mix_both_ends_of_the_lengths_within_their_cost() -> None:
    # Lengths 1,600..100 in index order; windows of at most 4 texts and of what 4 texts of
    # the mean length (850) cost, with the per-item cost.
    everything = entries([100 * n for n in range(16, 0, -1)])
    windows = lengths_of(scoring_windows(everything, everything, 4, length))
    assert windows == [
        [100, 200, 1500, 1600],
        [300, 400, 1300, 1400],
        [500, 600, 1100, 1200],
        [700, 800, 900, 1000],
    ]
    for window in windows:
        assert sum(size + ITEM_COST for size in window) <= 4 * (850 + ITEM_COST)


def test_windows_of_skewed_lengths_score_items_at_about_one_rate() -> None:
    # Review-like lengths (log-normal, a long tail): length-sorted windows ranged over 5x
    # in texts per cost; windows made of runs from both ends stay near one rate.
    draw = random.Random(5)
    lengths = [int(min(2000, draw.lognormvariate(5.3, 0.8))) for _ in range(512)]
    everything = entries(lengths)
    windows = lengths_of(scoring_windows(everything, everything, 128, length))
    assert sorted(size for window in windows for size in window) == sorted(lengths)
    rates = [len(window) / sum(size + ITEM_COST for size in window) for window in windows]
    assert max(rates) / min(rates) < 1.5, rates
    by_length = sorted(lengths)
    sorted_rates = [
        len(part) / sum(size + ITEM_COST for size in part)
        for part in (by_length[:128], by_length[-32:])
    ]
    assert max(sorted_rates) / min(sorted_rates) > 4, "the spread the runs take out"


def test_a_rest_continues_where_its_chunk_stopped() -> None:
    everything = entries([100 * n for n in [7, 3, 9, 1, 12, 5, 2, 8, 11, 4, 6, 10]])
    windows = scoring_windows(everything, everything, 3, length)
    assert len(windows) > 4
    for stopped in range(1, len(windows)):
        # The rest is scored from the same range (its scored entries reloaded, then
        # dropped): it goes on with the next window, not with its shortest texts.
        rest = [entry for window in windows[stopped:] for entry in window]
        assert scoring_windows(everything, rest, 3, length) == windows[stopped:]


def test_only_pending_entries_are_windowed_in_the_windows_of_the_whole_range() -> None:
    """Any subset of the range (scored items dropped, several jobs) lies in the windows the
    whole range has, in the same order, and a window left empty is dropped."""
    rng = random.Random(11)
    for _ in range(200):
        everything = [
            entry
            for job in ("a", "b", "c")[: rng.randint(1, 3)]
            for entry in entries(
                [rng.choice([0, 3, 40, rng.randint(0, 900)]) for _ in range(40)], job
            )
        ]
        size = rng.choice([1, 4, 16, 128])
        whole = scoring_windows(everything, everything, size, length)
        pending = [entry for entry in everything if rng.random() < rng.choice([0.1, 0.5, 1.0])]
        kept = {(entry[0], entry[1]) for entry in pending}
        expected = [[entry for entry in window if (entry[0], entry[1]) in kept] for window in whole]
        assert scoring_windows(everything, pending, size, length) == [w for w in expected if w]


def test_images_and_equal_lengths_keep_index_order_in_full_windows() -> None:
    images = [("job", index, InputItem(item_id=str(index), data=b"\x89PNG")) for index in range(6)]
    windows = scoring_windows(images, images, 3, lambda entry: 0)
    assert [[entry[1] for entry in window] for window in windows] == [[0, 1, 2], [3, 4, 5]]
    many_jobs = entries([2, 2], "a") + entries([2, 1], "b")
    (window,) = scoring_windows(many_jobs, many_jobs, 8, length)
    assert [(job, index) for job, index, _ in window] == [("b", 1), ("a", 0), ("a", 1), ("b", 0)]


class SlowRunner:
    """Stands for a warm runner: the pacer keeps each runner's pace (a weak reference)."""


def test_a_slow_models_windows_are_scored_in_parts_of_about_window_s() -> None:
    """Once a window's time says the pace, a window about to start that would take over
    1.5 ``window_s`` is cut into consecutive parts of about equal cost; every entry stays
    exactly once and in no other window. A later call for the same runner starts from the
    pace (a handed-back rest's first window is cut too)."""
    import time

    from engine.window_order import WindowPacer

    rng = random.Random(5)
    everything = entries([rng.randint(5, 400) for _ in range(64)])
    runner = SlowRunner()
    windows = scoring_windows(everything, everything, 16, length)
    before = [list(window) for window in windows]
    pacer = WindowPacer(runner, windows, 0.05, length)  # type: ignore[arg-type]
    pacer.plan_through(2)
    pacer.cut(0)
    assert windows == before, "no pace known yet: windows by count"
    time.sleep(0.2)  # the first window took 0.2 s: four times window_s
    pacer.scored(windows[0])
    pacer.plan_through(3)  # slow: nothing to merge
    pacer.cut(1)
    assert windows[0] == before[0]
    # The second window's parts: consecutive, together exactly its entries.
    first = before[1]
    count = next(
        k for k in range(1, len(windows)) if sum(map(len, windows[1 : 1 + k])) >= len(first)
    )
    parts = windows[1 : 1 + count]
    assert count >= 3 and sorted(e[1] for p in parts for e in p) == sorted(e[1] for e in first)
    assert windows[1 + count :] == before[2:], "only the window about to start is sized"
    # Stretches of the window's length order (its runs), of about equal cost.
    assert [e for p in parts for e in p] == first
    costs = [sum(length(e) + ITEM_COST for e in part) for part in parts]
    assert max(costs) <= 2 * min(costs) + max(length(e) + ITEM_COST for e in first)
    for position in range(2, len(before) * 16):
        if position < len(windows):
            pacer.cut(position)  # a part is not cut again
    assert len(windows) >= len(before) + 2 * (len(before) - 1)
    assert sorted(e[1] for w in windows for e in w) == sorted(e[1] for e in everything)
    rest = scoring_windows(everything, everything, 16, length)
    WindowPacer(runner, rest, 0.05, length).cut(0)  # type: ignore[arg-type]
    assert len(rest) > len(before), "a later call starts from the pace"
    unsplit = scoring_windows(everything, everything, 16, length)
    WindowPacer(runner, unsplit, 0.05, length, split=False).cut(0)  # type: ignore[arg-type]
    assert unsplit == before, "no one asks between parts: no parts"
    untouched = scoring_windows(everything, everything, 16, length)
    WindowPacer(runner, untouched, 0.0, length).cut(0)  # type: ignore[arg-type]
    assert untouched == before, "window_s 0: windows by count only"


class FastRunner:
    """Stands for another warm runner, with a pace of its own."""


def test_a_fast_models_windows_are_merged_up_to_window_s() -> None:
    """Once the pace is known, the window about to start takes the windows after it while
    the estimate stays within ``window_s``: the same entries in the same order, fewer
    windows (fewer transactions and checks); never past ``window_s``, never a part."""
    from engine.window_order import WindowPacer

    rng = random.Random(7)
    everything = entries([rng.randint(5, 400) for _ in range(1024)])
    runner = FastRunner()
    windows = scoring_windows(everything, everything, 16, length)
    before = [list(window) for window in windows]
    pacer = WindowPacer(runner, windows, 0.5, length)  # type: ignore[arg-type]
    per_window = pacer.cost(before[0])
    # A pace at which four of the first windows fit in window_s, five do not.
    _PACE[runner] = 0.5 / (per_window * 4.5)
    # The first windows ramp up to window_s (the next test): from the first at window_s on,
    # windows are merged up to window_s.
    ramp = next(p for p in range(100) if RAMP_START * RAMP_GROWTH**p >= 1)
    pacer.plan_through(ramp)
    assert len(windows) < len(before)
    assert [e for w in windows for e in w] == [e for w in before for e in w], "same order"
    start = sum(map(len, windows[:ramp]))
    ends = [sum(map(len, before[:k])) for k in range(len(before) + 1)]
    merged = ends.index(start + len(windows[ramp])) - ends.index(start)
    assert merged >= 3, "several windows joined"
    assert _PACE[runner] * pacer.cost(windows[ramp]) <= 0.5
    pacer.plan_through(len(before))
    assert all(not isinstance(w, WindowPart) for w in windows)
    assert [e for w in windows for e in w] == [e for w in before for e in w]
    assert all(_PACE[runner] * pacer.cost(w) <= 0.5 or w in before for w in windows)


def test_merged_windows_ramp_up_at_a_calls_start_and_shrink_at_its_end() -> None:
    """The pipeline fills for a call's first window and drains for its last: the first
    window is merged to window_s / 8, each next one to a quarter more than the one before
    (window n + 1 is tokenised during window n's forward pass, so a faster growth leaves
    the model waiting for tokens), up to window_s; none holds more than half the entries
    left from it to the end, unless it fits in the first window's window_s / 8, which the
    last windows keep (not a string of ever smaller ones, each a round trip)."""
    from engine.window_order import WindowPacer

    everything = entries([20] * 16384)
    runner = FastRunner()
    windows = scoring_windows(everything, everything, 8, length)
    pacer = WindowPacer(runner, windows, 0.8, length, least_windows=2)  # type: ignore[arg-type]
    # 0.8 s holds 1,600 entries: the first window holds 200.
    _PACE[runner] = 0.8 / (pacer.cost(everything[:1]) * 1600)
    pacer.plan_through(len(windows))
    sizes = [len(window) for window in windows]
    assert sizes[0] == 200, sizes
    full = sizes.index(1600)
    for smaller, larger in pairwise(sizes[: full + 1]):
        # Whole windows of 8 are merged, up to a quarter more than the one before.
        assert smaller < larger <= smaller * RAMP_GROWTH + 8, sizes
    assert full == 10, sizes  # 200 * 1.25 ** 10 > 1,600
    left = len(everything)
    for size in sizes:
        assert size <= max(200, -(-left // 2)), sizes
        left -= size
    # The call ends halving down to the first window's size, and its last two share what
    # is left under twice that: no string of ever smaller windows (16, 8...), each a round
    # trip through the stages.
    assert sizes[-5:] == [872, 440, 216, 112, 112], sizes
    assert min(sizes) >= 100, sizes
    assert sorted(e[1] for w in windows for e in w) == list(range(16384))


def test_merged_windows_leave_a_call_at_least_least_windows() -> None:
    """However fast the pace, a call of several windows keeps ``least_windows`` of them,
    so that one window's forward pass overlaps another's top-k, rows and write."""
    from engine.window_order import WindowPacer

    everything = entries([20] * 64)
    runner = FastRunner()
    _PACE[runner] = 1e-9  # everything would fit in one window
    for least, sizes in ((1, [64]), (2, [32, 32]), (3, [16, 16, 32])):
        windows = scoring_windows(everything, everything, 8, length)
        pacer = WindowPacer(runner, windows, 0.5, length, least_windows=least)  # type: ignore[arg-type]
        pacer.plan_through(len(windows))
        assert [len(window) for window in windows] == sizes, (least, windows)
        assert sorted(e[1] for w in windows for e in w) == list(range(64))
