"""attractor_jax: Attractor Models (fixed-point solved looped transformers) in JAX.

The solver core imports only jax:

    y_star, stats = attractor_jax.fixed_point(f, params, c, y0)
"""

from attractor_jax.solvers import Anderson
from attractor_jax.solvers import backward_probe
from attractor_jax.solvers import backward_stats
from attractor_jax.solvers import Broyden
from attractor_jax.solvers import fixed_point
from attractor_jax.solvers import Picard
from attractor_jax.solvers import SolverStats

__version__ = "0.1.0"
