"""The committed Sudoku-Extreme CSVs: sizes, tiers, validity and no leaks."""

import collections

import numpy as np
import pytest

from attractor_jax.puzzles import sudoku


@pytest.fixture(scope="module")
def splits():
  return {name: sudoku.load_split(name) for name in sudoku.SPLITS}


def _invariant(puzzle):
  """Equal for equivalent puzzles: clue counts by line and by digit."""
  grid = puzzle.reshape(9, 9) != 0
  lines = sorted([tuple(sorted(grid.sum(1))), tuple(sorted(grid.sum(0)))])
  digits = sorted(np.bincount(puzzle, minlength=10)[1:])
  return (tuple(lines), tuple(digits))


def test_sizes_columns_and_tiers(splits):
  train, test = splits["train"], splits["test"]
  assert train.puzzles.shape == (1000, 81) and train.puzzles.dtype == np.int8
  assert test.puzzles.shape[0] >= 5000
  for split in (train, test):
    assert split.solutions.shape == split.puzzles.shape
    assert split.ratings.shape == (split.puzzles.shape[0],)
    assert split.puzzles.min() == 0 and split.puzzles.max() == 9
    assert split.solutions.min() == 1
  tiers = collections.Counter(sudoku.tier_of(r) for r in test.ratings)
  assert set(tiers) == set(sudoku.TIERS)
  assert tiers["extreme"] >= 1000
  easiest_famous = min(sudoku.rate(p) for p in sudoku.FAMOUS.values())
  assert (test.ratings >= easiest_famous).sum() >= 1000
  header = (sudoku.DATA_DIR / "test.csv").read_text().splitlines()[0]
  assert header == "puzzle,solution,rating"


def test_sample_is_unique_consistent_and_rated_as_recorded(splits):
  rng = np.random.default_rng(0)
  for split in splits.values():
    order = np.argsort(split.ratings)
    # Both ends of the difficulty range and a few in between.
    rows = np.concatenate([order[:3], order[-3:],
                           rng.choice(len(order), 6, replace=False)])
    for i in rows:
      found, solution = sudoku.solve(split.puzzles[i])
      assert found == 1
      assert (solution == split.solutions[i]).all()
      assert sudoku.is_solution(split.solutions[i], split.puzzles[i])
      assert sudoku.rate(split.puzzles[i]) == split.ratings[i]


def test_no_shared_puzzles_or_solutions_between_splits(splits):
  train, test = splits["train"], splits["test"]
  for attribute in ("puzzles", "solutions"):
    seen = {row.tobytes() for row in getattr(train, attribute)}
    assert not any(row.tobytes() in seen for row in getattr(test, attribute))
  # Equivalent puzzles share the invariant; only those pairs need the
  # (costlier) canonical form.
  by_invariant = collections.defaultdict(list)
  for puzzle in test.puzzles:
    by_invariant[_invariant(puzzle)].append(puzzle)
  checked = 0
  for puzzle in train.puzzles[::10]:
    matches = by_invariant.get(_invariant(puzzle), [])
    if matches:
      form = sudoku.canonical(puzzle)
      assert all(sudoku.canonical(other) != form for other in matches)
      checked += 1
  assert checked < 100


@pytest.mark.slow
def test_every_puzzle_is_unique_consistent_and_rated_as_recorded(splits):
  for split in splits.values():
    for puzzle, solution, rating in zip(*split):
      found, only = sudoku.solve(puzzle)
      assert found == 1
      assert (only == solution).all()
      assert sudoku.is_solution(solution, puzzle)
      assert sudoku.rate(puzzle) == rating


@pytest.mark.slow
def test_no_equivalent_puzzles_anywhere(splits):
  forms = {name: [sudoku.canonical(p) for p in split.puzzles]
           for name, split in splits.items()}
  assert not set(forms["train"]) & set(forms["test"])
  for name in forms:
    assert len(set(forms[name])) == len(forms[name])
  # Clusters (one solution grid each) stay on one side, up to equivalence.
  grids = {name: {sudoku.canonical(s) for s in split.solutions}
           for name, split in splits.items()}
  assert not grids["train"] & grids["test"]
