"""Builds the Sudoku-Extreme CSVs (the `build-sudoku` command).

The work is cut into numbered units, each a function of (seed, index) alone:

* one local-search chain (`sudoku_core.climb`) from a random grid: its
  accepted puzzles, hardest last, form one cluster;
* `fresh` random minimal puzzles, each from its own random grid and each its
  own cluster (most are easy: that is where the easy tier comes from).

Every puzzle gets the official rating (`sudoku.rate` defaults). Units are
then taken in index order: unit i goes to the train split when i % 6 == 5
and train still has room, or when the test split is full; to the test split
otherwise. So a cluster never straddles the splits. From each cluster,
puzzles are kept while their tier has room in the split and the cluster's
cap for that tier, if their clues differ in at least `min_distance` cells
from the cluster's puzzles already kept, and if no equivalent puzzle (same
`sudoku.canonical`) is in either split. The build stops when every tier of
both splits is full, so the result depends on the arguments only, never on
--workers or timing.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import pathlib
import sys
import time

import numpy as np

from attractor_jax.puzzles import sudoku
from attractor_jax.puzzles import sudoku_core as core

# Share of each tier (sudoku.TIERS order) in both splits.
TIER_FRACTIONS = (0.2, 0.28, 0.32, 0.2)
TRAIN_EVERY = 6
_MASK64 = (1 << 64) - 1


@dataclasses.dataclass(frozen=True)
class Effort:
  """How hard each unit searches (see `sudoku_core.climb`)."""
  steps: int = 4000          # local-search steps of a chain at most
  cut_step: int = 1500       # a chain not yet extreme by then stops
  stop_count: int = 16       # a chain stops after this many extreme puzzles
  isomorphs: int = 16        # rearrangements per rating during the search
  fresh: int = 4             # random minimal puzzles per unit
  caps: tuple = (2, 4, 8, 16)  # puzzles a cluster may give to each tier
  min_distance: int = 4      # clue cells in which a cluster's puzzles differ


def tier_quotas(n: int, fractions=TIER_FRACTIONS) -> list[int]:
  """Puzzles of each tier in a split of n (cumulative rounding)."""
  fractions = np.asarray(fractions, np.float64)
  bounds = np.round(n * np.cumsum(fractions / fractions.sum())).astype(int)
  bounds[-1] = n
  return list(np.diff(np.concatenate([[0], bounds])))


def unit_seed(seed: int, index: int, part: int = 0) -> int:
  """A 64-bit seed for part `part` of unit `index` (splitmix64 mixing)."""
  z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9
       + part * 0x94D049BB133111EB + 1) & _MASK64
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
  return z ^ (z >> 31)


def _official(puzzle) -> float:
  return float(core.rate(puzzle, sudoku.DEFAULT_ISOMORPHS,
                         np.uint64(sudoku.DEFAULT_SEED)))


def run_unit(seed: int, index: int, effort: Effort) -> list[tuple]:
  """Clusters of unit `index`: [(puzzles [k, 81], solution, ratings [k])]."""
  size = effort.steps + 1
  puzzles = np.zeros((size, 81), np.int8)
  ratings = np.zeros(size)
  at_step = np.zeros(size, np.int64)
  n, grid = core.climb(np.uint64(unit_seed(seed, index)), effort.steps,
                       effort.isomorphs, float(sudoku.TIER_BOUNDS[-1]),
                       effort.stop_count, effort.cut_step, puzzles, ratings,
                       at_step)
  chain = puzzles[:n].copy()
  clusters = [(chain, grid, np.array([_official(p) for p in chain]))]
  for part in range(1, effort.fresh + 1):
    state = np.full(1, unit_seed(seed, index, part), np.uint64)
    grid = core.random_grid(state)
    puzzle = grid.copy()
    core.minimise(puzzle, grid, state)
    clusters.append((puzzle[None], grid, np.array([_official(puzzle)])))
  return clusters


def _run_unit_args(args):
  return run_unit(*args)


def _units(seed: int, effort: Effort, workers: int):
  """Yields run_unit(seed, i) for i = 0, 1, ... in order."""
  if workers <= 1:
    index = 0
    while True:
      yield run_unit(seed, index, effort)
      index += 1
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, context) as pool:
    pending = {}
    submitted = 0
    wanted = 0
    try:
      while True:
        while submitted < wanted + 2 * workers:
          pending[submitted] = pool.submit(_run_unit_args,
                                           (seed, submitted, effort))
          submitted += 1
        yield pending.pop(wanted).result()
        wanted += 1
    finally:
      pool.shutdown(wait=False, cancel_futures=True)


class _Harvest:
  """The puzzles kept so far, per split and tier."""

  def __init__(self, n_train: int, n_test: int, effort: Effort, fractions):
    self.effort = effort
    self.quotas = {"train": tier_quotas(n_train, fractions),
                   "test": tier_quotas(n_test, fractions)}
    self.rows = {split: [[] for _ in sudoku.TIERS] for split in self.quotas}
    self.seen = set()

  def full(self, split: str) -> bool:
    return all(len(rows) >= quota for rows, quota
               in zip(self.rows[split], self.quotas[split]))

  def split_of(self, index: int) -> str:
    if self.full("test") or (index % TRAIN_EVERY == TRAIN_EVERY - 1
                             and not self.full("train")):
      return "train"
    return "test"

  def add_cluster(self, split, puzzles, solution, ratings) -> None:
    kept = []
    per_tier = [0] * len(sudoku.TIERS)
    for puzzle, rating in zip(puzzles, ratings):
      tier = sudoku.TIERS.index(sudoku.tier_of(rating))
      if (len(self.rows[split][tier]) >= self.quotas[split][tier]
          or per_tier[tier] >= self.effort.caps[tier]):
        continue
      clues = puzzle != 0
      if any(np.count_nonzero(clues != other) < self.effort.min_distance
             for other in kept):
        continue
      form = sudoku.canonical(puzzle)
      if form in self.seen:
        continue
      self.seen.add(form)
      kept.append(clues)
      per_tier[tier] += 1
      self.rows[split][tier].append(
          (sudoku.to_text(puzzle), sudoku.to_text(solution), float(rating)))

  def counts(self) -> str:
    return "  ".join(
        f"{split} " + "/".join(str(len(rows)) for rows in self.rows[split])
        for split in self.rows)


def build(out: pathlib.Path, seed: int, n_train: int, n_test: int,
          effort: Effort = Effort(), workers: int = 1,
          fractions=TIER_FRACTIONS, log=sys.stderr) -> dict:
  """Generates and writes out/train.csv and out/test.csv; returns statistics.

  `fractions` are the shares of the tiers (sudoku.TIERS order) in each split.
  """
  start = time.time()
  harvest = _Harvest(n_train, n_test, effort, fractions)
  units = 0
  for index, clusters in enumerate(_units(seed, effort, workers)):
    split = harvest.split_of(index)
    for puzzles, solution, ratings in clusters:
      harvest.add_cluster(split, puzzles, solution, ratings)
    units = index + 1
    if log is not None and units % 10 == 0:
      print(f"[{time.time() - start:7.0f} s] {units} units: "
            f"{harvest.counts()} (easy/medium/hard/extreme)", file=log,
            flush=True)
    if harvest.full("train") and harvest.full("test"):
      break
  out.mkdir(parents=True, exist_ok=True)
  for split in ("train", "test"):
    rows = sorted(row for tier in harvest.rows[split] for row in tier)
    rows.sort(key=lambda row: row[2])
    lines = [sudoku.CSV_HEADER] + [f"{p},{s},{r:.5f}" for p, s, r in rows]
    path = out / f"{split}.csv"
    tmp = path.with_suffix(".csv.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="ascii")
    tmp.replace(path)
  stats = {"units": units, "seconds": time.time() - start,
           "counts": harvest.counts()}
  if log is not None:
    print(f"done: {stats}", file=log, flush=True)
  return stats


def add_arguments(parser) -> None:
  """The arguments of `build-sudoku`."""
  defaults = Effort()
  parser.add_argument("--out", required=True, type=pathlib.Path,
                      help="folder for train.csv and test.csv")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--train", type=int, default=1000,
                      help="puzzles in train.csv")
  parser.add_argument("--test", type=int, default=5000,
                      help="puzzles in test.csv")
  parser.add_argument("--steps", type=int, default=defaults.steps,
                      help="local-search steps per chain at most")
  parser.add_argument("--cut-step", type=int, default=defaults.cut_step,
                      help="a chain with no extreme puzzle by then stops")
  parser.add_argument("--tiers", default=",".join(map(str, TIER_FRACTIONS)),
                      help="shares of the easy,medium,hard,extreme tiers")
  parser.add_argument("--workers", type=int, default=1,
                      help="processes (the output does not depend on it)")


def main(args) -> int:
  """Runs `build-sudoku` from parsed arguments."""
  try:
    fractions = [float(x) for x in args.tiers.split(",")]
  except ValueError:
    fractions = []
  if (len(fractions) != len(sudoku.TIERS) or min(fractions) < 0
      or sum(fractions) <= 0):
    print(f"error: --tiers needs {len(sudoku.TIERS)} shares >= 0, "
          f"comma-separated, got {args.tiers!r}", file=sys.stderr)
    return 2
  if args.train < 0 or args.test < 0 or args.workers < 1 or args.steps < 0:
    print("error: --train, --test and --steps must be >= 0, --workers >= 1",
          file=sys.stderr)
    return 2
  effort = dataclasses.replace(Effort(), steps=args.steps,
                               cut_step=args.cut_step)
  build(args.out, args.seed, args.train, args.test, effort, args.workers,
        fractions)
  return 0
