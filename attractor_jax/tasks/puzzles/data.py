"""Puzzle data for training and evaluation: token arrays, tiers, a stream.

A `PuzzleSet` is one split of a committed puzzle data set as model tokens
(`attractor_jax.puzzles`): inputs (the puzzle) and labels (the solved grid),
both int32 `[n, seq_len]`, with a difficulty tier per puzzle. Sudoku tiers
come from the committed ratings (`sudoku.tier_of`); maze tiers from the
length of the shortest path (`MAZE_TIERS`).

`TrainStream` yields training batches forever: a fresh permutation of the
split every epoch and a fresh random validity-preserving rearrangement of
every puzzle every time it is drawn (training split only). Its position is a
small JSON dict (`get_state` / `set_state`), and the batches after a
position depend only on the seed and the position, so a resumed run sees
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from attractor_jax import errors

PUZZLES = ("sudoku", "maze")
SPLITS = ("train", "test")
# Maze tiers by path steps (every committed maze has more than 110).
MAZE_TIERS = ("111-120", "121-140", "141+")
_MAZE_TIER_BOUNDS = (111, 121, 141)


@dataclasses.dataclass(frozen=True)
class PuzzleSet:
  """One split as tokens.

  Attributes:
    puzzle: "sudoku" or "maze".
    inputs: int32 `[n, seq_len]` puzzle tokens.
    labels: int32 `[n, seq_len]` solution tokens.
    tiers: str `[n]`, each puzzle's difficulty tier.
    tier_names: the tiers in order of difficulty.
  """

  puzzle: str
  inputs: np.ndarray
  labels: np.ndarray
  tiers: np.ndarray
  tier_names: tuple[str, ...]

  def __len__(self) -> int:
    return int(self.inputs.shape[0])

  @property
  def seq_len(self) -> int:
    return int(self.inputs.shape[1])

  def answer_mask(self) -> np.ndarray:
    """bool `[n, seq_len]`: the cells a solver has to fill (Sudoku blanks,
    maze open cells), as opposed to the givens copied from the input."""
    return self.inputs == fill_token(self.puzzle)

  def subset(self, count: Optional[int]) -> "PuzzleSet":
    """The first `count` puzzles (all if None or larger)."""
    if count is None or count >= len(self):
      return self
    return self._rows(np.arange(count))

  def spread(self, count: Optional[int]) -> "PuzzleSet":
    """`count` puzzles evenly spaced over the split (all if None or
    larger). The committed test splits are ordered by tier, so a spread
    covers every tier where a prefix would hold only the easiest."""
    if count is None or count >= len(self):
      return self
    return self._rows(np.linspace(0, len(self) - 1, count).astype(int))

  def _rows(self, index: np.ndarray) -> "PuzzleSet":
    return dataclasses.replace(self, inputs=self.inputs[index],
                               labels=self.labels[index],
                               tiers=self.tiers[index])


def check_puzzle(puzzle: str) -> str:
  if puzzle not in PUZZLES:
    raise errors.ConfigError(
        f"Unknown puzzle {puzzle!r}; expected one of {', '.join(PUZZLES)}.\n"
        "Pass --config.data.puzzle=sudoku or maze.")
  return puzzle


def fill_token(puzzle: str) -> int:
  """The input token of cells the model must decide."""
  if check_puzzle(puzzle) == "sudoku":
    from attractor_jax.puzzles import sudoku
    return sudoku.BLANK
  from attractor_jax.puzzles import maze
  return maze.OPEN


def maze_tier(path_steps: np.ndarray) -> np.ndarray:
  """The `MAZE_TIERS` name of each path length (in steps)."""
  index = np.searchsorted(_MAZE_TIER_BOUNDS, path_steps, side="right") - 1
  return np.asarray(MAZE_TIERS, dtype=object)[np.clip(index, 0, None)]


def load(puzzle: str, split: str) -> PuzzleSet:
  """The committed `split` ("train" or "test") of `puzzle` as tokens."""
  check_puzzle(puzzle)
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}.")
  if puzzle == "sudoku":
    from attractor_jax.puzzles import sudoku
    data = sudoku.load_split(split)
    tiers = np.asarray([sudoku.tier_of(r) for r in data.ratings], object)
    return PuzzleSet("sudoku", sudoku.to_tokens(data.puzzles),
                     sudoku.to_tokens(data.solutions), tiers, sudoku.TIERS)
  from attractor_jax.puzzles import maze
  mazes, solutions = maze.load_split(split)
  steps = (solutions == maze.PATH).sum(axis=1) + 1
  return PuzzleSet("maze", mazes.astype(np.int32),
                   solutions.astype(np.int32), maze_tier(steps), MAZE_TIERS)


def augment(puzzle: str, inputs: np.ndarray, labels: np.ndarray,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Independent random validity-preserving rearrangements of token rows
  (Sudoku: digits, bands, stacks, rows, columns, transpose; maze: the eight
  symmetries of the square)."""
  if check_puzzle(puzzle) == "sudoku":
    from attractor_jax.puzzles import sudoku
    # Tokens are digits + 1, so rearrange the digit grids.
    grid_in, grid_out = sudoku.augment(inputs - 1, labels - 1, rng)
    return (grid_in.astype(np.int32) + 1, grid_out.astype(np.int32) + 1)
  from attractor_jax.puzzles import maze
  out_in, out_labels = maze.augment(inputs, labels, rng)
  return out_in.astype(np.int32), out_labels.astype(np.int32)


class TrainStream:
  """Endless training batches {"inputs", "labels"} of a `PuzzleSet`.

  Multi-host: every process draws the same global batch of
  `batch_size * shard_count` rows and keeps rows
  `[shard_index * batch_size, (shard_index + 1) * batch_size)`, so the
  global batch (the processes' rows stacked in process order) does not
  depend on how many processes share it.

  Args:
    data: the training split.
    batch_size: rows per batch of this process.
    seed: fixes the epoch orders and the rearrangements.
    augment: draw a random rearrangement of every row (training only).
    shard_index, shard_count: this process and the number of processes
      (typically `jax.process_index()`, `jax.process_count()`).
  """

  def __init__(self, data: PuzzleSet, batch_size: int, seed: int, *,
               augment: bool = True, shard_index: int = 0,
               shard_count: int = 1):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1; got {batch_size}.")
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index {shard_index} is outside "
                       f"[0, {shard_count}).")
    self._data = data
    self._batch_size = batch_size
    self._global_batch = batch_size * shard_count
    self._rows = slice(shard_index * batch_size,
                       (shard_index + 1) * batch_size)
    self._seed = seed
    self._augment = augment
    self._epoch = 0
    self._position = 0          # rows of the epoch's order already used

  def __iter__(self) -> "TrainStream":
    return self

  def _order(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self._seed, epoch, 0])
    return rng.permutation(len(self._data))

  def __next__(self) -> dict[str, np.ndarray]:
    rows, need = [], self._global_batch
    rng = np.random.default_rng([self._seed, self._epoch, 1 + self._position])
    while need:
      order = self._order(self._epoch)
      take = order[self._position:self._position + need]
      rows.append(take)
      need -= len(take)
      self._position += len(take)
      if self._position == len(order):
        self._epoch, self._position = self._epoch + 1, 0
    index = np.concatenate(rows)
    inputs, labels = self._data.inputs[index], self._data.labels[index]
    if self._augment:
      inputs, labels = augment(self._data.puzzle, inputs, labels, rng)
    return {"inputs": inputs[self._rows], "labels": labels[self._rows]}

  def get_state(self) -> dict[str, Any]:
    return {"epoch": self._epoch, "position": self._position}

  def set_state(self, state: dict[str, Any]) -> None:
    self._epoch = int(state["epoch"])
    self._position = int(state["position"])
