"""Sudoku solver, rater, canonical form, augmentation and tokens."""

import numpy as np
import pytest

from attractor_jax.puzzles import sudoku
from attractor_jax.puzzles import sudoku_core as core

# Solved by singles alone (the Wikipedia example).
EASY = ("53..7....6..195....98....6.8...6...34..8.3..17...2...6."
        "6....28....419..5....8..79")
EASY_SOLUTION = ("534678912672195348198342567859761423426853791713924856"
                 "961537284287419635345286179")


def _brute_force_count(grid, limit=2):
  """Plain backtracking (fewest-candidates cell first), no propagation."""
  grid = [int(d) for d in grid]

  def candidates(c):
    r, col = divmod(c, 9)
    box = (r // 3 * 3, col // 3 * 3)
    used = {grid[r * 9 + j] for j in range(9)}
    used |= {grid[i * 9 + col] for i in range(9)}
    used |= {grid[(box[0] + i) * 9 + box[1] + j]
             for i in range(3) for j in range(3)}
    return [d for d in range(1, 10) if d not in used]

  def count():
    blanks = [c for c in range(81) if grid[c] == 0]
    if not blanks:
      return 1
    cell = min(blanks, key=lambda c: len(candidates(c)))
    total = 0
    for d in candidates(cell):
      grid[cell] = d
      total += count()
      grid[cell] = 0
      if total >= limit:
        break
    return total

  return min(count(), limit)


def test_splitmix64_matches_reference():
  # Python's splitmix64 from the same seed: the data set's bit-for-bit
  # rebuild depends on these exact values.
  mask = (1 << 64) - 1
  def reference(seed, n):
    out = []
    for _ in range(n):
      seed = (seed + 0x9E3779B97F4A7C15) & mask
      z = seed
      z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
      z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
      out.append(z ^ (z >> 31))
    return out
  state = np.full(1, 12345, np.uint64)
  assert [int(core.rand_u64(state)) for _ in range(4)] == reference(12345, 4)


def test_famous_puzzles_have_one_valid_solution_and_rate_extreme():
  for name, text in sudoku.FAMOUS.items():
    found, solution = sudoku.solve(text)
    assert found == 1, name
    assert sudoku.is_solution(solution, text), name
    # Far above random minimal puzzles (mean about 1); docs list the values.
    assert sudoku.rate(text) > 20, name


def test_easy_puzzle_solves_without_guessing():
  found, solution = sudoku.solve(EASY)
  assert found == 1
  assert sudoku.to_text(solution) == EASY_SOLUTION
  assert sudoku.rate(EASY) == 0.0
  assert sudoku.tier_of(sudoku.rate(EASY)) == "easy"


def test_invalid_and_ambiguous_grids():
  assert sudoku.count_solutions("11" + "." * 79) == 0
  assert sudoku.count_solutions("1" + "." * 8 + "1" + "." * 71) == 0
  assert sudoku.count_solutions("." * 81) == 2
  # A clue contradicting the only solution.
  wrong = "9" + EASY[1:]
  assert sudoku.count_solutions(wrong) == 0
  with pytest.raises(ValueError):
    sudoku.rate("." * 81)


def test_solution_counts_match_brute_force():
  state = np.full(1, 7, np.uint64)
  counts = []
  for _ in range(5):
    grid = core.random_grid(state)
    puzzle = grid.copy()
    puzzle[np.random.default_rng(int(grid[0])).permutation(81)[:52]] = 0
    expected = _brute_force_count(puzzle)
    assert sudoku.count_solutions(puzzle) == expected
    counts.append(expected)
  # A minimal puzzle with one clue removed has several solutions.
  puzzle = sudoku.parse(sudoku.FAMOUS["Inkala 2012"])
  puzzle[0] = 0
  assert sudoku.count_solutions(puzzle) == 2 == _brute_force_count(puzzle)


def test_minimise_and_repair_keep_one_solution():
  state = np.full(1, 11, np.uint64)
  grid = core.random_grid(state)
  assert sudoku.is_solution(grid)
  puzzle = grid.copy()
  core.minimise(puzzle, grid, state)
  assert sudoku.solve(puzzle)[0] == 1
  for c in np.flatnonzero(puzzle):  # minimal: every clue is needed
    fewer = puzzle.copy()
    fewer[c] = 0
    assert sudoku.count_solutions(fewer) == 2
  puzzle[np.flatnonzero(puzzle)[:3]] = 0
  core.repair(puzzle, grid, state)
  found, solution = sudoku.solve(puzzle)
  assert found == 1 and (solution == grid).all()


def test_rating_is_reproducible_and_seeded():
  text = sudoku.FAMOUS["AI Escargot"]
  assert sudoku.rate(text, 16, seed=3) == sudoku.rate(text, 16, seed=3)
  ratings = {sudoku.rate(text, 16, seed=s) for s in range(4)}
  assert len(ratings) > 1   # the rearrangements matter


def test_tier_bounds():
  assert [sudoku.tier_of(r) for r in (0.0, 1.99, 2.0, 8.0, 27.49, 27.5, 300)
          ] == ["easy", "easy", "medium", "hard", "hard", "extreme",
                "extreme"]


def test_canonical_form_is_shared_by_rearrangements_only():
  rng = np.random.default_rng(0)
  forms = set()
  for text in sudoku.FAMOUS.values():
    puzzle = sudoku.parse(text)
    _, solution = sudoku.solve(puzzle)
    form = sudoku.canonical(puzzle)
    for _ in range(3):
      moved, _ = sudoku.augment(puzzle, solution, rng)
      assert sudoku.canonical(moved) == form
    assert sudoku.canonical(form) == form   # a canonical form is its own
    # The identity is one of the rearrangements searched.
    relabel = {}
    own = "".join("0" if d == 0
                  else str(relabel.setdefault(d, len(relabel) + 1))
                  for d in puzzle)
    assert form <= own
    forms.add(form)
  assert len(forms) == len(sudoku.FAMOUS)
  one_moved = sudoku.parse(sudoku.FAMOUS["Golden Nugget"])
  one_moved[np.flatnonzero(one_moved)[0]] = 0
  assert sudoku.canonical(one_moved) not in forms


def test_augment_keeps_validity_and_uniqueness():
  rng = np.random.default_rng(1)
  puzzle = sudoku.parse(sudoku.FAMOUS["Easter Monster"])
  _, solution = sudoku.solve(puzzle)
  puzzles, solutions = sudoku.augment(np.stack([puzzle] * 4),
                                      np.stack([solution] * 4), rng)
  assert puzzles.shape == (4, 81) and puzzles.dtype == np.int8
  assert len({p.tobytes() for p in puzzles}) == 4
  for p, s in zip(puzzles, solutions):
    assert (np.count_nonzero(p) == np.count_nonzero(puzzle))
    found, only = sudoku.solve(p)
    assert found == 1 and (only == s).all()
    assert sudoku.is_solution(s, p)
  again = sudoku.augment(puzzle, solution, np.random.default_rng(5))
  assert all((a == b).all() for a, b in
             zip(again, sudoku.augment(puzzle, solution,
                                       np.random.default_rng(5))))


def test_tokens():
  puzzle = sudoku.parse(EASY)
  tokens = sudoku.to_tokens(puzzle)
  assert tokens.dtype == np.int32
  assert tokens.min() == sudoku.BLANK and tokens.max() < sudoku.VOCAB_SIZE
  assert tokens[0] == 5 + 1 and tokens[2] == sudoku.BLANK
  assert (sudoku.from_tokens(tokens) == puzzle).all()
  assert (sudoku.from_tokens(np.zeros(3, np.int32)) == 0).all()   # PAD


def test_parse_rejects_bad_text():
  for bad in ("1" * 80, "x" * 81, "1" * 82):
    with pytest.raises(ValueError):
      sudoku.parse(bad)
  assert (sudoku.parse("0" * 81) == sudoku.parse("." * 81)).all()
