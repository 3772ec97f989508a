"""Cheap local rules cannot read the Maze-Hard path off the maze."""

import numpy as np
import pytest

from attractor_jax.puzzles import maze
from attractor_jax.puzzles import maze_rules

# Wall-hugging "rails" along the path: what walling off alternatives leaves.
RAILS = "".join([
    "#" * 30,
    "#S" + "." * 27 + "#",
    "#" * 30,
] + ["#" * 30] * 27)


@pytest.fixture(scope="module")
def test_split():
  return maze.load_split("test")


def test_rules_on_a_leaky_maze_score_perfectly():
  """Sanity check of the scorer: on a railed corridor the rules are exact."""
  text = list(RAILS)
  text[1 * 30 + 28] = "G"
  leaky = maze.to_tokens("".join(text))[None]
  solution = maze.solve(leaky[0])[None]
  for name in ("corridor", "wall_hugged", "not_dead_end", "bounding_box"):
    result = maze_rules.score(name, maze_rules.RULES[name][0](leaky), solution)
    assert (result.f1, result.exact) == (1.0, 1.0), name


def test_single_pass_rules_score_near_zero_exact_accuracy(test_split):
  mazes, solutions = test_split
  scores = maze_rules.leakage_table(mazes, solutions,
                                    maze_rules.SINGLE_PASS_RULES)
  print("\n" + maze_rules.format_table(scores))
  for s in scores:
    assert s.exact <= 0.01, s
    assert s.f1 < 0.6, s


def test_corridor_cells_are_no_likelier_path_than_open_cells(test_split):
  """Precision of 'corridor' and 'wall_hugged' stays near the base rate."""
  mazes, solutions = test_split
  scores = {s.rule: s for s in maze_rules.leakage_table(
      mazes, solutions, ("all_open", "corridor", "wall_hugged"))}
  base = scores["all_open"].precision
  assert scores["corridor"].precision < base + 0.05
  assert scores["wall_hugged"].precision < base + 0.05


def test_dead_end_filling_leaves_loops_to_choose_between(test_split):
  mazes, solutions = test_split
  full = maze_rules.score("dead_end_fill",
                          maze_rules.dead_end_filling(mazes), solutions)
  assert full.recall == 1.0  # it never removes a path cell
  assert full.exact <= 0.05
  assert full.precision < 0.7


def test_most_mazes_have_detours_around_the_path(test_split):
  mazes, solutions = test_split
  rows = np.random.default_rng(0).choice(len(mazes), 50, replace=False)
  stats = maze_rules.detour_stats(mazes[rows], solutions[rows])
  assert stats.share_with_detour >= 0.9
  assert stats.bypassable > 0.1
