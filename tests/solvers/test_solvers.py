"""Forward solves: known fixed points, per-example stopping, failure reports.

Also the stopping rule's guarantees: no map without a fixed point is ever
reported converged, runaway iterates are flagged diverged, tol=0 runs exactly
max_iter steps.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attractor_jax
from attractor_jax import solvers
from attractor_jax.solvers import loop
from attractor_jax.solvers import stats as stats_lib

SOLVER_NAMES = ("picard", "anderson", "broyden")
BATCH, DIM = 3, 12


def linear_problem(radius, seed=0):
  """f(A, y, c) = y A^T + c with spectral radius `radius`; y* in closed form."""
  key_a, key_c = jax.random.split(jax.random.PRNGKey(seed))
  a = jax.random.normal(key_a, (DIM, DIM))
  a = radius * a / jnp.max(jnp.abs(jnp.linalg.eigvals(a)))
  c = jax.random.normal(key_c, (BATCH, DIM))
  y_star = jnp.linalg.solve(jnp.eye(DIM) - a, c.T).T
  return a, c, y_star


def linear_map(a, y, c):
  return y @ a.T + c


def tanh_map(w, y, c):
  return jnp.tanh(y @ w + c)


def tanh_problem(seed=1):
  key_w, key_c = jax.random.split(jax.random.PRNGKey(seed))
  w = jax.random.normal(key_w, (DIM, DIM))
  w = 0.7 * w / jnp.linalg.norm(w, ord=2)   # contraction: ||J|| <= 0.7
  c = jax.random.normal(key_c, (BATCH, DIM))
  return w, c


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_reaches_closed_form_fixed_point_of_linear_map(name):
  a, c, y_star = linear_problem(radius=0.8)
  y, stats = attractor_jax.fixed_point(linear_map, a, c, jnp.zeros_like(c),
                                       solver=name, max_iter=300, tol=1e-6)
  assert bool(jnp.all(stats.converged))
  assert not bool(jnp.any(stats.nonfinite))
  np.testing.assert_array_less(np.asarray(stats.residual), 1e-6)
  # ||y - y*|| <= ||(I - A)^{-1}|| ||g||: a few times the tolerance.
  rel_error = jnp.linalg.norm(y - y_star, axis=1) / jnp.linalg.norm(
      y_star, axis=1)
  np.testing.assert_array_less(np.asarray(rel_error), 5e-5)


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_reaches_fixed_point_of_tanh_layer(name):
  w, c = tanh_problem()
  y, stats = attractor_jax.fixed_point(tanh_map, w, c, jnp.zeros_like(c),
                                       solver=name, max_iter=200, tol=1e-6)
  assert bool(jnp.all(stats.converged))
  # Independent check: the returned point satisfies y = f(y), relative to the
  # start scale max(||y0||, ||f(y0)||) = ||tanh(c)|| (y0 = 0).
  scale = jnp.linalg.norm(tanh_map(w, jnp.zeros_like(c), c), axis=1)
  gap = jnp.linalg.norm(tanh_map(w, y, c) - y, axis=1) / scale
  np.testing.assert_allclose(np.asarray(gap), np.asarray(stats.residual),
                             rtol=1e-2, atol=1e-8)
  np.testing.assert_array_less(np.asarray(gap), 1e-6)
  # Plain iteration run long in the test itself lands on the same point.
  y_ref = jnp.zeros_like(c)
  for _ in range(200):
    y_ref = tanh_map(w, y_ref, c)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), atol=1e-5)


@pytest.mark.parametrize("name", ("anderson", "broyden"))
def test_accelerated_solvers_need_fewer_evaluations_than_picard(name):
  a, c, _ = linear_problem(radius=0.97, seed=3)
  run = lambda s: attractor_jax.fixed_point(
      linear_map, a, c, jnp.zeros_like(c), solver=s, max_iter=1000, tol=1e-5)
  _, picard = run("picard")
  _, fast = run(name)
  assert bool(jnp.all(picard.converged)) and bool(jnp.all(fast.converged))
  assert int(fast.num_f_evals) * 2 < int(picard.num_f_evals), (
      int(fast.num_f_evals), int(picard.num_f_evals))


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_each_example_stops_at_its_own_iteration_and_stays_frozen(name):
  # Example 0 starts at its fixed point; example 1 contracts slowly.
  scale = jnp.array([0.0, 0.9])[:, None]
  c = jnp.ones((2, DIM))
  f = lambda s, y, c: s * y + c
  y0 = jnp.stack([c[0], jnp.zeros(DIM)])
  y, stats = attractor_jax.fixed_point(f, scale, c, y0, solver=name,
                                       max_iter=300, tol=1e-6, trace=True)
  assert bool(jnp.all(stats.converged))
  assert int(stats.iterations[0]) == 0
  assert int(stats.iterations[1]) >= 2
  np.testing.assert_array_equal(np.asarray(y[0]), np.asarray(c[0]))
  # The easy example's residual stays put in every later row of the trace.
  ran = int(stats.num_f_evals)
  trace = np.asarray(stats.trace)
  assert np.all(trace[:ran, 0] == trace[0, 0])
  assert np.all(np.isnan(trace[ran:]))
  np.testing.assert_allclose(np.asarray(y[1]), 10.0 * np.ones(DIM), rtol=1e-5)


def test_min_iter_is_a_floor():
  c = jnp.ones((2, DIM))
  f = lambda p, y, c: c
  _, stats = attractor_jax.fixed_point(f, None, c, c, solver="picard",
                                       max_iter=10, min_iter=4)
  np.testing.assert_array_equal(np.asarray(stats.iterations), [4, 4])
  assert int(stats.num_f_evals) == 5


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_map_without_fixed_point_is_reported_not_converged(name):
  f = lambda p, y, c: y + c          # a shift: no fixed point
  c = jnp.ones((2, DIM))
  y, stats = attractor_jax.fixed_point(f, None, c, jnp.ones((2, DIM)),
                                       solver=name, max_iter=20, tol=1e-4)
  assert not bool(jnp.any(stats.converged))
  assert np.all(np.asarray(stats.result) == stats_lib.MAX_ITER_REACHED)
  assert np.all(np.asarray(stats.iterations) == 20)
  assert np.all(np.asarray(stats.residual) > 1e-3)
  assert bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_nan_is_flagged_and_does_not_poison_other_examples(name):
  w, c = tanh_problem()

  def f(w, y, c):
    out = tanh_map(w, y, c)
    # Example 0 turns NaN once its state grows past 0.3 in norm.
    bad = (jnp.arange(y.shape[0]) == 0) & (jnp.linalg.norm(y, axis=1) > 0.3)
    return jnp.where(bad[:, None], jnp.nan, out)

  y, stats = jax.jit(lambda w, c: attractor_jax.fixed_point(
      f, w, c, jnp.zeros_like(c), solver=name, max_iter=100, tol=1e-6))(w, c)
  assert bool(stats.nonfinite[0]) and not bool(stats.converged[0])
  assert int(stats.result[0]) == stats_lib.NONFINITE
  assert int(stats.iterations[0]) < 100       # stopped, not run to max_iter
  assert bool(jnp.all(jnp.isfinite(y[0])))    # last finite iterate returned
  assert bool(jnp.all(stats.converged[1:]))
  assert not bool(jnp.any(stats.nonfinite[1:]))
  y_clean, _ = attractor_jax.fixed_point(tanh_map, w, c[1:],
                                         jnp.zeros_like(c[1:]), solver=name,
                                         max_iter=100, tol=1e-6)
  np.testing.assert_allclose(np.asarray(y[1:]), np.asarray(y_clean),
                             atol=1e-5)


def test_max_iter_zero_returns_y0_without_evaluating_f():
  calls = []

  def f(p, y, c):
    calls.append(1)
    return y + c

  y0 = jnp.arange(6.0).reshape(2, 3)
  y, stats = attractor_jax.fixed_point(f, None, jnp.ones((2, 3)), y0,
                                       max_iter=0)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y0))
  assert int(stats.num_f_evals) == 0
  assert np.all(np.isnan(np.asarray(stats.residual)))
  assert not bool(jnp.any(stats.converged))
  # closure_convert traces f once to find what it closes over; nothing runs.
  assert len(calls) <= 1


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_jit_and_vmap_give_the_same_solution(name):
  w, c = tanh_problem()
  solve = lambda w, c: attractor_jax.fixed_point(
      tanh_map, w, c, jnp.zeros_like(c), solver=name, max_iter=100,
      tol=1e-6)[0]
  eager = solve(w, c)
  jitted = jax.jit(solve)(w, c)
  stacked = jnp.stack([c, 0.5 * c])
  vmapped = jax.vmap(solve, in_axes=(None, 0))(w, stacked)
  np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-6)
  np.testing.assert_allclose(np.asarray(vmapped[0]), np.asarray(eager),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(vmapped[1]),
                             np.asarray(solve(w, 0.5 * c)), atol=1e-6)


@pytest.mark.heavy
def test_solve_and_unrolled_solve_agree():
  w, c = tanh_problem()
  f = lambda y: tanh_map(w, y, c)
  options = loop.LoopOptions(max_iter=40, tol=1e-5)
  for solver in (solvers.Picard(), solvers.Anderson(), solvers.Broyden()):
    y_loop, s_loop = loop.solve(f, jnp.zeros_like(c), solver, options)
    y_scan, s_scan = loop.solve_unrolled(f, jnp.zeros_like(c), solver, options)
    np.testing.assert_allclose(np.asarray(y_loop), np.asarray(y_scan),
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(s_loop.iterations),
                                  np.asarray(s_scan.iterations))


@pytest.mark.heavy
def test_anderson_falls_back_when_the_small_system_is_degenerate():
  # All residuals identical: the Gram matrix has rank one. The ridge or the
  # plain-step fallback must keep the iterate finite and still converge.
  c = jnp.ones((2, DIM))
  f = lambda p, y, c: 0.5 * y + c
  y, stats = attractor_jax.fixed_point(f, None, c, jnp.zeros_like(c),
                                       solver="anderson", history=4,
                                       ridge=0.0, max_iter=100, tol=1e-6)
  assert bool(jnp.all(stats.converged))
  np.testing.assert_allclose(np.asarray(y), 2.0 * np.ones((2, DIM)),
                             rtol=1e-5)
  anderson = solvers.Anderson(history=3, ridge=0.0)
  zeros = jnp.zeros((2, DIM))
  memory = anderson.init(zeros, zeros)
  # Zero residual history: the bordered system is singular; plain step taken.
  y_next, _ = anderson.propose(memory, jnp.ones((2, DIM)), zeros,
                               jnp.asarray(0))
  np.testing.assert_array_equal(np.asarray(y_next), np.ones((2, DIM)))


def test_pytree_state_and_trace_length():
  w, c = tanh_problem()

  def f(w, y, c):
    return {"a": tanh_map(w, y["a"], c), "b": 0.5 * y["b"] + 1.0}

  y0 = {"a": jnp.zeros_like(c), "b": jnp.zeros((BATCH, 2, 3))}
  y, stats = attractor_jax.fixed_point(f, w, c, y0, max_iter=60, tol=1e-6,
                                       trace=True)
  assert set(y) == {"a", "b"} and y["b"].shape == (BATCH, 2, 3)
  np.testing.assert_allclose(np.asarray(y["b"]), 2.0, rtol=1e-5)
  assert stats.trace.shape == (61, BATCH)
  assert bool(jnp.all(stats.converged))


def test_bad_inputs_give_clear_errors():
  c = jnp.ones((2, DIM))
  with pytest.raises(ValueError, match="Unknown solver"):
    attractor_jax.fixed_point(linear_map, None, c, c, solver="newton")
  with pytest.raises(ValueError, match="Unknown backward mode"):
    attractor_jax.fixed_point(linear_map, None, c, c, backward="exact")
  with pytest.raises(ValueError, match="Unknown option"):
    attractor_jax.fixed_point(linear_map, None, c, c, solver="picard",
                              history=3)
  with pytest.raises(ValueError, match="leading batch axis"):
    attractor_jax.fixed_point(lambda p, y, c: y, None, c,
                              {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 2))})
  with pytest.raises(ValueError, match="preserve shapes"):
    attractor_jax.fixed_point(lambda p, y, c: y[:, :2], None, c, c)
  with pytest.raises(ValueError, match="min_iter"):
    attractor_jax.fixed_point(linear_map, None, c, c, max_iter=3, min_iter=5)
  with pytest.raises(ValueError, match="floating point"):
    attractor_jax.fixed_point(lambda p, y, c: y, None, c,
                              jnp.ones((2, 3), jnp.int32))


@pytest.mark.parametrize("backward", ("implicit", "onestep", "unrolled"))
def test_max_iter_zero_gradient_reaches_y0_only(backward):
  w, c = tanh_problem()
  y0 = 0.3 * jnp.ones_like(c)

  def loss(w, c, y0):
    solver = "picard" if backward == "unrolled" else "anderson"
    y, _ = attractor_jax.fixed_point(tanh_map, w, c, y0, max_iter=0,
                                     backward=backward, solver=solver)
    return jnp.sum(y * y)

  grad_w, grad_c, grad_y0 = jax.grad(loss, argnums=(0, 1, 2))(w, c, y0)
  assert not bool(jnp.any(grad_w)) and not bool(jnp.any(grad_c))
  np.testing.assert_allclose(np.asarray(grad_y0), 2 * np.asarray(y0))


# No false convergence (issue 7 item 1). A residual relative to the iterate's
# own norm, ||f(y) - y|| / ||y||, shrinks when the solver throws y far away,
# so Anderson and Broyden used to report maps without a fixed point as
# converged. These pin the fixed start scale, the divergence flag and tol=0
# for every solver, in float32 and float64, through loop.solve,
# loop.solve_unrolled and fixed_point (with its implicit backward solve).

NF_BATCH, NF_DIM = 4, 16
DTYPES = ("float32", "float64")
# The measurement: tol 1e-9 in float64; a float32-sized one here.
TOL = {"float32": 1e-4, "float64": 1e-9}


@contextlib.contextmanager
def _precision(dtype):
  """float64 needs x64 switched on (and back off) around the whole check."""
  if dtype == "float64":
    with jax.enable_x64(True):
      yield jnp.float64
  else:
    yield jnp.float32


def _context(dtype, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (NF_BATCH, NF_DIM)).astype(dtype)


def _rotate(y, theta):
  """Rotates consecutive coordinate pairs of each row by theta."""
  z = y.reshape(y.shape[0], -1, 2)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  return jnp.stack([cos * z[..., 0] - sin * z[..., 1],
                    sin * z[..., 0] + cos * z[..., 1]], -1).reshape(y.shape)


# Maps with no fixed point: f(y) - y never vanishes.


def translate(p, y, c):
  return y + 1.0


def sin_map(p, y, c):
  """The issue's map: g(y) = 1 + 0.1 sin(y + c) lies in [0.9, 1.1]."""
  return y + 1.0 + 0.1 * jnp.sin(y + c)


def spiral(p, y, c):
  """1.1 R y + (1 + ||y||) e: ||(I - 1.1 R) y|| = 0.53 ||y|| < 1 + ||y||."""
  e = jnp.zeros((y.shape[1],), y.dtype).at[0].set(1.0)
  norm = jnp.linalg.norm(y, axis=1, keepdims=True)
  return 1.1 * _rotate(y, 0.5) + (1.0 + norm) * e


NO_FIXED_POINT = {"translate": translate, "sin": sin_map, "spiral": spiral}


def _scale(f, y0, c):
  """max(||y0||, ||f(y0)||) per example, in float64 numpy."""
  y0 = np.asarray(y0, np.float64)
  fy0 = np.asarray(f(None, jnp.asarray(y0), c), np.float64)
  return np.maximum(np.linalg.norm(y0, axis=1), np.linalg.norm(fy0, axis=1))


def _assert_honest(f, c, y0, y, stats, tol):
  """Every reported residual is the returned iterate's, relative to the scale.

  So an example reported converged really has ||f(y) - y|| <= tol * scale.
  """
  assert stats.residual.dtype == jnp.promote_types(y.dtype, jnp.float32)
  assert bool(jnp.all(jnp.isfinite(y)))
  gap = np.linalg.norm(np.asarray(f(None, y, c), np.float64)
                       - np.asarray(y, np.float64), axis=1)
  recomputed = gap / _scale(f, y0, c)
  eps = float(jnp.finfo(y.dtype).eps)
  # The map's rounding at y, relative to the scale.
  slack = 8 * eps * np.linalg.norm(np.asarray(y, np.float64), axis=1) / (
      _scale(f, y0, c))
  np.testing.assert_allclose(np.asarray(stats.residual, np.float64),
                             recomputed, rtol=1e-3, atol=slack.max())
  converged = np.asarray(stats.converged)
  assert np.all(recomputed[converged] <= tol + slack[converged])
  assert not np.any(converged & np.asarray(stats.diverged))
  assert not np.any(converged & np.asarray(stats.nonfinite))


@pytest.mark.heavy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SOLVER_NAMES)
@pytest.mark.parametrize("map_name", sorted(NO_FIXED_POINT))
def test_map_without_fixed_point_never_converges(map_name, name, dtype):
  f = NO_FIXED_POINT[map_name]
  with _precision(dtype) as dt:
    c = _context(dt)
    y, stats = attractor_jax.fixed_point(f, None, c, c, solver=name,
                                         max_iter=100, tol=TOL[dtype])
    assert y.dtype == dt
    assert not bool(jnp.any(stats.converged)), (
        np.asarray(stats.iterations), np.asarray(stats.residual))
    assert set(np.asarray(stats.result).tolist()) <= {
        stats_lib.MAX_ITER_REACHED, stats_lib.DIVERGED}
    assert not bool(jnp.any(stats.nonfinite))
    # ||g|| >= 0.9 sqrt(NF_DIM) on the translations: far above any tolerance.
    assert float(jnp.min(stats.residual)) > 1e-2
    _assert_honest(f, c, c, y, stats, TOL[dtype])
    if (map_name, name) in (("spiral", "picard"), ("spiral", "broyden"),
                            ("translate", "broyden")):
      # The iterates run off (Broyden jumps ~1e8 ahead on the translation);
      # Anderson and Picard wander on the others without running away.
      assert bool(jnp.all(stats.diverged))
      assert int(jnp.max(stats.iterations)) < 100
      assert int(stats.summary()["diverged_count"]) == NF_BATCH


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_repelling_fixed_point_is_found_or_flagged(name):
  """y -> 2y + 1 has the fixed point -1, which only Newton-like steps find."""
  f = lambda p, y, c: 2.0 * y + 1.0
  c = _context(jnp.float32)
  y, stats = attractor_jax.fixed_point(f, None, c, c, solver=name,
                                       max_iter=100, tol=1e-5)
  _assert_honest(f, c, c, y, stats, 1e-5)
  if name == "picard":
    # Doubling each step: stopped at divergence_factor * scale, not at 2^100.
    assert bool(jnp.all(stats.diverged))
    assert np.all(np.asarray(stats.result) == stats_lib.DIVERGED)
    assert int(jnp.max(stats.iterations)) < 25
    # The best iterate is the start, whose residual ||y0 + 1|| / ||2 y0 + 1||.
    np.testing.assert_array_equal(np.asarray(y), np.asarray(c))
  else:
    assert bool(jnp.all(stats.converged))
    np.testing.assert_allclose(np.asarray(y), -1.0, atol=1e-4)


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_rotation_with_expansion(name):
  """1.2 R y + c: Picard spirals out; a linear solve finds (I - 1.2 R)^-1 c."""
  a = 1.2 * jax.vmap(lambda e: _rotate(e[None], 0.7)[0])(jnp.eye(NF_DIM)).T
  f = lambda p, y, c: y @ a.T + c
  c = _context(jnp.float32)
  y, stats = attractor_jax.fixed_point(f, None, c, jnp.zeros_like(c),
                                       solver=name, max_iter=100, tol=1e-5)
  _assert_honest(f, c, jnp.zeros_like(c), y, stats, 1e-5)
  if name == "picard":
    assert bool(jnp.all(stats.diverged))
  else:
    y_star = jnp.linalg.solve(jnp.eye(NF_DIM) - a, c.T).T
    assert bool(jnp.all(stats.converged))
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_star), atol=1e-4)


# Maps that do converge, with scales that the old rule handled differently.


def _stiff_linear(dtype, seed=0):
  """Symmetric contraction, spectral radius 0.95, entries of y* over 1e-3..1e3.

  Conjugating by a diagonal scaling keeps the spectrum but mixes the scales.
  """
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  q, _ = jnp.linalg.qr(jax.random.normal(k1, (NF_DIM, NF_DIM)))
  eigs = jnp.linspace(-0.95, 0.95, NF_DIM)
  d = jnp.logspace(-1.0, 1.0, NF_DIM)
  a = (d[:, None] * (q * eigs) @ q.T / d[None, :]).astype(dtype)
  scales = jnp.logspace(-3.0, 3.0, NF_DIM)
  c = (jax.random.normal(k2, (NF_BATCH, NF_DIM)) * scales).astype(dtype)
  y_star = jnp.linalg.solve(jnp.eye(NF_DIM, dtype=dtype) - a, c.T).T
  return a, c, y_star


@pytest.mark.heavy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_stiff_contraction_with_mixed_scales_converges(name, dtype):
  tol = {"float32": 1e-5, "float64": 1e-10}[dtype]
  with _precision(dtype) as dt:
    a, c, y_star = _stiff_linear(dt)
    assert float(jnp.max(jnp.abs(jnp.linalg.eigvals(a)))) == pytest.approx(
        0.95, rel=1e-3)
    f = lambda p, y, c: y @ a.T + c
    y0 = jnp.zeros_like(c)
    y, stats = attractor_jax.fixed_point(f, None, c, y0, solver=name,
                                         max_iter=2000, tol=tol)
    assert bool(jnp.all(stats.converged)), np.asarray(stats.residual)
    assert not bool(jnp.any(stats.diverged))
    _assert_honest(f, c, y0, y, stats, tol)
    # ||y - y*|| <= ||(I - A)^-1|| ||g|| <= 20 kappa(d) tol ||c||.
    error = jnp.linalg.norm(y - y_star, axis=1) / jnp.linalg.norm(c, axis=1)
    np.testing.assert_array_less(np.asarray(error), 2000 * tol)


@pytest.mark.heavy
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_far_fixed_point_converges(name, dtype):
  """y -> 0.5 y + 1e3 from y0 near 0: ||y*|| = 2e3 sqrt(NF_DIM) >> ||y0||."""
  tol = TOL[dtype]
  f = lambda p, y, c: 0.5 * y + 1e3
  with _precision(dtype) as dt:
    y0 = 1e-3 * _context(dt)
    y, stats = attractor_jax.fixed_point(f, None, None, y0, solver=name,
                                         max_iter=200, tol=tol)
    assert bool(jnp.all(stats.converged))
    _assert_honest(f, None, y0, y, stats, tol)
    np.testing.assert_allclose(np.asarray(y), 2e3, rtol=4 * tol)
    if name == "picard":
      # Halving the error each step: 1e3 sqrt(NF_DIM) 2^-k <= tol ||f(y0)||.
      expected = int(np.ceil(np.log2(1.0 / tol)))
      assert abs(int(jnp.max(stats.iterations)) - expected) <= 1


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_fixed_point_at_zero_is_reached(name):
  """The old ||g|| / ||y|| could never reach tol when y* = 0."""
  f = lambda p, y, c: 0.5 * jnp.tanh(y)
  y0 = _context(jnp.float32)
  y, stats = attractor_jax.fixed_point(f, None, None, y0, solver=name,
                                       max_iter=100, tol=1e-5)
  assert bool(jnp.all(stats.converged))
  _assert_honest(f, None, y0, y, stats, 1e-5)
  assert float(jnp.max(jnp.abs(y))) < 1e-4


def test_atol_is_absolute():
  f = lambda p, y, c: 0.5 * y + 1e3          # scale ~ 4e3; y* = 2e3
  y0 = jnp.zeros((2, NF_DIM))
  _, rel = attractor_jax.fixed_point(f, None, None, y0, solver="picard",
                                     max_iter=100, tol=1e-3)
  _, both = attractor_jax.fixed_point(f, None, None, y0, solver="picard",
                                      max_iter=100, tol=1e-3, atol=1e3)
  _, absolute = attractor_jax.fixed_point(f, None, None, y0, solver="picard",
                                          max_iter=100, tol=0.0, atol=1e-2)
  assert bool(jnp.all(rel.converged & both.converged & absolute.converged))
  # ||g_k|| = 4e3 * 2^-k: tol*scale = 4 needs k = 10, 1e3 + 4 needs k = 2,
  # 1e-2 alone needs k = 19.
  np.testing.assert_array_equal(np.asarray(rel.iterations), [10, 10])
  np.testing.assert_array_equal(np.asarray(both.iterations), [2, 2])
  np.testing.assert_array_equal(np.asarray(absolute.iterations), [19, 19])


# tol = 0: exactly max_iter steps.


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_tol_zero_runs_exactly_max_iter(name):
  w = 0.5 * jnp.eye(NF_DIM)
  f = lambda w, y, c: jnp.tanh(y @ w + c)
  c = _context(jnp.float32)
  y, stats = attractor_jax.fixed_point(f, w, c, jnp.zeros_like(c),
                                       solver=name, max_iter=30, tol=0.0,
                                       trace=True)
  np.testing.assert_array_equal(np.asarray(stats.iterations), 30)
  assert int(stats.num_f_evals) == 31
  assert not bool(jnp.any(jnp.isnan(stats.trace)))
  # Converged only where the residual is exactly zero.
  np.testing.assert_array_equal(np.asarray(stats.converged),
                                np.asarray(stats.residual) == 0.0)
  # Same steps as a solve that never stops on its own, forced by min_iter.
  y_min, stats_min = attractor_jax.fixed_point(
      f, w, c, jnp.zeros_like(c), solver=name, max_iter=30, min_iter=30,
      tol=1e-30)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_min))
  np.testing.assert_array_equal(np.asarray(stats.residual),
                                np.asarray(stats_min.residual))


@pytest.mark.heavy
def test_tol_zero_still_stops_diverged_and_nonfinite_examples():
  def f(p, y, c):
    # Example 0 doubles (diverges), example 1 turns NaN, example 2 contracts.
    out = jnp.stack([2.0 * y[0] + 1.0, jnp.where(y[1, 0] > 3.0, jnp.nan,
                                                  y[1] + 1.0), 0.5 * y[2]])
    return out

  y0 = jnp.ones((3, NF_DIM))
  y, stats = attractor_jax.fixed_point(f, None, None, y0, solver="picard",
                                       max_iter=40, tol=0.0)
  assert np.asarray(stats.result).tolist() == [
      stats_lib.DIVERGED, stats_lib.NONFINITE, stats_lib.MAX_ITER_REACHED]
  iterations = np.asarray(stats.iterations)
  assert iterations[0] < 40 and iterations[1] < 40 and iterations[2] == 40
  assert bool(jnp.all(jnp.isfinite(y)))
  assert int(stats.summary()["diverged_count"]) == 1
  assert int(stats.summary()["nonfinite_count"]) == 1


def test_loop_options_validation():
  loop.LoopOptions(tol=0.0)
  for bad in (dict(tol=-1e-3), dict(atol=-1.0), dict(divergence_factor=1.0),
              dict(divergence_factor=0.0)):
    with pytest.raises(ValueError):
      loop.LoopOptions(**bad)
  assert loop.LoopOptions(divergence_factor=None).divergence_factor is None


def test_divergence_factor_none_disables_the_flag():
  f = lambda p, y, c: 2.0 * y + 1.0
  y0 = jnp.ones((2, NF_DIM))
  _, stats = attractor_jax.fixed_point(f, None, None, y0, solver="picard",
                                       max_iter=30, tol=1e-4,
                                       divergence_factor=None)
  assert not bool(jnp.any(stats.diverged))
  np.testing.assert_array_equal(np.asarray(stats.iterations), 30)
  _, stats = attractor_jax.fixed_point(f, None, None, y0, solver="picard",
                                       max_iter=30, tol=1e-4,
                                       divergence_factor=10.0)
  # ||y_k|| ~ 2^k ||y0||; past 10 x scale (scale = ||f(y0)|| = 3 ||y0||).
  np.testing.assert_array_equal(np.asarray(stats.iterations), [4, 4])


# The same rule in every entry point.


@pytest.mark.heavy
@pytest.mark.parametrize("name", SOLVER_NAMES)
@pytest.mark.parametrize("map_name", ("sin", "spiral"))
def test_solve_and_unrolled_solve_agree_on_diverging_maps(map_name, name):
  f = NO_FIXED_POINT[map_name]
  c = _context(jnp.float32)
  solver = solvers.make_solver(name)
  options = loop.LoopOptions(max_iter=40, tol=1e-4)
  y_loop, s_loop = jax.jit(lambda c: loop.solve(
      lambda y: f(None, y, c), c, solver, options))(c)
  y_scan, s_scan = jax.jit(lambda c: loop.solve_unrolled(
      lambda y: f(None, y, c), c, solver, options))(c)
  for field in ("iterations", "converged", "diverged", "nonfinite"):
    np.testing.assert_array_equal(np.asarray(getattr(s_loop, field)),
                                  np.asarray(getattr(s_scan, field)))
  np.testing.assert_allclose(np.asarray(y_loop), np.asarray(y_scan),
                             rtol=1e-6)
  assert not bool(jnp.any(s_scan.converged))
  if (map_name, name) != ("spiral", "anderson"):
    assert int(jnp.max(s_scan.iterations)) == 40 or bool(
        jnp.all(s_scan.diverged))


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_unrolled_gradient_is_finite_through_frozen_examples(name):
  """An example sitting at its fixed point (g = 0) keeps gradients finite."""
  w = 0.5 * jnp.eye(NF_DIM)
  c = _context(jnp.float32).at[0].set(0.0)   # example 0: y0 = f(y0) = 0

  def loss(w):
    # fixed_point allows unrolled with Picard only; the loop takes any solver.
    solver = solvers.make_solver(name)
    y, _ = loop.solve_unrolled(lambda y: jnp.tanh(y @ w + c),
                               jnp.zeros_like(c), solver,
                               loop.LoopOptions(max_iter=30, tol=1e-5))
    return jnp.sum(y ** 2)

  grad = jax.jit(jax.grad(loss))(w)
  assert bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.max(jnp.abs(grad))) > 0


def test_bfloat16_state_keeps_float32_residual_and_scale():
  f = lambda y: (0.5 * y.astype(jnp.float32) + 1.0).astype(jnp.bfloat16)
  y0 = jnp.zeros((2, NF_DIM), jnp.bfloat16)
  y, stats = loop.solve(f, y0, solvers.Picard(),
                        loop.LoopOptions(max_iter=50, tol=1e-2))
  assert y.dtype == jnp.bfloat16
  assert stats.residual.dtype == jnp.float32
  assert bool(jnp.all(stats.converged))
  np.testing.assert_allclose(np.asarray(y, np.float32), 2.0, rtol=2e-2)


def _backward(f, params, c, y0, **kwargs):
  """Gradient w.r.t. (params, c) of sum(y*) and the backward solve's stats."""

  def loss(params, c, probe):
    y, stats = attractor_jax.fixed_point(f, params, c, y0, backward_probe=probe,
                                         **kwargs)
    return jnp.sum(y), stats

  (g_p, g_c, g_probe), stats = jax.jit(jax.grad(
      loss, argnums=(0, 1, 2), has_aux=True))(params, c,
                                               attractor_jax.backward_probe())
  return (g_p, g_c), stats, attractor_jax.backward_stats(g_probe)


@pytest.mark.parametrize("name", ("anderson", "broyden"))
def test_backward_solve_without_solution_is_not_converged(name):
  """The adjoint of a translation, u = u + v, has no solution."""
  c = _context(jnp.float32)
  f = lambda p, y, c: p * y + c             # p = 1 at the call
  (_, g_c), fwd, bwd = _backward(
      f, jnp.float32(1.0), c, jnp.zeros_like(c), solver=name,
      backward_solver=name, max_iter=20, tol=1e-4,
      on_backward_failure="nan")
  assert not bool(jnp.any(fwd.converged))
  assert float(bwd.examples) == NF_BATCH
  assert float(bwd.not_converged) == NF_BATCH
  assert float(bwd.mean_residual) > 1e-2
  assert bool(jnp.all(jnp.isnan(g_c)))


@pytest.mark.heavy
@pytest.mark.parametrize("backward_solver", SOLVER_NAMES)
def test_backward_solve_of_expanding_jacobian(backward_solver):
  """A = 1.5 I: Anderson finds y*, but Picard on u = A^T u + v runs off."""
  c = _context(jnp.float32)
  f = lambda a, y, c: a * y + c
  (g_a, g_c), fwd, bwd = _backward(
      f, jnp.float32(1.5), c, jnp.zeros_like(c), solver="anderson",
      backward_solver=backward_solver, max_iter=50, tol=1e-5,
      on_backward_failure="nan")
  assert bool(jnp.all(fwd.converged))
  assert float(bwd.examples) == NF_BATCH
  if backward_solver == "picard":
    assert float(bwd.not_converged) == NF_BATCH
    assert float(bwd.diverged) == NF_BATCH
    assert float(bwd.mean_iterations) < 50
    assert bool(jnp.all(jnp.isnan(g_c)))
  else:
    # y* = c / (1 - a): dL/dc = 1 / (1 - a) = -2, dL/da = sum(c) / (1 - a)^2.
    assert float(bwd.not_converged) == 0 and float(bwd.diverged) == 0
    np.testing.assert_allclose(np.asarray(g_c), -2.0, rtol=1e-3)
    np.testing.assert_allclose(float(g_a), 4.0 * float(jnp.sum(c)), rtol=1e-3)


def test_summary_and_result_codes():
  stats = stats_lib.SolverStats(
      iterations=jnp.array([3, 5, 7, 9], jnp.int32),
      residual=jnp.array([1e-5, 0.5, jnp.nan, 0.2]),
      converged=jnp.array([True, False, False, False]),
      nonfinite=jnp.array([False, False, True, False]),
      num_f_evals=jnp.array(10, jnp.int32),
      diverged=jnp.array([False, True, False, False]))
  assert np.asarray(stats.result).tolist() == [
      stats_lib.CONVERGED, stats_lib.DIVERGED, stats_lib.NONFINITE,
      stats_lib.MAX_ITER_REACHED]
  assert stats_lib.RESULT_NAMES[stats_lib.DIVERGED] == "diverged"
  assert int(stats.summary()["diverged_count"]) == 1
  # Stats built without the flag (older callers) read as nothing diverged.
  legacy = stats._replace(diverged=None)
  assert int(legacy.summary()["diverged_count"]) == 0
  assert int(legacy.result[1]) == stats_lib.MAX_ITER_REACHED
