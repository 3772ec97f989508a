"""The puzzle data commands: `python -m attractor_jax.puzzles <command>`.

`build-maze` generates Maze-Hard, `build-sudoku` Sudoku-Extreme, and `rate`
rates Sudoku puzzles. The generators and checkers live in `maze`,
`maze_rules`, `sudoku` and `sudoku_build`; this module only parses flags and
prints, so those import nothing back.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Optional, Sequence

from attractor_jax import errors
from attractor_jax.puzzles import maze
from attractor_jax.puzzles import maze_rules
from attractor_jax.puzzles import sudoku
from attractor_jax.puzzles import sudoku_build


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Parses `argv` (default: sys.argv) and runs the command; its status."""
  parser = argparse.ArgumentParser(
      prog="python -m attractor_jax.puzzles",
      description="Build and inspect the puzzle data sets.")
  subparsers = parser.add_subparsers(dest="command", required=True)
  add_maze_command(subparsers)
  add_sudoku_commands(subparsers)
  args = parser.parse_args(argv)
  return args.func(args)


def add_maze_command(subparsers) -> None:
  """Registers `build-maze` on an argparse subparsers object."""
  parser = subparsers.add_parser(
      "build-maze", help="generate Maze-Hard train.csv and test.csv",
      description=("Generates Maze-Hard (30x30, unique shortest path of more "
                   f"than {maze.MIN_STEPS - 1} steps) and prints path-length and "
                   "leakage statistics of the test split."))
  parser.add_argument("--out", default=str(maze.DATA_DIR),
                      help="output folder (default: the packaged data)")
  parser.add_argument("--seed", type=int, default=maze.DEFAULT_SEED)
  parser.add_argument("--train", type=int, default=1000, help="train mazes")
  parser.add_argument("--test", type=int, default=1000, help="test mazes")
  parser.add_argument("--no-report", action="store_true",
                      help="skip the leakage and detour statistics")
  parser.set_defaults(func=_build_maze)


def _build_maze(args) -> int:
  """Runs `build-maze`; prints a summary and the leakage table."""
  for name in ("train", "test"):
    if getattr(args, name) < 0:
      raise SystemExit(f"--{name} must be >= 0")
  began = time.perf_counter()
  summary = maze.build(args.out, args.seed, args.train, args.test)
  print(f"built in {time.perf_counter() - began:.1f} s")
  for split in ("test", "train"):
    if summary[split]["num"]:
      print(f"{split} path steps: {summary[split]['steps']}")
  if args.no_report or not args.test:
    return 0
  mazes, solutions = maze.read_csv(pathlib.Path(args.out) / "test.csv")
  print(maze_rules.format_table(maze_rules.leakage_table(mazes, solutions)))
  print(maze_rules.detour_stats(mazes, solutions))
  return 0


def add_sudoku_commands(subparsers) -> None:
  """Registers `rate` and `build-sudoku` on an argparse subparsers object."""
  rate_parser = subparsers.add_parser(
      "rate", help="rate Sudoku puzzles, one JSON object per line",
      description=(
          "Reads one puzzle per line (81 characters, '.' or '0' blank; empty "
          "lines skipped) from FILE ('-' for stdin) and prints, in order, "
          "one JSON object per puzzle: puzzle, solutions (0, 1, or 2 "
          "meaning two or more), rating (mean guesses; null unless exactly "
          "one solution), tier and solution."))
  rate_parser.add_argument("file", metavar="FILE")
  rate_parser.add_argument("--isomorphs", type=int, default=sudoku.DEFAULT_ISOMORPHS,
                           help="random rearrangements to average over")
  rate_parser.add_argument("--seed", type=int, default=sudoku.DEFAULT_SEED,
                           help="seed of the rearrangements")
  rate_parser.set_defaults(func=_rate)

  build_parser = subparsers.add_parser(
      "build-sudoku", help="generate the Sudoku-Extreme train/test CSVs",
      description=(
          "Generates rated puzzles by local search and writes train.csv and "
          "test.csv to --out. The same arguments give the same files, byte "
          "for byte (any --workers)."))
  sudoku_build.add_arguments(build_parser)
  build_parser.set_defaults(func=sudoku_build.main)


def _rate(args) -> int:
  try:
    try:
      sudoku.check_rating_args(args.isomorphs, args.seed)
    except ValueError as error:
      raise errors.ConfigError(f"--{error}") from None
    if args.file == "-":
      text = sys.stdin.read()
    else:
      try:
        text = pathlib.Path(args.file).read_text(encoding="utf-8")
      except OSError as error:
        raise errors.MissingPathError(
            f"cannot read {args.file}: {error.strerror}") from None
    grids = []
    for number, line in enumerate(text.splitlines(), 1):
      if not line.strip():
        continue
      try:
        grids.append(sudoku.parse(line))
      except ValueError as error:
        raise errors.DataError(f"{args.file}:{number}: {error}") from None
  except errors.UserError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  for grid in grids:
    print(json.dumps(sudoku.describe(grid, args.isomorphs, args.seed)), flush=True)
  return 0
