"""attractor_jax: Attractor Models (fixed-point solved looped transformers) in JAX.

The solver core imports only jax:

    y_star, stats = attractor_jax.fixed_point(f, params, c, y0)

The Flax layers are exported here too, imported (with flax) on first use:

    from attractor_jax import AttractorHead, BlockSpec, SolveConfig
    from attractor_jax import linen as attractor_linen      # Linen wrappers
"""

import importlib

from attractor_jax.solvers import Anderson
from attractor_jax.solvers import backward_probe
from attractor_jax.solvers import backward_stats
from attractor_jax.solvers import Broyden
from attractor_jax.solvers import fixed_point
from attractor_jax.solvers import FixedPointNotConverged
from attractor_jax.solvers import Picard
from attractor_jax.solvers import SolverStats

__version__ = "0.1.0"

# Flax-based names, resolved lazily so that `import attractor_jax` (and the
# solver core) does not import flax.
_LAZY = {
    "AttractorHead": "attractor_jax.nn.attractor_head",
    "SolveConfig": "attractor_jax.nn.attractor_head",
    "EagerSolveWarning": "attractor_jax.nn.attractor_head",
    "BlockSpec": "attractor_jax.nn.blocks",
}

__all__ = ["Anderson", "backward_probe", "backward_stats", "Broyden",
           "fixed_point", "FixedPointNotConverged", "Picard", "SolverStats",
           *_LAZY]


def __getattr__(name):
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f"module 'attractor_jax' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
