"""Maze-Hard tokens, transforms, path checks and the generator."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from attractor_jax.puzzles import __main__ as puzzles_main
from attractor_jax.puzzles import maze
from attractor_jax.puzzles import maze_kernels


def _grid(rows):
  """Pads hand-drawn rows with walls to a 30x30 maze string."""
  rows = [r.ljust(30, "#") for r in rows] + ["#" * 30] * (30 - len(rows))
  return "".join(rows)


# Two routes from S to G: the top one is 2 steps shorter.
TWO_ROUTES = _grid([
    "#######",
    "#S...G#",
    "#.###.#",
    "#.....#",
    "#######",
])
# A ring of even length: two shortest paths of 4 steps.
TIED = _grid([
    "#####",
    "#S..#",
    "#.#.#",
    "#..G#",
    "#####",
])


@pytest.fixture(scope="module")
def small_set():
  mazes, solutions, _ = maze.generate(7, "test", 6, min_steps=60)
  return mazes, solutions


def test_tokens_round_trip_and_vocabulary():
  tokens = maze.to_tokens(TWO_ROUTES)
  assert tokens.shape == (900,)
  assert maze.from_tokens(tokens) == TWO_ROUTES
  assert maze.VOCAB[maze.WALL] == "#" and maze.VOCAB[maze.PATH] == "o"
  assert (tokens != maze.PAD).all()
  batch = maze.to_tokens([TWO_ROUTES, TIED])
  assert batch.shape == (2, 900)
  assert maze.from_tokens(batch) == [TWO_ROUTES, TIED]


@pytest.mark.parametrize("bad", ["#" * 899, "x" + "#" * 899])
def test_to_tokens_rejects_bad_strings(bad):
  with pytest.raises(ValueError):
    maze.to_tokens(bad)


def test_shortest_path_stats_and_solve():
  stats = maze.shortest_path_stats(maze.to_tokens(TWO_ROUTES))
  assert (stats.steps, stats.num_shortest, stats.on_path.sum()) == (4, 1, 3)
  solution = maze.from_tokens(maze.solve(maze.to_tokens(TWO_ROUTES)))
  assert solution[31:37] == "SoooG#"
  tied = maze.shortest_path_stats(maze.to_tokens(TIED))
  assert (tied.steps, tied.num_shortest) == (4, 2)
  with pytest.raises(ValueError):
    maze.solve(maze.to_tokens(TIED))


def test_check_example_catches_wrong_solutions():
  tokens = maze.to_tokens(TWO_ROUTES)
  solution = maze.solve(tokens)
  assert maze.check_example(tokens, solution, min_steps=4) == []
  assert maze.check_example(tokens, solution, min_steps=5)  # too short
  longer = solution.copy()
  longer[longer == maze.PATH] = maze.OPEN
  longer[[61, 91, 92, 93, 94, 95, 65]] = maze.PATH  # the other route
  assert maze.check_example(tokens, longer, min_steps=4)
  assert maze.check_example(maze.to_tokens(TIED), maze.to_tokens(TIED), 1)


def test_bfs_counts_paths_capped_at_two():
  open_cells = np.ones(900, np.uint8)
  dist, count = maze_kernels.bfs(open_cells, 0)
  assert dist[31] == 2 and count[31] == 2 and count[1] == 1
  assert dist[899] == 58


def test_dihedral_transforms_are_the_eight_symmetries():
  grid = np.arange(900)
  images = {maze.dihedral(grid, k).tobytes() for k in range(8)}
  assert len(images) == 8
  square = grid.reshape(30, 30)
  assert np.array_equal(maze.dihedral(grid, 4).reshape(30, 30), square.T)
  assert np.array_equal(maze.dihedral(grid, 0), grid)


def test_augment_keeps_examples_valid(small_set):
  mazes, solutions = small_set
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(4):
    aug_mazes, aug_solutions = maze.augment(mazes, solutions, rng)
    for m, s in zip(aug_mazes, aug_solutions):
      assert maze.check_example(m, s, min_steps=60) == []
      seen.add(m.tobytes())
  assert len(seen) > len(mazes)
  one_maze, one_solution = maze.augment(mazes[0], solutions[0], rng)
  assert maze.check_example(one_maze, one_solution, min_steps=60) == []
  assert maze.canonical_key(one_maze) == maze.canonical_key(mazes[0])


def test_generated_mazes_are_valid_and_distinct(small_set):
  mazes, solutions = small_set
  assert not list(maze.iter_problems(mazes, solutions, min_steps=60))
  assert len({maze.canonical_key(m) for m in mazes}) == len(mazes)


def test_generation_depends_on_seed_and_split():
  a, _, _ = maze.generate(1, "test", 2, min_steps=60)
  b, _, _ = maze.generate(1, "test", 2, min_steps=60)
  c, _, _ = maze.generate(2, "test", 2, min_steps=60)
  d, _, _ = maze.generate(1, "train", 2, min_steps=60)
  assert np.array_equal(a, b)
  assert not np.array_equal(a, c)
  assert not np.array_equal(a, d)


def test_generate_skips_excluded_mazes():
  first, _, _ = maze.generate(3, "test", 1, min_steps=60)
  again, _, _ = maze.generate(3, "test", 1, min_steps=60,
                              exclude={maze.canonical_key(first[0])})
  assert not np.array_equal(first, again)


def test_build_command_is_deterministic(tmp_path, capsys):
  outputs = []
  for name in ("a", "b"):
    out = tmp_path / name
    assert puzzles_main.main(
        ["build-maze", "--out", str(out), "--seed", "5", "--train", "3",
         "--test", "2", "--no-report"]) == 0
    outputs.append([(out / f"{s}.csv").read_bytes() for s in maze.SPLITS])
  assert outputs[0] == outputs[1]
  assert "train path steps" in capsys.readouterr().out
  mazes, solutions = maze.load_split("train", tmp_path / "a")
  assert mazes.shape == (3, 900)
  assert not list(maze.iter_problems(mazes, solutions))


def test_load_split_rejects_unknown_split():
  with pytest.raises(ValueError):
    maze.load_split("valid")


@pytest.mark.slow
def test_committed_data_rebuilds_identically(tmp_path):
  """The documented command reproduces the committed CSVs byte for byte."""
  subprocess.run(
      [sys.executable, "-m", "attractor_jax.puzzles", "build-maze", "--out",
       str(tmp_path), "--seed", str(maze.DEFAULT_SEED), "--no-report"],
      check=True, capture_output=True, text=True)
  for split in maze.SPLITS:
    assert ((tmp_path / f"{split}.csv").read_bytes()
            == (maze.DATA_DIR / f"{split}.csv").read_bytes()), split


def test_doc_carries_the_rebuild_command():
  doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "maze_hard.md")
  assert (f"build-maze --out attractor_jax/puzzles/data/maze-hard --seed "
          f"{maze.DEFAULT_SEED} --train 1000 --test 1000") in doc.read_text()
