"""Puzzle data commands: `python -m attractor_jax.puzzles <command> ...`."""

import sys

from attractor_jax.puzzles.cli import main

if __name__ == "__main__":
  sys.exit(main())
