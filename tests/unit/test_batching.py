from hypothesis import given
from hypothesis import strategies as st

from engine.batching import plan_batches


def test_batches_are_sorted_longest_first_and_respect_the_budget() -> None:
    lengths = [5, 300, 12, 7, 300, 40, 2]
    batches = plan_batches(lengths, max_batch_size=3, max_batch_tokens=610)
    assert batches[0] == [1, 4]  # the two long texts together: 2 x 300 <= 610
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) * max(lengths[i] for i in batch) <= 610


def test_an_input_longer_than_the_budget_goes_alone() -> None:
    assert plan_batches([1000, 3], max_batch_size=8, max_batch_tokens=100) == [[0], [1]]


@given(
    st.lists(st.integers(min_value=0, max_value=600), max_size=200),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=16, max_value=20000),
)
def test_every_input_is_planned_exactly_once(lengths: list[int], size: int, tokens: int) -> None:
    batches = plan_batches(lengths, size, tokens)
    planned = sorted(i for batch in batches for i in batch)
    assert planned == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= size
        longest = max(max(lengths[i], 1) for i in batch)
        assert len(batch) == 1 or len(batch) * longest <= tokens
