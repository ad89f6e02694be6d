"""LightGBM's trees scored by a small compiled loop: the same raw scores, bit for bit, several times faster.

`Booster.predict` spends ~0.03 ms a call before it reads a row, then ~10-25 ns per tree and row walking
each tree node by node, mostly in mispredicted branches. `raw_score(booster, matrix)` reads the booster's
own text model into flat arrays once (cached per booster) and scores blocks of 64 rows with QuickScorer's
idea (Lucchese et al., SIGIR 2015), which has no data-dependent branch:

- number each tree's leaves left to right, and give every split a bit mask of the leaves *not* under its
  left child;
- a row starts with every bit set; at each split whose test sends the row right, AND in the split's mask;
- the row's leaf is the lowest bit left (the leftmost leaf none of its tests ruled out).

The tests of one split over 64 rows are one vectorised loop. Measured on the demo champions (2 cores):
~2 ns per tree and row, ~0.02 ms per call (bench/README.md).

The test is LightGBM's `NumericalDecision` (`tree.h`): a missing value (NaN) reads 0.0 unless the split
has a side for missing values, |x| <= 1e-35 reads 0.0, and a row goes left when `x <= threshold`. Each
split's rule is folded into the column it reads, so the test is always `column > threshold`: NaN (and,
for zero-as-missing splits, zero) is replaced by -inf or +inf on the side the split sends it. The trees
are summed in the booster's order, so the floating-point sums round alike (the tests compare with
`np.array_equal`). A model this loop does not score (categorical splits, linear trees, multiclass, more
than 64 leaves in a tree) keeps `Booster.predict`.
"""

from __future__ import annotations

import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import lightgbm as lgb
import numba
import numpy as np
import pandas as pd

# LightGBM's zero: |x| <= 1e-35 (a float literal in its C++) reads as 0.0.
ZERO = float(np.float32(1e-35))
# How a split's column is made from its feature (LightGBM's missing type and default side).
PLAIN, NAN_LEFT, NAN_RIGHT, ZERO_LEFT, ZERO_RIGHT, IS_NAN, IS_NAN_OR_ZERO = range(7)
MAX_LEAVES = 64  # one bit per leaf in a uint64
BLOCK = 64  # rows scored together
# Rows per thread below which one thread is faster than handing rows to a second (a hand-off costs
# ~0.1 ms; 2,048 rows of the demo churn model take ~4 ms).
ROWS_PER_THREAD = 2048
# Rows explained together by `contributions`: their side patterns take 8 bytes a tree and row. Below
# GROUPED_MIN_ROWS a tree-by-tree call costs more than it saves (~0.07 ms a tree; the break-even on the
# demo churn champion was ~120 rows).
CONTRIBUTION_ROWS = 50_000
GROUPED_MIN_ROWS = 200
CORES = os.cpu_count() or 1  # read once: the call costs ~10 µs, as much as scoring a member

_forests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def raw_score(
    booster: lgb.Booster, matrix: np.ndarray, num_iteration: int | None = None, threads: int = 0
) -> np.ndarray:
    """`booster.predict(matrix, raw_score=True, num_iteration=...)`, scored by `Forest` when it can be.

    `threads`: at most this many threads (0: the machine's cores), one per ROWS_PER_THREAD rows."""
    forest = _forest(booster, num_iteration)
    if forest is None:
        return booster.predict(matrix, raw_score=True, num_iteration=num_iteration)
    return forest.raw_score(matrix, threads)


def contributions(
    booster: lgb.Booster, matrix: np.ndarray, num_iteration: int | None = None, threads: int = 0
) -> np.ndarray:
    """`booster.predict(matrix, pred_contrib=True, num_iteration=...)`: the same exact TreeSHAP values
    (equal to ~1e-13: LightGBM's own sums, grouped differently), each tree's computed once per distinct
    way the rows pass its splits.

    LightGBM's TreeSHAP (path-dependent, Lundberg et al. 2020) reads a row only through the side each
    split of the tree sends it, every split, not only those on the row's path. Rows that every split of a
    tree sends the same way get the same contributions from that tree, so it is enough to explain one
    row of each such group and copy its values to the others. On the demo churn champion (532 trees of 15
    leaves) 41,708 members make ~375 groups a tree: 23.8 s of `pred_contrib` become ~1 s (bench/README.md).
    Below GROUPED_MIN_ROWS rows (a service request) one `pred_contrib` call is faster."""
    forest = _forest(booster, num_iteration) if len(matrix) >= GROUPED_MIN_ROWS else None
    if forest is None:
        return booster.predict(matrix, pred_contrib=True, num_iteration=num_iteration, num_threads=threads)
    return forest.contributions(booster, matrix, threads)


def _forest(booster: lgb.Booster, num_iteration: int | None) -> Forest | None:
    """The booster's `Forest` up to `num_iteration`, read once per booster and kept while it lives."""
    with _lock:
        forests = _forests.setdefault(booster, {})
        if num_iteration not in forests:
            forests[num_iteration] = Forest.of(booster, num_iteration)
        return forests[num_iteration]


@dataclass(frozen=True)
class Forest:
    """A binary model's trees as flat arrays: tree t's splits are `split_start[t]` to `split_start[t+1]`,
    its leaves, left to right, `leaf_start[t]` to `leaf_start[t+1]`."""

    column_feature: np.ndarray  # per column the splits read: the feature it is made from ...
    column_kind: np.ndarray  # ... and how (PLAIN, NAN_LEFT, ...)
    split_column: np.ndarray
    split_threshold: np.ndarray
    split_mask: np.ndarray  # uint64: the tree's leaves not under the split's left child
    split_start: np.ndarray
    leaf_value: np.ndarray
    leaf_start: np.ndarray
    n_features: int

    @classmethod
    def of(cls, booster: lgb.Booster, num_iteration: int | None = None) -> Forest | None:
        """The booster's trees up to `num_iteration` (to its best iteration when None, as `predict`), or
        None when the model holds a tree this loop does not score."""
        text = booster.model_to_string(num_iteration=num_iteration)
        header, *blocks = text.split("\nTree=")
        if _fields(header).get("num_tree_per_iteration") != "1" or "is_linear=1" in text:
            return None
        trees = [_fields(block.split("\nend of trees")[0]) for block in blocks]
        if any(tree.get("num_cat", "0") != "0" or int(tree["num_leaves"]) > MAX_LEAVES for tree in trees):
            return None
        features, kinds, thresholds, masks, leaves = [], [], [], [], []
        split_start, leaf_start = [0], [0]
        for tree in trees:
            values = _numbers(tree["leaf_value"], float)
            if len(values) > 1:
                decision = np.asarray(_numbers(tree["decision_type"], int))
                if np.any(decision & 1):  # a categorical split
                    return None
                threshold = np.asarray(_numbers(tree["threshold"], float))
                split_kinds = _column_kinds(decision, threshold)
                order, under_left = _leaf_order(_numbers(tree["left_child"], int), _numbers(tree["right_child"], int))
                features.extend(_numbers(tree["split_feature"], int))
                kinds.extend(split_kinds)
                thresholds.extend(np.where(split_kinds >= IS_NAN, 0.5, threshold))
                masks.extend(~sum(1 << position for position in left) & (2**64 - 1) for left in under_left)
                values = [values[leaf] for leaf in order]
            split_start.append(len(features))
            leaves.extend(values)
            leaf_start.append(len(leaves))
        pairs, column = np.unique(
            np.column_stack([np.asarray(features, dtype=np.int64), np.asarray(kinds, dtype=np.int64)]).reshape(-1, 2),
            axis=0,
            return_inverse=True,
        )
        return cls(
            column_feature=pairs[:, 0].copy(),
            column_kind=pairs[:, 1].copy(),
            split_column=column.ravel().astype(np.int64),
            split_threshold=np.asarray(thresholds, dtype=np.float64),
            split_mask=np.asarray(masks, dtype=np.uint64),
            split_start=np.asarray(split_start, dtype=np.int64),
            leaf_value=np.asarray(leaves, dtype=np.float64),
            leaf_start=np.asarray(leaf_start, dtype=np.int64),
            n_features=booster.num_feature(),
        )

    def raw_score(self, matrix: np.ndarray, threads: int = 0) -> np.ndarray:
        """The summed leaf values per row (see `retain.forest.raw_score`)."""
        matrix = self._checked(matrix)
        out = np.zeros(len(matrix))
        parts = min(threads or CORES, len(matrix) // ROWS_PER_THREAD)
        if parts <= 1:
            self._score(matrix, out)
            return out
        size = -(-len(matrix) // parts)
        slices = [slice(first, first + size) for first in range(0, len(matrix), size)]
        list(_thread_pool().map(lambda rows: self._score(matrix[rows], out[rows]), slices))  # releases the GIL
        return out

    def contributions(self, booster: lgb.Booster, matrix: np.ndarray, threads: int = 0) -> np.ndarray:
        """The booster's (whose trees these are) `pred_contrib` values per row: see
        `retain.forest.contributions`. Rows are taken CONTRIBUTION_ROWS at a time (memory: a side pattern
        per tree and row)."""
        matrix = self._checked(matrix)
        out = np.zeros((self.n_features + 1, len(matrix)))  # a row per feature, then the expected value
        trees = len(self.split_start) - 1
        for first in range(0, len(matrix), CONTRIBUTION_ROWS):
            block = matrix[first : first + CONTRIBUTION_ROWS]
            sides = np.empty((trees, len(block)), dtype=np.uint64)
            _sides(block, self.column_feature, self.column_kind, self.split_column, self.split_threshold,
                   self.split_start, sides)  # fmt: skip
            for tree in range(trees):
                group, _ = pd.factorize(sides[tree])  # numbered in the order first seen
                seen = np.full(group.max() + 1, len(block))
                np.minimum.at(seen, group, np.arange(len(block)))  # the first row of each group
                explained = booster.predict(
                    block[seen], pred_contrib=True, start_iteration=tree, num_iteration=1, num_threads=threads
                )
                read = np.flatnonzero(np.any(explained != 0.0, axis=0))  # the features the tree reads, and the bias
                _add_groups(out[:, first : first + len(block)], explained, group, read)
        return out.T

    def _checked(self, matrix: np.ndarray) -> np.ndarray:
        matrix = np.ascontiguousarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features:
            raise ValueError(f"the model reads {self.n_features} columns; the matrix has shape {matrix.shape}")
        return matrix

    def _score(self, matrix: np.ndarray, out: np.ndarray) -> None:
        _score(
            matrix, self.column_feature, self.column_kind, self.split_column, self.split_threshold,
            self.split_mask, self.split_start, self.leaf_value, self.leaf_start, out,
        )  # fmt: skip


def _leaf_order(left_child: list[int], right_child: list[int]) -> tuple[list[int], list[list[int]]]:
    """The tree's leaves left to right, and per split the positions (in that order) of the leaves under
    its left child. LightGBM's children: a split's index, or ~leaf for a leaf."""
    order: list[int] = []
    span: dict[int, tuple[int, int]] = {}  # split -> positions [first, last) of the leaves under it

    def visit(node: int) -> None:
        if node < 0:
            order.append(~node)
            return
        first = len(order)
        visit(left_child[node])
        visit(right_child[node])
        span[node] = (first, len(order))

    visit(0)
    under_left = []
    for split in range(len(left_child)):
        child = left_child[split]
        first = span[split][0]
        last = first + 1 if child < 0 else span[child][1]
        under_left.append(list(range(first, last)))
    return order, under_left


def _column_kinds(decision: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Per split, the column that makes LightGBM's rule the one test `column > threshold`.

    decision_type bits: 2 = missing values go left; bits 3-4 = missing type (0 none: NaN reads 0.0,
    1 zero: 0.0 and NaN take the default side, 2 NaN: NaN takes the default side). A value sent left
    reads -inf (never > threshold), one sent right +inf; against a threshold of +inf (LightGBM's split of
    the missing values from all others) +inf would go left, so the column is then an indicator of the
    missing value, tested against 0.5."""
    left = (decision & 2) > 0
    missing = (decision >> 2) & 3
    infinite = threshold == np.inf
    kinds = np.full(len(decision), PLAIN)
    kinds[(missing == 2) & left] = NAN_LEFT
    kinds[(missing == 2) & ~left] = np.where(infinite[(missing == 2) & ~left], IS_NAN, NAN_RIGHT)
    kinds[(missing == 1) & left] = ZERO_LEFT
    kinds[(missing == 1) & ~left] = np.where(infinite[(missing == 1) & ~left], IS_NAN_OR_ZERO, ZERO_RIGHT)
    return kinds


def _fields(block: str) -> dict:
    return dict(line.split("=", 1) for line in block.splitlines() if "=" in line)


def _numbers(text: str, kind: type) -> list:
    return [kind(value) for value in text.split()]


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(CORES, thread_name_prefix="retain-forest")
        return _pool


# The position of the lowest set bit: multiply the bits up to it by a de Bruijn constant and look the
# top six bits up (the "bitScanForward" of the Chess Programming Wiki).
DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
LOWEST_BIT = np.array(
    [0, 47, 1, 56, 48, 27, 2, 60, 57, 49, 41, 37, 28, 16, 3, 61, 54, 58, 35, 52, 50, 42, 21, 44, 38, 32, 29, 23,
     17, 11, 4, 62, 46, 55, 26, 59, 40, 36, 15, 53, 34, 51, 20, 43, 31, 22, 10, 45, 25, 39, 14, 33, 19, 30, 9, 24,
     13, 18, 8, 12, 7, 6, 5, 63],
    dtype=np.int64,
)  # fmt: skip


@numba.njit(nogil=True, cache=True)
def _score(
    matrix, column_feature, column_kind, split_column, split_threshold, split_mask, split_start, leaf_value,
    leaf_start, out,
):  # fmt: skip
    n_columns = len(column_feature)
    values = np.empty((n_columns, BLOCK))  # column by column, so one split's test over the rows vectorises
    alive = np.empty(BLOCK, np.uint64)
    every = ~np.uint64(0)
    for first in range(0, matrix.shape[0], BLOCK):
        rows = min(BLOCK, matrix.shape[0] - first)
        for r in range(rows):
            for c in range(n_columns):
                values[c, r] = _column_value(matrix[first + r, column_feature[c]], column_kind[c])
        for t in range(len(split_start) - 1):
            alive[:rows] = every
            for s in range(split_start[t], split_start[t + 1]):
                column, threshold, mask = split_column[s], split_threshold[s], split_mask[s]
                for r in range(rows):
                    alive[r] &= mask if values[column, r] > threshold else every
            for r in range(rows):
                bits = alive[r] ^ (alive[r] - np.uint64(1))  # ones up to the lowest set bit
                out[first + r] += leaf_value[leaf_start[t] + LOWEST_BIT[(bits * DE_BRUIJN) >> np.uint64(58)]]


@numba.njit(inline="always")
def _column_value(x, kind):
    missing = np.isnan(x)
    if not missing and -ZERO <= x <= ZERO:
        x = 0.0
    if kind == NAN_LEFT:
        return -np.inf if missing else x
    if kind == NAN_RIGHT:
        return np.inf if missing else x
    if kind == ZERO_LEFT:
        return -np.inf if missing or x == 0.0 else x
    if kind == ZERO_RIGHT:
        return np.inf if missing or x == 0.0 else x
    if kind == IS_NAN:
        return 1.0 if missing else 0.0
    if kind == IS_NAN_OR_ZERO:
        return 1.0 if missing or x == 0.0 else 0.0
    return 0.0 if missing else x  # PLAIN: NaN reads 0.0


@numba.njit(nogil=True, cache=True)
def _sides(matrix, column_feature, column_kind, split_column, split_threshold, split_start, out):
    """out[t, r]: bit k set when the k-th split of tree t sends row r right (at most 63 splits a tree)."""
    rows = matrix.shape[0]
    values = np.empty((len(column_feature), rows))  # column by column, so a split's test over the rows vectorises
    for r in range(rows):
        for c in range(len(column_feature)):
            values[c, r] = _column_value(matrix[r, column_feature[c]], column_kind[c])
    for t in range(len(split_start) - 1):
        out[t, :] = 0
        for s in range(split_start[t], split_start[t + 1]):
            column, threshold, bit = split_column[s], split_threshold[s], np.uint64(1) << np.uint64(s - split_start[t])
            for r in range(rows):
                if values[column, r] > threshold:
                    out[t, r] |= bit


@numba.njit(nogil=True, cache=True)
def _add_groups(out, explained, group, columns):
    """out[j, r] += explained[group[r], j] for the `columns` j a tree reads (a few of the features)."""
    for j in columns:
        for r in range(out.shape[1]):
            out[j, r] += explained[group[r], j]
