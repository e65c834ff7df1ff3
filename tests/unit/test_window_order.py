"""The write windows of a scoring call: length-sorted, bounded in cost, shortest and longest
alternating, continued by a handed-back rest (engine.window_order)."""

from __future__ import annotations

from core.inputs.items import InputItem
from engine.reuse import Entry
from engine.window_order import scoring_windows, window_turn


def entries(lengths: list[int], job_id: str = "job") -> list[Entry]:
    return [
        (job_id, index, InputItem(item_id=str(index), text="x" * length))
        for index, length in enumerate(lengths)
    ]


def length(entry: Entry) -> int:
    return len(entry[2].text or "")


def lengths_of(windows: list[list[Entry]]) -> list[list[int]]:
    return [[length(entry) for entry in window] for window in windows]


def test_windows_alternate_from_both_ends() -> None:
    for windows, expected in ((1, [0]), (2, [0, 1]), (3, [0, 2, 1]), (4, [0, 3, 1, 2])):
        turns = [window_turn(window, windows) for window in range(windows)]
        assert sorted(range(windows), key=lambda window: turns[window]) == expected


def test_long_texts_go_in_smaller_windows_and_both_ends_alternate() -> None:
    # Lengths 16..1 in index order; windows of at most 4, and at most 4 x the mean length
    # (8.5) padded: 1-4 and 5-8 fill four places, longer texts fit fewer.
    everything = entries(list(range(16, 0, -1)))
    windows = scoring_windows(everything, everything, 4, length)
    assert lengths_of(windows) == [
        [1, 2, 3, 4],
        [16],
        [5, 6, 7, 8],
        [14, 15],
        [9, 10, 11],
        [12, 13],
    ]
    for window in lengths_of(windows):
        assert len(window) * max(window) <= 4 * 8.5


def test_a_rest_continues_where_its_chunk_stopped() -> None:
    everything = entries([7, 3, 9, 1, 12, 5, 2, 8, 11, 4, 6, 10])
    windows = scoring_windows(everything, everything, 3, length)
    assert lengths_of(windows)[:2] == [[1, 2, 3], [12]]
    for stopped in range(1, len(windows)):
        # The rest is scored from the same range (its scored entries reloaded, then
        # dropped): it goes on with the next window, not with its shortest texts.
        rest = [entry for window in windows[stopped:] for entry in window]
        assert scoring_windows(everything, rest, 3, length) == windows[stopped:]


def test_images_and_equal_lengths_keep_index_order_in_full_windows() -> None:
    images = [("job", index, InputItem(item_id=str(index), data=b"\x89PNG")) for index in range(6)]
    windows = scoring_windows(images, images, 3, lambda entry: 0)
    assert [[entry[1] for entry in window] for window in windows] == [[0, 1, 2], [3, 4, 5]]
    many_jobs = entries([2, 2], "a") + entries([2, 1], "b")
    (window,) = scoring_windows(many_jobs, many_jobs, 8, length)
    assert [(job, index) for job, index, _ in window] == [("b", 1), ("a", 0), ("a", 1), ("b", 0)]
