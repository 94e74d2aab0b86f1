import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq.data.shuffling import PythonRandom, apply_swaps


def python_shuffles(seed, sizes):
    rng = random.Random(seed)
    result = []
    for n in sizes:
        x = list(range(n))
        rng.shuffle(x)
        result.append(x)
    return result


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(-10**12, 10**12), sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=4))
def test_permutations_are_pythons_shuffles_drawn_in_turn(seed, sizes):
    rng = PythonRandom(seed)
    assert [rng.permutation(n).tolist() for n in sizes] == python_shuffles(seed, sizes)


@pytest.mark.parametrize("n", [2**16, 2**16 + 1, 2**17 - 1, 300_007])  # block edges; many words settled one by one
def test_large_permutations_and_the_stream_after_them_match_python(n):
    rng = PythonRandom(42)
    first, second = rng.permutation(n), rng.permutation(1000)
    expected = python_shuffles(42, [n, 1000])
    assert first.dtype == np.int32
    assert first.tolist() == expected[0] and second.tolist() == expected[1]


def test_draws_are_the_randbelow_values_shuffle_takes():
    rng, reference = PythonRandom(7), random.Random(7)
    j = rng.draws(5000)
    assert j[0] == 0 and all(0 <= j[i] <= i for i in range(1, 5000))
    assert j[1:][::-1].tolist() == [reference._randbelow(i + 1) for i in reversed(range(1, 5000))]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=0, max_size=200))
def test_swaps_resolved_by_chains_equal_swapping_in_order(raw):
    j = np.array([0] + [r % (i + 1) for i, r in enumerate(raw, start=1)], dtype=np.int64)[: len(raw) + 1]
    x = list(range(len(j)))
    for i in reversed(range(1, len(j))):
        x[i], x[j[i]] = x[j[i]], x[i]
    assert apply_swaps(j).tolist() == x
