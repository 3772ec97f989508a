"""Sudoku-Extreme: 9x9 puzzles with one solution, rated by a solver's guesses.

Grids are int8 arrays of 81 cells in row-major order: 0 is a blank, 1..9 a
digit. As text a grid is 81 characters, '.' (or '0') for a blank.

The rating of a puzzle is the mean number of guesses our solver needs to
reach its solution, over random validity-preserving rearrangements of it
(see `rate` and docs/sudoku_extreme.md). The committed data set,

    puzzles, solutions, ratings = sudoku.load_split("test")

was made by `python -m attractor_jax.puzzles build-sudoku` (sudoku_build.py).
For models, `to_tokens` maps a grid to TRM's tokens (0 pad, 1 blank, 2..10
the digits) and `augment` draws a random rearrangement of a training pair.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple, Optional

import numpy as np

from attractor_jax import errors
from attractor_jax.puzzles import sudoku_core as core

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data" / "sudoku-extreme"
SPLITS = ("train", "test")
CSV_HEADER = "puzzle,solution,rating"

# The rating the data set records and the `rate` command prints by default.
DEFAULT_ISOMORPHS = 32
DEFAULT_SEED = 0

# Famous hard puzzles from the literature, for calibration
# (docs/sudoku_extreme.md lists how each rates).
FAMOUS = {
    "AI Escargot": ("1....7.9..3..2...8..96..5....53..9...1..8...26....4..."
                    "3......1..4......7..7...3.."),
    "Easter Monster": ("1.......2.9.4...5...6...7...5.9.3.......7.......85..4."
                       "7.....6...3...9.8...2.....1"),
    "Golden Nugget": (".......39.....1..5..3.5.8....8.9...6.7...2...1..4......"
                      ".9.8..5..2....6..4..7....."),
    "Inkala 2012": ("8..........36......7..9.2...5...7.......457.....1...3..."
                    "1....68..85...1..9....4.."),
    "Platinum Blonde": (".......12........3..23..4....18....5.6..7.8......."
                        "9.....85.....9...4.5..47...6..."),
}

# Difficulty tiers: lower bounds of the rating (DEFAULT_ISOMORPHS,
# DEFAULT_SEED). "extreme" starts at AI Escargot's mean rating over 1024
# rearrangements (27.55; its DEFAULT_SEED rating is 24.2), the easiest of
# FAMOUS.
TIERS = ("easy", "medium", "hard", "extreme")
TIER_BOUNDS = (0.0, 2.0, 8.0, 27.5)

# TRM's token format.
PAD = 0
BLANK = 1
VOCAB_SIZE = 11


class Split(NamedTuple):
  """One split of the data set: int8 [n, 81] grids and float64 [n] ratings."""
  puzzles: np.ndarray
  solutions: np.ndarray
  ratings: np.ndarray


# ------------------------------------------------------------------ text


def parse(text: str) -> np.ndarray:
  """An 81-character grid ('.' or '0' blank, '1'..'9') as int8 [81]."""
  text = text.strip()
  if len(text) != 81 or any(ch not in ".0123456789" for ch in text):
    raise ValueError(
        f"expected 81 characters from 1-9, '.' or '0', got {text[:100]!r}")
  raw = np.frombuffer(text.replace(".", "0").encode("ascii"), np.uint8)
  return (raw - ord("0")).astype(np.int8)


def to_text(grid, blank: str = ".") -> str:
  """int [81] grid -> 81 characters, `blank` for 0."""
  grid = _grid(grid)
  return "".join(blank if d == 0 else chr(ord("0") + int(d)) for d in grid)


def _grid(grid) -> np.ndarray:
  if isinstance(grid, str):
    return parse(grid)
  grid = np.asarray(grid)
  if grid.shape != (81,) or grid.min() < 0 or grid.max() > 9:
    raise ValueError(f"a grid is 81 ints in 0..9, got shape {grid.shape}")
  return grid.astype(np.int8)


# ---------------------------------------------------------------- solving


def count_solutions(puzzle, limit: int = 2) -> int:
  """Number of solutions, counting at most `limit`; 0 for an invalid grid."""
  found, _ = core.search(core.init_candidates(_grid(puzzle)), limit,
                         np.zeros((0, 81), np.int8), np.zeros(1, np.uint64),
                         False)
  return int(found)


def solve(puzzle) -> tuple[int, Optional[np.ndarray]]:
  """(solutions: 0, 1 or 2 meaning two or more; the solution if unique)."""
  sols = np.zeros((2, 81), np.int8)
  found, _ = core.search(core.init_candidates(_grid(puzzle)), 2, sols,
                         np.zeros(1, np.uint64), False)
  return int(found), (sols[0].copy() if found == 1 else None)


def is_solution(solution, puzzle=None) -> bool:
  """Whether `solution` is a full valid grid (agreeing with `puzzle`)."""
  grid = _grid(solution)
  if (grid == 0).any():
    return False
  units = grid[core.UNITS]
  if not (np.sort(units, axis=1) == np.arange(1, 10)).all():
    return False
  if puzzle is not None:
    clues = _grid(puzzle)
    return bool(((clues == 0) | (clues == grid)).all())
  return True


def rate(puzzle, isomorphs: int = DEFAULT_ISOMORPHS,
         seed: int = DEFAULT_SEED) -> float:
  """Mean guesses to solve `puzzle` over `isomorphs` random rearrangements.

  A guess is one branch of the solver's depth-first search: with naked and
  hidden singles and locked candidates (pointing and claiming) propagated to
  a fixpoint, it picks the first cell with the fewest candidates and tries
  its lowest digit; if that leads to a contradiction, the digit is removed
  (not a guess) and the search goes on. The count stops at the first
  solution. Each rearrangement (digit relabelling, band/stack and in-band
  row/column orders, transpose) is drawn from `seed`, so the same puzzle
  always gets the same rating, wherever it sits in a file.

  Raises:
    ValueError: the puzzle does not have exactly one solution.
  """
  grid = _grid(puzzle)
  if count_solutions(grid) != 1:
    raise ValueError("only a puzzle with exactly one solution has a rating")
  check_rating_args(isomorphs, seed)
  return float(core.rate(grid, isomorphs, np.uint64(seed)))


def check_rating_args(isomorphs: int, seed: int) -> None:
  if isomorphs < 1:
    raise ValueError(f"isomorphs must be at least 1, got {isomorphs}")
  if not 0 <= seed < 2**64:
    raise ValueError(f"seed must be in [0, 2**64), got {seed}")


def tier_of(rating: float) -> str:
  """The difficulty tier ("easy", "medium", "hard", "extreme") of a rating."""
  tier = TIERS[0]
  for name, bound in zip(TIERS, TIER_BOUNDS):
    if rating >= bound:
      tier = name
  return tier


def describe(puzzle, isomorphs: int = DEFAULT_ISOMORPHS,
             seed: int = DEFAULT_SEED) -> dict:
  """What `rate` prints for one puzzle: solutions, rating, tier, solution."""
  grid = _grid(puzzle)
  check_rating_args(isomorphs, seed)
  found, solution = solve(grid)
  rating = None
  if found == 1:
    rating = float(core.rate(grid, isomorphs, np.uint64(seed)))
  return {
      "puzzle": to_text(grid),
      "solutions": found,
      "rating": rating,
      "tier": None if rating is None else tier_of(rating),
      "solution": None if solution is None else to_text(solution),
  }


def canonical(puzzle) -> str:
  """A form shared by exactly the puzzles equivalent to this one.

  Equivalent means one is a validity-preserving rearrangement of the other
  (digit relabelling, band/stack and in-band row/column orders, transpose).
  The form is the least, in row-major order, of all row/column
  rearrangements with digits renumbered by first appearance; the search over
  the 2 * 6**8 of them is pruned row by row.
  """
  return to_text(core.canonical(_grid(puzzle)), blank="0")


# ----------------------------------------------------------------- models


def _random_rearrangement(rng: np.random.Generator):
  """(cell index [81], digit map [10]) of one random rearrangement."""
  def lines():
    order = rng.permutation(3)
    return np.concatenate([order[i] * 3 + rng.permutation(3)
                           for i in range(3)])
  rows, cols = lines(), lines()
  index = rows[:, None] * 9 + cols[None, :]
  if rng.random() < 0.5:
    index = index.T
  digits = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.int8)
  return index.reshape(81), digits


def augment(puzzle, solution, rng: np.random.Generator):
  """The same random validity-preserving rearrangement of both grids.

  Digit relabelling, band and stack orders, row and column orders within
  them, and transpose; a puzzle keeps exactly one solution (the rearranged
  one). Meant for the training split only.

  Args:
    puzzle, solution: int [81], or [n, 81] for n independent rearrangements.
    rng: numpy random Generator.

  Returns:
    (puzzle, solution), int8 arrays of the input's shape.
  """
  puzzle = np.asarray(puzzle)
  solution = np.asarray(solution)
  if puzzle.shape != solution.shape or puzzle.shape[-1:] != (81,):
    raise ValueError(f"puzzle {puzzle.shape} and solution {solution.shape} "
                     "must both be [81] or [n, 81]")
  flat_p = puzzle.reshape(-1, 81)
  flat_s = solution.reshape(-1, 81)
  out_p = np.empty(flat_p.shape, np.int8)
  out_s = np.empty(flat_s.shape, np.int8)
  for i in range(flat_p.shape[0]):
    index, digits = _random_rearrangement(rng)
    out_p[i] = digits[flat_p[i][index]]
    out_s[i] = digits[flat_s[i][index]]
  return out_p.reshape(puzzle.shape), out_s.reshape(solution.shape)


def to_tokens(grid) -> np.ndarray:
  """Grids (int [..., 81], 0 blank) -> int32 tokens: 1 blank, 2..10 digits.

  Token 0 (PAD) is left for padding, as in TRM; VOCAB_SIZE is 11.
  """
  grid = np.asarray(grid)
  if grid.size and (grid.min() < 0 or grid.max() > 9):
    raise ValueError("grid values must be in 0..9")
  return grid.astype(np.int32) + 1


def from_tokens(tokens) -> np.ndarray:
  """Tokens -> int8 grids; PAD and BLANK both become 0 (blank)."""
  tokens = np.asarray(tokens)
  return np.where(tokens <= BLANK, 0, tokens - 1).astype(np.int8)


# ------------------------------------------------------------------ data


def read_csv(path) -> Split:
  """A `puzzle,solution,rating` CSV as a Split."""
  path = pathlib.Path(path)
  lines = path.read_text(encoding="ascii").splitlines()
  if not lines or lines[0] != CSV_HEADER:
    raise errors.DataError(f"{path}: the first line must be {CSV_HEADER!r}")
  rows = [line.split(",") for line in lines[1:] if line]
  def grids(column):
    text = "".join(row[column] for row in rows).replace(".", "0")
    raw = np.frombuffer(text.encode("ascii"), np.uint8)
    return (raw - ord("0")).astype(np.int8).reshape(len(rows), 81)
  ratings = np.array([float(row[2]) for row in rows], np.float64)
  return Split(grids(0), grids(1), ratings)


def load_split(split: str) -> Split:
  """The committed "train" or "test" split: (puzzles, solutions, ratings).

  puzzles and solutions are int8 [n, 81] (0 blank, 1..9 digits), ratings
  float64 [n]. Training code draws `augment`s of the train split only.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  return read_csv(DATA_DIR / f"{split}.csv")

