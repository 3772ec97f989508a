"""Maze-Hard training (the committed set of attractor_jax/puzzles).

  python -m attractor_jax.train --workdir=/tmp/maze-tiny \
      --config=attractor_jax/configs/maze.py:tiny

Variants: `tiny` (CPU), `7m`, `27m` (the Attractor reasoner), or any
puzzle-model preset name (`trm-tiny`, `trm-7m`, `transformer-27m`, ...).
Every field can be overridden. See attractor_jax/configs/puzzle.py for the
recipe.
"""

from attractor_jax.configs import puzzle


def get_config(variant: str = "tiny"):
  return puzzle.get_config("maze", variant)
