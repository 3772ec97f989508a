"""Sudoku-Extreme training (the committed set of attractor_jax/puzzles).

  python -m attractor_jax.train --workdir=/tmp/sudoku-tiny \
      --config=attractor_jax/configs/sudoku.py:tiny

Variants: `tiny` (CPU), `7m`, `27m` (the Attractor reasoner), or any
puzzle-model preset name (`trm-tiny`, `trm-7m`, `transformer-27m`, ...).
Every field can be overridden, e.g. --config.solve.max_iter=8
--config.total_steps=500. See attractor_jax/configs/puzzle.py for the recipe.
"""

from attractor_jax.configs import puzzle


def get_config(variant: str = "tiny"):
  return puzzle.get_config("sudoku", variant)
