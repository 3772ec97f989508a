"""The committed Maze-Hard data: validity, sizes, no train/test overlap."""

import numpy as np
import pytest

from attractor_jax.puzzles import maze



@pytest.fixture(scope="module")
def splits():
  return {split: maze.load_split(split) for split in maze.SPLITS}


def test_split_sizes_and_token_ranges(splits):
  for split, (mazes, solutions) in splits.items():
    assert mazes.shape == solutions.shape
    assert mazes.shape[1] == maze.NUM_CELLS
    assert mazes.shape[0] >= 1000, split
    assert set(np.unique(mazes)) == {maze.WALL, maze.OPEN, maze.START, maze.GOAL}
    assert set(np.unique(solutions)) == {maze.WALL, maze.OPEN, maze.START,
                                         maze.GOAL, maze.PATH}


def test_start_and_goal_appear_once(splits):
  for mazes, solutions in splits.values():
    for grids in (mazes, solutions):
      assert ((grids == maze.START).sum(axis=1) == 1).all()
      assert ((grids == maze.GOAL).sum(axis=1) == 1).all()


def test_solution_is_the_maze_with_path_marks(splits):
  for mazes, solutions in splits.values():
    marked = solutions == maze.PATH
    assert (mazes[marked] == maze.OPEN).all()
    assert np.array_equal(np.where(marked, mazes, solutions), mazes)
    assert (marked.sum(axis=1) + 1 >= maze.MIN_STEPS).all()


def test_every_maze_has_a_unique_long_shortest_path(splits):
  # Two BFS per maze in numba: about a second for both splits.
  for split, (mazes, solutions) in splits.items():
    bad = list(maze.iter_problems(mazes, solutions))
    assert not bad, (split, bad[:5])


def test_no_maze_repeats_within_or_across_splits_up_to_symmetry(splits):
  keys = [maze.canonical_key(m) for mazes, _ in splits.values() for m in mazes]
  assert len(keys) == len(set(keys))


def test_csv_rows_are_900_character_strings():
  text = (maze.DATA_DIR / "test.csv").read_text(encoding="ascii").splitlines()
  assert text[0] == "maze,solution"
  for line in text[1:6]:
    maze_text, solution_text = line.split(",")
    assert len(maze_text) == len(solution_text) == 900
    assert set(maze_text) == set("#.SG")
    assert set(solution_text) == set("#.SGo")
