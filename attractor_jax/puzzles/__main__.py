"""Puzzle data commands: `python -m attractor_jax.puzzles <command> ...`."""

import argparse
import sys

from attractor_jax.puzzles import maze
from attractor_jax.puzzles import sudoku


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m attractor_jax.puzzles",
      description="Build and inspect the puzzle data sets.")
  subparsers = parser.add_subparsers(dest="command", required=True)
  maze.add_build_command(subparsers)
  sudoku.add_commands(subparsers)
  args = parser.parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
