"""Forward solves: known fixed points, per-example stopping, failure reports."""

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
    y, _ = attractor_jax.fixed_point(tanh_map, w, c, y0, max_iter=0,
                                     backward=backward)
    return jnp.sum(y * y)

  grad_w, grad_c, grad_y0 = jax.grad(loss, argnums=(0, 1, 2))(w, c, y0)
  assert not bool(jnp.any(grad_w)) and not bool(jnp.any(grad_c))
  np.testing.assert_allclose(np.asarray(grad_y0), 2 * np.asarray(y0))
