"""Cheap rules that guess Maze-Hard path cells, to show the data does not leak.

A generator that makes the shortest path unique by walling off the
alternatives beside it leaves walls hugging the path, and a model can then
read the path off locally. Each rule here predicts a set of path cells from
the maze alone (int[n, 900] token grids, `maze.VOCAB`); `leakage_table`
scores them against the solutions. Single-pass local rules should score near
zero exact accuracy. Dead-end filling is a real solving procedure (many
sequential sweeps), reported for scale: it cannot choose between loops, so it
does not solve these mazes either.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from attractor_jax.puzzles import maze as maze_lib
from attractor_jax.puzzles import maze_kernels

_SIZE = maze_lib.SIZE


def _square(mazes: np.ndarray) -> np.ndarray:
  mazes = np.asarray(mazes)
  return mazes.reshape(mazes.shape[:-1] + (_SIZE, _SIZE))


def _neighbours(free: np.ndarray) -> tuple[np.ndarray, ...]:
  """(up, down, left, right) of a bool [..., 30, 30] grid; off-grid is False."""
  pad = np.pad(free, [(0, 0)] * (free.ndim - 2) + [(1, 1), (1, 1)])
  return (pad[..., :-2, 1:-1], pad[..., 2:, 1:-1],
          pad[..., 1:-1, :-2], pad[..., 1:-1, 2:])


def _free_and_candidates(mazes):
  square = _square(mazes)
  return square != maze_lib.WALL, square == maze_lib.OPEN


def all_open(mazes: np.ndarray) -> np.ndarray:
  """Baseline: every open cell is on the path."""
  return _free_and_candidates(mazes)[1].reshape(np.shape(mazes))


def corridor(mazes: np.ndarray) -> np.ndarray:
  """Open cells with exactly two non-wall neighbours."""
  free, candidates = _free_and_candidates(mazes)
  degree = sum(n.astype(np.int32) for n in _neighbours(free))
  return (candidates & (degree == 2)).reshape(np.shape(mazes))


def wall_hugged(mazes: np.ndarray) -> np.ndarray:
  """Open cells with walls (or the edge) on both opposite sides of one axis."""
  free, candidates = _free_and_candidates(mazes)
  up, down, left, right = _neighbours(free)
  hugged = (~up & ~down) | (~left & ~right)
  return (candidates & hugged).reshape(np.shape(mazes))


def not_dead_end(mazes: np.ndarray) -> np.ndarray:
  """Open cells with at least two non-wall neighbours."""
  free, candidates = _free_and_candidates(mazes)
  degree = sum(n.astype(np.int32) for n in _neighbours(free))
  return (candidates & (degree >= 2)).reshape(np.shape(mazes))


def bounding_box(mazes: np.ndarray) -> np.ndarray:
  """Open cells inside the rectangle spanned by S and G."""
  square = _square(mazes)
  flat = square.reshape(-1, _SIZE * _SIZE)
  start = np.argmax(flat == maze_lib.START, axis=-1)
  goal = np.argmax(flat == maze_lib.GOAL, axis=-1)
  rows, cols = np.divmod(np.stack([start, goal]), _SIZE)
  r = np.arange(_SIZE)
  in_rows = ((r >= rows.min(0)[:, None]) & (r <= rows.max(0)[:, None]))
  in_cols = ((r >= cols.min(0)[:, None]) & (r <= cols.max(0)[:, None]))
  box = in_rows[:, :, None] & in_cols[:, None, :]
  return (box.reshape(square.shape) & (square == maze_lib.OPEN)).reshape(
      np.shape(mazes))


def dead_end_filling(mazes: np.ndarray, sweeps: int | None = None) -> np.ndarray:
  """Open cells left after filling dead ends (S and G are never filled).

  Each sweep fills, all at once, every open cell with at most one non-wall
  neighbour. `sweeps=None` repeats until nothing changes: what remains is the
  path plus every loop hanging off it.
  """
  free, candidates = _free_and_candidates(mazes)
  free, candidates = free.copy(), candidates.copy()
  done = 0
  while sweeps is None or done < sweeps:
    degree = sum(n.astype(np.int32) for n in _neighbours(free))
    dead = candidates & (degree <= 1)
    if not dead.any():
      break
    free &= ~dead
    candidates &= ~dead
    done += 1
  return candidates.reshape(np.shape(mazes))


def _sweeps(k: int) -> Callable[[np.ndarray], np.ndarray]:
  return lambda mazes: dead_end_filling(mazes, k)


# name -> (rule, description). The first five are single-pass local rules.
RULES: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str]] = {
    "all_open": (all_open, "every open cell (baseline)"),
    "corridor": (corridor, "open cells with exactly 2 open neighbours"),
    "wall_hugged": (wall_hugged, "walls on both sides of one axis"),
    "not_dead_end": (not_dead_end, "open cells with >= 2 open neighbours"),
    "bounding_box": (bounding_box, "open cells in the S-G rectangle"),
    "dead_end_fill_8": (_sweeps(8), "8 sweeps of dead-end filling"),
    "dead_end_fill_32": (_sweeps(32), "32 sweeps of dead-end filling"),
    "dead_end_fill": (dead_end_filling, "dead-end filling to convergence"),
}
SINGLE_PASS_RULES = ("all_open", "corridor", "wall_hugged", "not_dead_end",
                     "bounding_box")


@dataclasses.dataclass(frozen=True)
class RuleScore:
  """Cell-level scores of a rule's path cells, over all mazes together."""
  rule: str
  precision: float
  recall: float
  f1: float
  exact: float  # share of mazes whose path cells are predicted exactly


def score(name: str, predicted: np.ndarray, solutions: np.ndarray) -> RuleScore:
  """Scores bool[n, 900] predicted path cells against solution grids."""
  truth = np.asarray(solutions) == maze_lib.PATH
  predicted = np.asarray(predicted, bool)
  hits = (predicted & truth).sum()
  precision = hits / max(predicted.sum(), 1)
  recall = hits / max(truth.sum(), 1)
  f1 = 2 * precision * recall / max(precision + recall, 1e-12)
  exact = (predicted == truth).all(axis=-1).mean()
  return RuleScore(name, float(precision), float(recall), float(f1),
                   float(exact))


def leakage_table(mazes: np.ndarray, solutions: np.ndarray,
                  rules: tuple[str, ...] | None = None) -> list[RuleScore]:
  """Scores of `RULES` (or the named subset) on a set of mazes."""
  return [score(name, RULES[name][0](mazes), solutions)
          for name in (rules or tuple(RULES))]


def format_table(scores: list[RuleScore]) -> str:
  """A markdown table of rule scores."""
  lines = ["| rule | what it predicts | precision | recall | cell F1 | exact |",
           "| --- | --- | ---: | ---: | ---: | ---: |"]
  for s in scores:
    lines.append(f"| `{s.rule}` | {RULES[s.rule][1]} | {s.precision:.3f} | "
                 f"{s.recall:.3f} | {s.f1:.3f} | {s.exact:.3f} |")
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class DetourStats:
  """How much the loops matter for the shortest path.

  Attributes:
    share_with_detour: share of mazes in which some path cell can be avoided
      by another S-to-G route.
    bypassable: mean share of a maze's path cells that can be avoided.
    median_extra_steps: median, over mazes with a detour, of the fewest
      extra steps any route avoiding one path cell takes.
  """
  share_with_detour: float
  bypassable: float
  median_extra_steps: float


def detour_stats(mazes: np.ndarray, solutions: np.ndarray) -> DetourStats:
  """Blocks each path cell in turn and measures the best remaining route."""
  with_detour, bypassable, extra = 0, [], []
  for maze, solution in zip(np.asarray(mazes), np.asarray(solutions)):
    start = int(np.argmax(maze == maze_lib.START))
    goal = int(np.argmax(maze == maze_lib.GOAL))
    path = np.flatnonzero(solution == maze_lib.PATH)
    steps = path.size + 1
    best, avoidable = None, 0
    for cell in path:
      open_cells = (maze != maze_lib.WALL).astype(np.uint8)
      open_cells[cell] = 0
      dist, _ = maze_kernels.bfs(open_cells, start)
      if dist[goal] >= 0:
        avoidable += 1
        best = dist[goal] if best is None else min(best, dist[goal])
    bypassable.append(avoidable / path.size)
    if best is not None:
      with_detour += 1
      extra.append(best - steps)
  return DetourStats(with_detour / len(bypassable), float(np.mean(bypassable)),
                     float(np.median(extra)) if extra else float("nan"))
