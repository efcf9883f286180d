"""Tests for batch orders (mmfuse.data.sampler)."""

from __future__ import annotations

import numpy as np
import pytest

from mmfuse.data.sampler import grouped_batches, sequential_batches, shuffled_batches

# 30 rows in 7 groups of uneven size, interleaved in table order as real tables are.
GROUPS = np.array([3, 0, 1, 3, 2, 0, 6, 5, 4, 4, 1, 3, 2, 0, 6, 5, 5, 3, 2, 1, 0, 6, 4, 4, 3,
                   2, 1, 0, 5, 3])


def order(batches: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(batches)


@pytest.mark.parametrize("batch_size", [1, 4, 7, 30, 100])
def test_grouped_batches_cover_every_row_once(batch_size):
    batches = grouped_batches(GROUPS, batch_size, np.random.default_rng(0))
    rows = order(batches)
    assert sorted(rows.tolist()) == list(range(len(GROUPS)))
    assert all(len(b) == batch_size for b in batches[:-1])
    assert 1 <= len(batches[-1]) <= batch_size


@pytest.mark.parametrize("seed", range(5))
def test_grouped_batches_keep_groups_contiguous(seed):
    rows = order(grouped_batches(GROUPS, 4, np.random.default_rng(seed)))
    sequence = GROUPS[rows]
    runs = [g for i, g in enumerate(sequence) if i == 0 or g != sequence[i - 1]]
    assert sorted(runs) == sorted(set(GROUPS.tolist())), f"a group is split: {sequence}"


def test_grouped_batches_same_seed_same_order():
    a = order(grouped_batches(GROUPS, 4, np.random.default_rng(7)))
    b = order(grouped_batches(GROUPS, 4, np.random.default_rng(7)))
    np.testing.assert_array_equal(a, b)


def test_grouped_batches_different_seeds_different_orders():
    orders = {tuple(order(grouped_batches(GROUPS, 4, np.random.default_rng(s))).tolist())
              for s in range(6)}
    assert len(orders) == 6


def test_grouped_batches_shuffle_both_groups_and_rows_within_them():
    group_orders, row_orders = set(), set()
    for seed in range(10):
        rows = order(grouped_batches(GROUPS, 4, np.random.default_rng(seed)))
        seen = GROUPS[rows]
        group_orders.add(tuple(dict.fromkeys(seen.tolist())))
        row_orders.add(tuple(rows[seen == 3].tolist()))
    assert len(group_orders) > 1, "the order of the groups never changes"
    assert len(row_orders) > 1, "the rows within a group are never shuffled"


def test_grouped_batches_with_unique_groups_is_a_permutation():
    rows = order(grouped_batches(np.arange(10)[::-1].copy(), 3, np.random.default_rng(0)))
    assert sorted(rows.tolist()) == list(range(10))


def test_grouped_batches_with_no_rows():
    assert grouped_batches(np.array([], dtype=np.int64), 4, np.random.default_rng(0)) == []


@pytest.mark.parametrize(("n", "batch_size"), [(10, 3), (10, 10), (10, 64), (1, 1)])
def test_shuffled_batches_cover_every_row_once(n, batch_size):
    batches = shuffled_batches(n, batch_size, np.random.default_rng(0))
    assert sorted(order(batches).tolist()) == list(range(n))
    assert len(batches) == -(-n // batch_size)
    assert all(len(b) == batch_size for b in batches[:-1])


def test_shuffled_batches_depend_on_the_seed_only():
    def run(seed: int) -> list[int]:
        return order(shuffled_batches(50, 8, np.random.default_rng(seed))).tolist()

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert run(1) != list(range(50))


def test_sequential_batches_are_in_table_order():
    batches = sequential_batches(10, 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert sequential_batches(0, 4) == []
    assert [b.tolist() for b in sequential_batches(3, 5)] == [[0, 1, 2]]
