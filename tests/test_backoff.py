"""The one backoff helper: exponential waits with jitter, capped, reset by a success."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captify_ws.backoff import Backoff, delay_after

pytestmark = pytest.mark.unit


@given(st.integers(1, 60), st.floats(0.01, 10), st.floats(1, 7200), st.integers(0, 2**32))
def test_delay_doubles_with_jitter_up_to_the_cap(attempts: int, first: float, cap: float,
                                                 seed: int) -> None:
    """The delay is between half and all of first × 2^(attempts-1), never above the cap."""
    delay = delay_after(attempts, first, cap, random.Random(seed))
    full = min(cap, first * 2 ** (attempts - 1))
    assert full / 2 <= delay <= full
    assert json.dumps(delay)


@given(st.lists(st.booleans(), max_size=40), st.integers(0, 2**32))
def test_a_loop_waits_longer_per_failure_and_afresh_after_a_success(outcomes: list[bool],
                                                                    seed: int) -> None:
    """Each failure in a row waits within [half, all] of 0.1 s doubling up to 2 s; a success
    starts the sequence again."""
    backoff = Backoff(0.1, 2.0, random.Random(seed))
    in_a_row = 0
    for succeeded in outcomes:
        if succeeded:
            backoff.reset()
            in_a_row = 0
            continue
        in_a_row += 1
        full = min(2.0, 0.1 * 2 ** (in_a_row - 1))
        assert full / 2 <= backoff.next_delay() <= full


def test_jitter_spreads_loops_that_failed_together() -> None:
    """Loops that fail at the same moment do not all retry at the same moment."""
    delays = {round(Backoff(0.1, 2.0).next_delay(), 6) for _ in range(50)}
    assert len(delays) > 40
