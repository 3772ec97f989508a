"""Maze-Hard: 30x30 mazes whose shortest start-to-goal path is long and unique.

Each example is a pair of 900-character strings, row-major over the 30x30
grid:

* maze: `#` wall, `.` open, `S` start, `G` goal (each exactly once);
* solution: the maze with `o` on every cell strictly between S and G on the
  shortest S-to-G path, which has more than 110 steps (4-neighbour moves) and
  is the only path of that length.

Generator (`build`): a spanning tree of a 15x15 lattice (cells at every other
grid row and column, see `maze_kernels.carve`), grown either uniformly
(Wilson) or by the growing-tree method with a random depth-first bias, then a
random number of extra walls between lattice neighbours knocked out to close
loops. S is a uniform open cell and G a uniform cell whose shortest path from
S is unique and at least `MIN_STEPS` long; grids with no such pair are
redrawn. Uniqueness is found, not made: nothing is walled off next to the
path, so the path leaves no local trace (see `maze_rules` and
docs/maze_hard.md).

Token ids (`VOCAB`): 0 pad, 1 wall `#`, 2 open `.`, 3 start `S`, 4 goal `G`,
5 path `o`. Mazes use ids 1..4, solutions 1..5.

Data: `data/maze-hard/{train,test}.csv` with columns `maze,solution`, rebuilt
by `python -m attractor_jax.puzzles build-maze --out DIR --seed 0`.
"""

from __future__ import annotations

import csv
import dataclasses
import pathlib
import time
from collections.abc import Iterable, Sequence

import numpy as np

from attractor_jax.puzzles import maze_kernels

SIZE = maze_kernels.SIZE
NUM_CELLS = maze_kernels.NUM_CELLS
# "Longer than 110 steps".
MIN_STEPS = 111

VOCAB = ("<pad>", "#", ".", "S", "G", "o")
PAD, WALL, OPEN, START, GOAL, PATH = range(len(VOCAB))
_CHARS = "\0#.SGo"
_CHAR_TO_ID = np.full(256, -1, np.int32)
for _id, _char in enumerate(_CHARS[1:], start=1):
  _CHAR_TO_ID[ord(_char)] = _id

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data" / "maze-hard"
SPLITS = ("train", "test")
COLUMNS = ("maze", "solution")
DEFAULT_SEED = 0
NUM_DIHEDRAL = 8

# Per-maze style draws: the share of Wilson (uniform) trees, the growing-tree
# depth-first bias range, and the loop counts of each. More loops or less
# depth-first bias make long unique paths rarer, so these ranges keep every
# style's acceptance rate above about 1 in 1000.
_WILSON_SHARE = 0.25
_WILSON_LOOPS = (4, 10)
_GROWING_P_NEWEST = (0.5, 1.0)
_GROWING_LOOPS = (6, 16)
_ENDPOINT_TRIES = 2
_MAX_ATTEMPTS_PER_MAZE = 200_000
_SPLIT_STREAM = {"test": 0, "train": 1}


def to_tokens(text: str | Sequence[str]) -> np.ndarray:
  """Token ids of one 900-character grid string (int32[900]) or of a list of them ([n, 900])."""
  if isinstance(text, str):
    if len(text) != NUM_CELLS:
      raise ValueError(f"A maze string has {NUM_CELLS} characters, got {len(text)}.")
    codes = np.frombuffer(text.encode("latin-1", errors="replace"), np.uint8)
    ids = _CHAR_TO_ID[codes]
    if (ids < 0).any():
      bad = sorted({text[i] for i in np.flatnonzero(ids < 0)})
      raise ValueError(f"Unknown maze characters {bad}; expected {_CHARS[1:]!r}.")
    return ids
  return np.stack([to_tokens(t) for t in text]) if len(text) else np.zeros(
      (0, NUM_CELLS), np.int32)


def from_tokens(tokens: np.ndarray) -> str | list[str]:
  """Inverse of `to_tokens`: a string for int[900], a list for int[n, 900]."""
  tokens = np.asarray(tokens)
  if tokens.ndim == 2:
    return [from_tokens(row) for row in tokens]
  if tokens.shape != (NUM_CELLS,) or tokens.min() < WALL or tokens.max() > PATH:
    raise ValueError(f"Expected {NUM_CELLS} token ids in [{WALL}, {PATH}].")
  return "".join(_CHARS[t] for t in tokens)


def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
  """Applies dihedral transform `k` in [0, 8) to grids of shape [..., 900].

  k % 4 quarter turns, then a transpose when k >= 4; k = 0 is the identity.
  """
  grid = np.asarray(grid)
  square = grid.reshape(grid.shape[:-1] + (SIZE, SIZE))
  square = np.rot90(square, k % 4, axes=(-2, -1))
  if k >= 4:
    square = np.swapaxes(square, -1, -2)
  return square.reshape(grid.shape)


def augment(maze: np.ndarray, solution: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """One random dihedral transform, the same for a maze and its solution.

  For training only. `maze` and `solution` are int[900] or int[n, 900]; a
  batch gets an independent transform per row. Every transform maps a maze
  with a unique shortest path to one with the image of that path.
  """
  maze, solution = np.asarray(maze), np.asarray(solution)
  if maze.ndim == 1:
    k = int(rng.integers(NUM_DIHEDRAL))
    return dihedral(maze, k), dihedral(solution, k)
  ks = rng.integers(NUM_DIHEDRAL, size=maze.shape[0])
  out_maze, out_solution = np.empty_like(maze), np.empty_like(solution)
  for k in range(NUM_DIHEDRAL):
    rows = ks == k
    out_maze[rows] = dihedral(maze[rows], k)
    out_solution[rows] = dihedral(solution[rows], k)
  return out_maze, out_solution


def canonical_key(maze: np.ndarray) -> bytes:
  """Key equal for two mazes exactly when one is a dihedral image of the other."""
  maze = np.asarray(maze, np.uint8)
  return min(dihedral(maze, k).tobytes() for k in range(NUM_DIHEDRAL))


@dataclasses.dataclass(frozen=True)
class PathStats:
  """Shortest S-to-G paths of one maze.

  Attributes:
    steps: moves on a shortest path, -1 when G cannot be reached.
    num_shortest: 0 when unreachable, 1 when the shortest path is unique,
      2 when there are two or more.
    on_path: bool[900], the cells strictly between S and G that lie on some
      shortest path (exactly the `o` cells when the path is unique).
  """
  steps: int
  num_shortest: int
  on_path: np.ndarray


def _endpoint(maze: np.ndarray, token: int) -> int:
  where = np.flatnonzero(maze == token)
  if where.size != 1:
    raise ValueError(f"A maze has exactly one {_CHARS[token]!r}, found {where.size}.")
  return int(where[0])


def shortest_path_stats(maze: np.ndarray) -> PathStats:
  """Length, multiplicity and cells of the shortest paths of one maze (int[900]).

  Solution grids are accepted too: `o` cells count as open.
  """
  maze = np.asarray(maze)
  start, goal = _endpoint(maze, START), _endpoint(maze, GOAL)
  open_cells = (maze != WALL).astype(np.uint8)
  from_start, count = maze_kernels.bfs(open_cells, start)
  steps = int(from_start[goal])
  if steps < 0:
    return PathStats(-1, 0, np.zeros(NUM_CELLS, bool))
  from_goal, _ = maze_kernels.bfs(open_cells, goal)
  on_path = ((from_start >= 0) & (from_goal >= 0)
             & (from_start + from_goal == steps))
  on_path[[start, goal]] = False
  return PathStats(steps, int(count[goal]), on_path)


def solve(maze: np.ndarray) -> np.ndarray:
  """The solution grid of a maze (int[900]) with a unique shortest path."""
  stats = shortest_path_stats(maze)
  if stats.num_shortest != 1:
    raise ValueError("The maze has no unique shortest path "
                     f"({stats.num_shortest} found, capped at 2).")
  solution = np.array(maze, copy=True)
  solution[stats.on_path] = PATH
  return solution


def check_example(maze: np.ndarray, solution: np.ndarray,
                  min_steps: int = MIN_STEPS) -> list[str]:
  """Everything wrong with one (maze, solution) pair; empty when it is valid."""
  maze, solution = np.asarray(maze), np.asarray(solution)
  problems = []
  if maze.shape != (NUM_CELLS,) or solution.shape != (NUM_CELLS,):
    return [f"shapes {maze.shape} and {solution.shape}, expected ({NUM_CELLS},)"]
  if not np.isin(maze, (WALL, OPEN, START, GOAL)).all():
    problems.append("the maze has tokens other than wall, open, S and G")
  for token in (START, GOAL):
    if (maze == token).sum() != 1:
      problems.append(f"the maze has {(maze == token).sum()} {_CHARS[token]!r}")
  if problems:
    return problems
  stats = shortest_path_stats(maze)
  if stats.num_shortest != 1:
    problems.append(f"{stats.num_shortest} shortest paths (capped at 2)")
  if stats.steps < min_steps:
    problems.append(f"shortest path of {stats.steps} steps < {min_steps}")
  expected = np.where(stats.on_path, PATH, maze)
  if not np.array_equal(solution, expected):
    problems.append(f"the solution differs from the shortest path in "
                    f"{int((solution != expected).sum())} cells")
  return problems


def _style(rng: np.random.Generator) -> tuple[float, int]:
  """(p_newest, loops) of one maze; p_newest < 0 means a Wilson tree."""
  if rng.random() < _WILSON_SHARE:
    return -1.0, int(rng.integers(_WILSON_LOOPS[0], _WILSON_LOOPS[1] + 1))
  p_newest = float(rng.uniform(*_GROWING_P_NEWEST))
  return p_newest, int(rng.integers(_GROWING_LOOPS[0], _GROWING_LOOPS[1] + 1))


def _grid_tokens(grid: np.ndarray, start: int, goal: int) -> np.ndarray:
  maze = np.where(grid == 1, OPEN, WALL).astype(np.int32)
  maze[start], maze[goal] = START, GOAL
  return maze


def generate(seed: int, split: str, num: int, min_steps: int = MIN_STEPS,
             exclude: set[bytes] | None = None
             ) -> tuple[np.ndarray, np.ndarray, int]:
  """`num` mazes of one split, with their solutions.

  Maze i depends only on (seed, split, i) and on which earlier mazes it would
  duplicate, so builds are reproducible.

  Args:
    seed: base seed of the build.
    split: "train" or "test"; the two draw from separate streams.
    num: number of mazes.
    min_steps: least number of steps of every shortest path.
    exclude: `canonical_key`s that may not be produced (up to symmetry); the
      keys of the new mazes are added to it.

  Returns:
    (mazes, solutions, candidates): int32[num, 900] token grids and the number
      of candidate grids drawn.
  """
  exclude = set() if exclude is None else exclude
  mazes = np.zeros((num, NUM_CELLS), np.int32)
  candidates = 0
  for i in range(num):
    rng = np.random.default_rng([seed, _SPLIT_STREAM[split], i])
    p_newest, loops = _style(rng)
    for _ in range(_MAX_ATTEMPTS_PER_MAZE):
      candidates += 1
      grid, start, goal = maze_kernels.sample_maze(
          np.uint32(rng.integers(2**32)), p_newest, loops, min_steps,
          _ENDPOINT_TRIES)
      if start < 0:
        continue
      maze = _grid_tokens(grid, start, goal)
      key = canonical_key(maze)
      if key in exclude:
        continue
      exclude.add(key)
      mazes[i] = maze
      break
    else:
      raise RuntimeError(f"No maze found for {split} #{i} in "
                         f"{_MAX_ATTEMPTS_PER_MAZE} attempts.")
  solutions = np.stack([solve(m) for m in mazes]) if num else mazes.copy()
  return mazes, solutions, candidates


def write_csv(path: str | pathlib.Path, mazes: np.ndarray,
              solutions: np.ndarray) -> None:
  """Writes a `maze,solution` CSV of 900-character strings."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="", encoding="ascii") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(COLUMNS)
    for maze, solution in zip(mazes, solutions):
      writer.writerow((from_tokens(maze), from_tokens(solution)))


def read_csv(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads a `maze,solution` CSV into two int32[n, 900] token arrays."""
  with open(path, newline="", encoding="ascii") as f:
    reader = csv.reader(f)
    header = next(reader)
    if tuple(header) != COLUMNS:
      raise ValueError(f"{path}: expected columns {COLUMNS}, got {header}.")
    rows = list(reader)
  return (to_tokens([r[0] for r in rows]), to_tokens([r[1] for r in rows]))


def load_split(split: str, data_dir: str | pathlib.Path | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """(mazes, solutions) of the committed "train" or "test" split.

  Returns int32[n, 900] token ids (see `VOCAB`). Training code should apply
  `augment` to the train split only.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  return read_csv(pathlib.Path(data_dir or DATA_DIR) / f"{split}.csv")


def path_length_summary(solutions: np.ndarray) -> dict[str, float]:
  """Min, quartiles, mean and max of path steps (`o` cells + 1) per solution."""
  steps = (np.asarray(solutions) == PATH).sum(axis=-1) + 1
  q = np.percentile(steps, [0, 25, 50, 75, 100])
  return {"min": int(q[0]), "p25": float(q[1]), "median": float(q[2]),
          "p75": float(q[3]), "max": int(q[4]), "mean": float(steps.mean())}


def build(out_dir: str | pathlib.Path, seed: int = DEFAULT_SEED,
          num_train: int = 1000, num_test: int = 1000,
          min_steps: int = MIN_STEPS, log=print) -> dict[str, object]:
  """Generates and writes `train.csv` and `test.csv`; returns a summary.

  The test split is drawn first; no train maze equals a test maze or another
  train maze under any of the 8 dihedral transforms.
  """
  out_dir = pathlib.Path(out_dir)
  summary: dict[str, object] = {"seed": seed, "min_steps": min_steps}
  keys: set[bytes] = set()
  for split, num in (("test", num_test), ("train", num_train)):
    began = time.perf_counter()
    mazes, solutions, candidates = generate(seed, split, num, min_steps, keys)
    write_csv(out_dir / f"{split}.csv", mazes, solutions)
    seconds = time.perf_counter() - began
    summary[split] = {"num": num, "candidates": candidates,
                      "seconds": round(seconds, 2),
                      "steps": path_length_summary(solutions) if num else {}}
    log(f"{split}: {num} mazes from {candidates} candidates in "
        f"{seconds:.1f} s -> {out_dir / f'{split}.csv'}")
  return summary


def iter_problems(mazes: Iterable[np.ndarray], solutions: Iterable[np.ndarray],
                  min_steps: int = MIN_STEPS) -> Iterable[tuple[int, list[str]]]:
  """(index, problems) of every invalid pair, as from `check_example`."""
  for i, (maze, solution) in enumerate(zip(mazes, solutions)):
    problems = check_example(maze, solution, min_steps)
    if problems:
      yield i, problems
