"""Seeded reasoning problems of any size: prefix sums and perfect mazes.

    prefix_sums(num, n, seed) -> Examples(inputs float32 [num, n, 1],
                                          targets int32 [num, n])
    mazes(num, cells, seed)   -> Examples(inputs float32 [num, H, W, 3],
                                          targets int32 [num, H, W])

Prefix sums: random bits b (inputs +-1), targets the running parity
b_0 ^ ... ^ b_i. Mazes: a perfect maze on a `cells x cells` lattice (H = W =
2 cells + 1 pixels, walls between cells), drawn by a randomised depth-first
search; start S and goal G are two distinct random cells. Inputs are the
channels (open, S, G); targets are 1 on the pixels of the S -> G path, which
is unique in a perfect maze.

Every set is a function of (num, size, seed) alone, bit for bit on every
machine: NumPy's PCG64 for the bits, numba's MT19937 (NumPy's legacy stream)
for the mazes. `test_set` fixes one seed per size; `TrainStream` draws fresh
instances at the training size from (seed, step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numba
import numpy as np

PROBLEMS = ("prefix_sums", "mazes")
# Test seeds live far from the training streams' (seed, step) words.
_TEST_SEED = 1_000_003
_MAZE_SEED_MOD = 2 ** 31


class Examples(NamedTuple):
  """Inputs (float32, channels last) and per-position class targets (int32)."""

  inputs: np.ndarray
  targets: np.ndarray


def prefix_sums(num: int, n: int, seed: int) -> Examples:
  """`num` strings of `n` random bits and their running parities."""
  rng = np.random.default_rng([seed, n, 7])
  bits = rng.integers(0, 2, size=(num, n), dtype=np.int32)
  targets = np.bitwise_xor.accumulate(bits, axis=1).astype(np.int32)
  inputs = (2.0 * bits - 1.0).astype(np.float32)[..., None]
  return Examples(inputs, targets)


@numba.njit(cache=True)
def _maze_batch(num, cells, seed):
  """Walls by randomised DFS, S and G two distinct cells, path by BFS."""
  np.random.seed(seed)
  size = 2 * cells + 1
  ncell = cells * cells
  grid = np.zeros((num, size, size), np.uint8)
  start = np.zeros((num, size, size), np.uint8)
  goal = np.zeros((num, size, size), np.uint8)
  path = np.zeros((num, size, size), np.uint8)
  visited = np.zeros(ncell, np.uint8)
  stack = np.zeros(ncell, np.int32)
  parent = np.zeros(size * size, np.int32)
  seen = np.zeros(size * size, np.uint8)
  queue = np.zeros(size * size, np.int32)
  choices = np.zeros(4, np.int32)
  dr = np.array([-1, 1, 0, 0])
  dc = np.array([0, 0, -1, 1])
  for k in range(num):
    visited[:] = 0
    first = min(int(np.random.random() * ncell), ncell - 1)
    visited[first] = 1
    stack[0] = first
    top = 1
    grid[k, 2 * (first // cells) + 1, 2 * (first % cells) + 1] = 1
    while top > 0:
      u = stack[top - 1]
      r, c = u // cells, u % cells
      count = 0
      for d in range(4):
        rr, cc = r + dr[d], c + dc[d]
        if (0 <= rr < cells and 0 <= cc < cells
            and visited[rr * cells + cc] == 0):
          choices[count] = d
          count += 1
      if count == 0:
        top -= 1
        continue
      d = choices[min(int(np.random.random() * count), count - 1)]
      rr, cc = r + dr[d], c + dc[d]
      visited[rr * cells + cc] = 1
      grid[k, 2 * r + 1 + dr[d], 2 * c + 1 + dc[d]] = 1
      grid[k, 2 * rr + 1, 2 * cc + 1] = 1
      stack[top] = rr * cells + cc
      top += 1
    a = min(int(np.random.random() * ncell), ncell - 1)
    b = min(int(np.random.random() * (ncell - 1)), ncell - 2)
    if b >= a:
      b += 1
    source = (2 * (a // cells) + 1) * size + 2 * (a % cells) + 1
    target = (2 * (b // cells) + 1) * size + 2 * (b % cells) + 1
    start[k, source // size, source % size] = 1
    goal[k, target // size, target % size] = 1
    seen[:] = 0
    seen[source] = 1
    queue[0] = source
    head, tail = 0, 1
    while head < tail:
      u = queue[head]
      head += 1
      if u == target:
        break
      r, c = u // size, u % size
      for d in range(4):
        rr, cc = r + dr[d], c + dc[d]
        if 0 <= rr < size and 0 <= cc < size and grid[k, rr, cc] == 1:
          v = rr * size + cc
          if seen[v] == 0:
            seen[v] = 1
            parent[v] = u
            queue[tail] = v
            tail += 1
    u = target
    while u != source:
      path[k, u // size, u % size] = 1
      u = parent[u]
    path[k, source // size, source % size] = 1
  return grid, start, goal, path


def mazes(num: int, cells: int, seed: int) -> Examples:
  """`num` perfect mazes of `cells x cells` cells and their S -> G paths."""
  if cells < 2:
    raise ValueError(f"A maze needs at least 2x2 cells; got {cells}.")
  grid, start, goal, path = _maze_batch(num, cells,
                                        int(seed) % _MAZE_SEED_MOD)
  inputs = np.stack([grid, start, goal], axis=-1).astype(np.float32)
  return Examples(inputs, path.astype(np.int32))


def generate(problem: str, num: int, size: int, seed: int) -> Examples:
  """`num` instances of `problem` at `size` (bits, or maze cells)."""
  if problem == "prefix_sums":
    return prefix_sums(num, size, seed)
  if problem == "mazes":
    return mazes(num, size, seed)
  raise ValueError(f"Unknown problem {problem!r}; expected one of "
                   f"{', '.join(PROBLEMS)}.")


def test_seed(size: int) -> int:
  """The fixed seed of the test set at `size`."""
  return _TEST_SEED + int(size)


def test_set(problem: str, size: int, num: int) -> Examples:
  """The test set at `size`: the same `num` instances on every call, and
  the first instances of a larger set are those of a smaller one."""
  return generate(problem, num, size, test_seed(size))


def ndim(problem: str) -> int:
  """Spatial axes of a problem's inputs (1: strings, 2: grids)."""
  return 1 if problem == "prefix_sums" else 2


def in_channels(problem: str) -> int:
  return 1 if problem == "prefix_sums" else 3


@dataclasses.dataclass
class TrainStream:
  """Endless training batches {"inputs", "targets"} at one size.

  Batch i holds `batch_size` fresh instances drawn from (seed, i), so a
  resumed run (position restored by `set_state`) draws what an
  uninterrupted one would, and no training instance repeats a test seed.
  """

  problem: str
  size: int
  batch_size: int
  seed: int
  position: int = 0

  def __iter__(self) -> "TrainStream":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    # One int word per (seed, step): far from the test seeds for any seed
    # and step a run reaches.
    word = int(np.random.SeedSequence([self.seed, self.position, 11])
               .generate_state(1)[0]) % (_TEST_SEED - 1_000)
    self.position += 1
    examples = generate(self.problem, self.batch_size, self.size, word)
    return {"inputs": examples.inputs, "targets": examples.targets}

  def get_state(self) -> dict[str, Any]:
    return {"position": self.position}

  def set_state(self, state: dict[str, Any]) -> None:
    self.position = int(state["position"])
