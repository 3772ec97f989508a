"""Fixed-point solvers and implicit differentiation, in pure JAX (no Flax)."""

from attractor_jax.solvers.anderson import Anderson
from attractor_jax.solvers.probe import BackwardStats
from attractor_jax.solvers.probe import backward_probe
from attractor_jax.solvers.probe import backward_stats
from attractor_jax.solvers.base import FixedPointSolver
from attractor_jax.solvers.broyden import Broyden
from attractor_jax.solvers.fixed_point import BACKWARD_MODES
from attractor_jax.solvers.fixed_point import fixed_point
from attractor_jax.solvers.fixed_point import FixedPointNotConverged
from attractor_jax.solvers.fixed_point import make_solver
from attractor_jax.solvers.fixed_point import set_backward_warning_interval
from attractor_jax.solvers.fixed_point import SOLVERS
from attractor_jax.solvers.loop import LoopOptions
from attractor_jax.solvers.loop import solve
from attractor_jax.solvers.loop import solve_unrolled
from attractor_jax.solvers.picard import Picard
from attractor_jax.solvers.regularizers import jacobian_frobenius_penalty
from attractor_jax.solvers.regularizers import spectral_radius
from attractor_jax.solvers.stats import SolverStats
