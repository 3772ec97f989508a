"""`fixed_point` is hard to misuse (issue 9, items 2, 3 and 6).

Each test pins one trap a new user fell into: an unbatched state split into
one-number examples, unrolled gradients through Anderson's weight solve and
unrolled solves that never stop, no way to raise on non-convergence, a traced
max_iter, a backward warning on every step, and Anderson's LAPACK-sized cost
per step on small states.
"""

import importlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attractor_jax
from attractor_jax import solvers
from attractor_jax.solvers import loop

# The module (attractor_jax.solvers.fixed_point is the function).
fixed_point_lib = importlib.import_module("attractor_jax.solvers.fixed_point")

N = 16


def _deq_problem():
  """A jaxopt-style DEQ layer z = tanh(W z + b) on one unbatched [N] state."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  w = jax.random.normal(k1, (N, N))
  w = 0.9 * w / jnp.linalg.norm(w, ord=2)
  b = jax.random.normal(k2, (N,))
  return w, b


def _deq(w, z, b):
  return jnp.tanh(w @ z + b)


# A state without a batch axis.


def test_unbatched_state_is_refused_with_the_fix():
  w, b = _deq_problem()
  for y0 in (jnp.zeros(N), jnp.float32(0.0), {"a": jnp.zeros(N)}):
    with pytest.raises(ValueError, match=r"batched=False") as error:
      attractor_jax.fixed_point(_deq, w, b, y0)
    assert "y0[None]" in str(error.value)


@pytest.mark.heavy
def test_batched_false_solves_the_whole_state_as_one_example():
  w, b = _deq_problem()
  tol = 1e-4
  y, stats = attractor_jax.fixed_point(_deq, w, b, jnp.zeros(N), tol=tol,
                                       batched=False, trace=True)
  assert y.shape == (N,)
  assert stats.iterations.shape == () and stats.converged.shape == ()
  assert stats.trace.ndim == 1
  # The reported residual is the whole state's, as the stopping rule says.
  scale = jnp.linalg.norm(_deq(w, jnp.zeros(N), b))
  true_residual = float(jnp.linalg.norm(_deq(w, y, b) - y) / scale)
  np.testing.assert_allclose(float(stats.residual), true_residual, rtol=1e-2,
                             atol=1e-7)
  assert bool(stats.converged) and true_residual <= tol
  # The same as adding the batch axis by hand, gradients included.
  batched = lambda w, z, b: jax.vmap(lambda z: _deq(w, z, b))(z)

  def loss(w, b, unbatched):
    if unbatched:
      y, _ = attractor_jax.fixed_point(_deq, w, b, jnp.zeros(N), tol=1e-6,
                                       batched=False)
    else:
      y, _ = attractor_jax.fixed_point(batched, w, b, jnp.zeros((1, N)),
                                       tol=1e-6)
    return jnp.sum(jnp.sin(y))

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  for g_unbatched, g_batched in zip(grads(w, b, True), grads(w, b, False)):
    np.testing.assert_allclose(g_unbatched, g_batched, rtol=1e-5, atol=1e-7)


def test_batched_true_keeps_one_number_examples():
  c = jnp.linspace(0.1, 1.0, 4)
  y, stats = attractor_jax.fixed_point(lambda a, y, c: a * jnp.tanh(y) + c,
                                       0.5, c, c, batched=True, tol=1e-6)
  assert y.shape == (4,) and stats.iterations.shape == (4,)
  assert bool(jnp.all(stats.converged))


# Unrolled.


def test_unrolled_refuses_anderson_and_broyden():
  c = jnp.ones((2, 3))
  for solver in ("anderson", "broyden", solvers.Anderson(history=3)):
    with pytest.raises(ValueError, match=r"solver='picard'.*implicit"):
      attractor_jax.fixed_point(lambda a, y, c: a * y + c, 0.5, c, c,
                                solver=solver, backward="unrolled")


def test_unrolled_scalar_contraction_matches_closed_form_and_stops():
  """y = a tanh(y) + c per example: dy*/da = tanh(y*) / (1 - a sech^2(y*))."""
  c = jnp.array([[0.1], [0.4], [1.0], [3.0]])
  a, max_iter = 0.5, 100
  f = lambda a, y, c: a * jnp.tanh(y) + c

  def loss(a, c):
    y, stats = attractor_jax.fixed_point(f, a, c, jnp.zeros_like(c),
                                         solver="picard", backward="unrolled",
                                         max_iter=max_iter, tol=1e-6)
    return jnp.sum(y), (y, stats)

  (grad_a, grad_c), (y, stats) = jax.jit(jax.grad(
      loss, argnums=(0, 1), has_aux=True))(a, c)
  sech2 = 1.0 - jnp.tanh(y) ** 2
  np.testing.assert_allclose(grad_a, jnp.sum(jnp.tanh(y) / (1 - a * sech2)),
                             rtol=1e-4)
  np.testing.assert_allclose(grad_c, 1.0 / (1.0 - a * sech2), rtol=1e-4)
  # Each example stops at its own step and stays there; the scan stops
  # evaluating f once all have, exactly like the while loop.
  y_loop, loop_stats = attractor_jax.fixed_point(
      f, a, c, jnp.zeros_like(c), solver="picard", max_iter=max_iter,
      tol=1e-6)
  np.testing.assert_array_equal(stats.iterations, loop_stats.iterations)
  assert len(set(np.asarray(stats.iterations).tolist())) > 1
  np.testing.assert_array_equal(y, y_loop)
  assert int(stats.num_f_evals) == int(loop_stats.num_f_evals)
  assert int(stats.num_f_evals) < max_iter // 2


def test_differentiating_anderson_holds_its_weights_fixed():
  """Through loop.solve_unrolled, Anderson's weights get no gradient.

  y = a R y + c with R a 4-d rotation and a = 0.9, run to round-off (tol 0):
  differentiating the weight solve gave -4.6e9 where the truth is -132.
  """
  q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(1), (4, 4)))
  c = jax.random.normal(jax.random.PRNGKey(8), (4, 4))

  def loss(a):
    y, _ = loop.solve_unrolled(lambda y: a * y @ q.T + c, jnp.zeros_like(c),
                               solvers.Anderson(),
                               loop.LoopOptions(max_iter=60, tol=0.0))
    return jnp.sum(y)

  a = 0.9
  system = jnp.eye(4) - a * q
  truth = jnp.sum(jnp.linalg.solve(system, q @ jnp.linalg.solve(system, c.T)))
  grad = float(jax.jit(jax.grad(loss))(a))
  assert np.isfinite(grad) and abs(grad) < 3 * abs(float(truth)), (grad, truth)


# throw=True.


def _slow(a, y, c):
  return a * jnp.tanh(y) + c


def test_throw_raises_when_the_forward_solve_does_not_converge():
  c = jnp.linspace(0.1, 1.0, 4)[:, None]
  kwargs = dict(solver="picard", throw=True)
  with pytest.raises(attractor_jax.solvers.FixedPointNotConverged,
                     match=r"did not converge for 4 of 4 .*max_iter=3"):
    attractor_jax.fixed_point(_slow, 0.9, c, c, max_iter=3, **kwargs)
  attractor_jax.fixed_point(_slow, 0.9, c, c, max_iter=300, **kwargs)
  attractor_jax.fixed_point(_slow, 0.9, c, c, max_iter=0, **kwargs)
  # Under an eager grad, and under jit (as a runtime error from the device).
  loss = lambda a: jnp.sum(attractor_jax.fixed_point(
      _slow, a, c, c, max_iter=3, **kwargs)[0])
  with pytest.raises(attractor_jax.solvers.FixedPointNotConverged):
    jax.grad(loss)(0.9)
  with pytest.raises(RuntimeError, match="did not converge for 4 of 4"):
    jax.block_until_ready(jax.jit(loss)(0.9))
  jax.block_until_ready(jax.jit(lambda a: attractor_jax.fixed_point(
      _slow, a, c, c, max_iter=300, **kwargs)[0])(0.9))


# Traced options.


def test_traced_max_iter_or_tol_names_the_fix():
  c = jnp.ones((2, 3))
  f = lambda a, y, c: a * y + c
  with pytest.raises(TypeError, match=r"max_iter.*static_argnames"):
    jax.jit(lambda c, n: attractor_jax.fixed_point(f, 0.5, c, c,
                                                   max_iter=n))(c, 5)
  with pytest.raises(TypeError, match=r"tol.*static_argnames"):
    jax.jit(lambda c, t: attractor_jax.fixed_point(f, 0.5, c, c,
                                                   tol=t))(c, 1e-3)
  with pytest.raises(TypeError, match=r"backward_max_iter.*static"):
    jax.jit(lambda c, n: attractor_jax.fixed_point(
        f, 0.5, c, c, backward_max_iter=n))(c, 5)
  # The fix works.
  solve = jax.jit(lambda c, n: attractor_jax.fixed_point(f, 0.5, c, c,
                                                         max_iter=n)[0],
                  static_argnames="n")
  np.testing.assert_allclose(solve(c, n=50), 2.0 * c, rtol=1e-4)


# The backward warning.


def test_backward_failure_warning_is_rate_limited(caplog, monkeypatch):
  c = jnp.linspace(0.5, 1.0, 3)[:, None] * jnp.ones((3, 4))

  @jax.jit
  def step(a, c):
    def loss(a, c):
      y, _ = attractor_jax.fixed_point(
          _slow, a, c, c, solver="picard", backward_solver="picard",
          max_iter=100, tol=1e-6, backward_max_iter=2)
      return jnp.sum(y)
    return jax.grad(loss, argnums=(0, 1))(a, c)

  def messages(steps):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attractor_jax"):
      for _ in range(steps):
        jax.block_until_ready(step(0.9, c))
      jax.effects_barrier()
    return [r.getMessage() for r in caplog.records
            if r.name == "attractor_jax"]

  fixed_point_lib._BACKWARD_WARNING.reset()
  first = messages(10)
  assert len(first) == 1, first
  assert "did not converge for 3 example(s)" in first[0]
  assert "at most once every 60 s" in first[0]
  # Once the interval has passed, the next warning counts the skipped ones.
  monkeypatch.setattr(fixed_point_lib, "BACKWARD_WARNING_INTERVAL_S", 0.0)
  (second,) = messages(1)
  assert "9 more solve(s) failed for 27 example(s)" in second
  assert len(messages(3)) == 3
  # The public setter (which also forgets the last warning).
  try:
    solvers.set_backward_warning_interval(3600)
    assert len(messages(3)) == 1
    with pytest.raises(ValueError, match=">= 0"):
      solvers.set_backward_warning_interval(-1)
  finally:
    solvers.set_backward_warning_interval(60.0)


# Anderson's cost on small states.


def test_anderson_step_launches_no_lapack_call_or_inner_loop():
  """The m x m weight solve is unrolled elementwise work, not a batched LU.

  jnp.linalg.solve cost an LU custom call, two triangular solves and a while
  loop turning pivots into a permutation, every step: 6x Picard's step on a
  [16, 64] state. (The benchmark measures the cost; this pins the structure.)
  """
  c = jnp.ones((16, 64))
  solve = jax.jit(lambda c: attractor_jax.fixed_point(
      lambda p, y, c: 0.5 * jnp.tanh(y) + c, None, c, c, solver="anderson",
      max_iter=10)[0])
  hlo = solve.lower(c).compile().as_text()
  assert "custom-call(" not in hlo
  assert hlo.count(" while(") == 1


def test_small_spd_solve_matches_numpy_and_flags_singular_systems():
  rng = np.random.default_rng(0)
  g = rng.normal(size=(3, 5, 7))
  a = g @ g.transpose(0, 2, 1) + 1e-3 * np.eye(5)
  b = rng.normal(size=(3, 5))
  x = solvers.anderson.solve_small_spd(jnp.asarray(a, jnp.float32),
                                       jnp.asarray(b, jnp.float32))
  assert x.dtype == jnp.float32
  np.testing.assert_allclose(x, np.linalg.solve(a, b[..., None])[..., 0],
                             rtol=1e-3)
  singular = jnp.zeros((1, 3, 3)).at[0, 0, 0].set(1.0)
  assert not bool(jnp.all(jnp.isfinite(
      solvers.anderson.solve_small_spd(singular, jnp.ones((1, 3))))))
