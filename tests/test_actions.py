"""hlrp.data.actions.pair_action: the one definition of a frame pair's action."""

from __future__ import annotations

import numpy as np
import pytest

from hlrp.data.actions import pair_action

A = np.array([[1, 2], [np.nan, 1], [3, 4], [5, 6], [np.inf, 0]], dtype=np.float32)


def test_sums_rows_t_to_t_plus_k_minus_1():
    out = pair_action(A, 2, 2)
    assert out.dtype == np.float32 and out.shape == (2,)
    np.testing.assert_array_equal(out, [8, 10])
    np.testing.assert_array_equal(pair_action(A, 0, 1), [1, 2])
    np.testing.assert_array_equal(pair_action(A, 3, 1), [5, 6])


@pytest.mark.parametrize(
    "t, k",
    [
        (0, 2),  # row 1 has a NaN: unknown, not a zero action
        (1, 1),
        (3, 2),  # row 4 has an infinity
        (4, 2),  # past the end
        (5, 1),
        (-1, 1),
        (0, 0),
    ],
)
def test_unknown(t, k):
    assert pair_action(A, t, k) is None


def test_no_actions():
    assert pair_action(None, 0, 1) is None
    assert pair_action(np.zeros(4), 0, 1) is None  # not (T, A)


def test_sum_in_float64():
    big = np.full((3, 1), 1e8, dtype=np.float32)
    big[1] = 1.0
    assert pair_action(big, 0, 3)[0] == np.float32(2e8 + 1)
