"""Gradients of `fixed_point` in every backward mode, against references."""

import contextlib
import functools
import importlib
import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attractor_jax
from attractor_jax import fixed_point

# The module (attractor_jax.solvers.fixed_point is the function).
fixed_point_lib = importlib.import_module("attractor_jax.solvers.fixed_point")

BATCH = 4
DIM = 6
IN_DIM = 3
NORM = 0.6  # spectral norm of the weights: tanh(y @ w + c) contracts.
# Picard compiles much faster than Anderson on CPU, so most checks use it;
# Anderson (the default) runs where the check is about the exact gradient.
PICARD = dict(solver="picard", backward_solver="picard")
MODES = ("implicit", "onestep", "jfb", "phantom")


def _contraction(key, dim, dtype=jnp.float32, norm=NORM):
  w = jax.random.normal(key, (dim, dim), dtype)
  return (w * (norm / jnp.linalg.norm(w, ord=2))).astype(dtype)


def tanh_map(w, y, c):
  return jnp.tanh(y @ w + c)


def linear_map(a, y, c):
  return y @ a.T + c


def _problem(dtype=jnp.float32, seed=0):
  """Weights w of the map, and (b, x) that produce its context c."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  w = _contraction(k1, DIM, dtype)
  b = jax.random.normal(k2, (IN_DIM, DIM), dtype)
  x = jax.random.normal(k3, (BATCH, IN_DIM), dtype)
  return w, b, x


def _context(b, x):
  return jnp.sin(x @ b)


def _wc(dtype=jnp.float32):
  w, b, x = _problem(dtype)
  return w, _context(b, x)


def _loss(y):
  """A nonlinear loss, so dL/dy* depends on y*."""
  return jnp.sum(jnp.cos(2.0 * y) + y)


def _picard(f, params, c, y0, steps):
  """Reference: plain Picard iteration, reverse-differentiable (a scan)."""
  return jax.lax.fori_loop(0, steps, lambda _, y: f(params, y, c), y0)


def _closed_form(a, c, y0):
  """The fixed point of linear_map: y (I - A^T) = c."""
  del y0
  return jnp.linalg.solve(jnp.eye(a.shape[0], dtype=a.dtype) - a, c.T).T


def _rel_err(a, b):
  a = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(a)])
  b = jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(b)])
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _assert_close(actual, expected, rtol):
  assert (jax.tree_util.tree_structure(actual)
          == jax.tree_util.tree_structure(expected))
  for a, e in zip(jax.tree_util.tree_leaves(actual),
                  jax.tree_util.tree_leaves(expected)):
    assert a.shape == e.shape and a.dtype == e.dtype, (a, e)
  err = _rel_err(actual, expected)
  assert err <= rtol, f"relative error {err:.3g} > {rtol:.3g}"


@contextlib.contextmanager
def _x64():
  if hasattr(jax, "enable_x64"):
    with jax.enable_x64(True):
      yield
  else:
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
      yield
    finally:
      jax.config.update("jax_enable_x64", previous)


def _grad_through_c(solve, w, b, x):
  """d/d(w, b) of _loss(solve(w, c, y0)), where c = _context(b, x)."""

  def loss(w, b):
    c = _context(b, x)
    return _loss(solve(w, c, jnp.zeros_like(c)))

  return jax.jit(jax.grad(loss, argnums=(0, 1)))(w, b)


def _fp(f=tanh_map, **kwargs):
  def solve(params, c, y0):
    return fixed_point(f, params, c, y0, **kwargs)[0]
  return solve


class _Result(NamedTuple):
  grads: Any     # (d/dw, d/dc)
  grad_y0: Any
  stats: Any     # attractor_jax.backward_stats of the probe's gradient
  y_star: Any


@functools.partial(jax.jit, static_argnums=3)
def _grads_jit(w, c, y0, options):
  def loss(w, c, y0, probe):
    y_star, _ = fixed_point(tanh_map, w, c, y0, backward_probe=probe,
                            **dict(options))
    return _loss(y_star), y_star

  (g_w, g_c, g_y0, g_probe), y_star = jax.grad(
      loss, argnums=(0, 1, 2, 3), has_aux=True)(
          w, c, y0, attractor_jax.backward_probe())
  return _Result((g_w, g_c), g_y0, attractor_jax.backward_stats(g_probe),
                y_star)


def _fp_grads(w, c, y0=None, **kwargs):
  """Gradients of _loss(y*) (tanh_map; PICARD and tol=1e-6 unless given).

  Compiled once per distinct set of options, shared between tests.
  """
  options = {"tol": 1e-6, **PICARD, **kwargs}
  options = tuple(sorted((k, v) for k, v in options.items() if v is not None))
  y0 = jnp.zeros_like(c) if y0 is None else y0
  return _grads_jit(w, c, y0, options)


def _mode_options(mode):
  return {"phantom": dict(backward="phantom", phantom_steps=2,
                          phantom_damping=1.0)}.get(mode, dict(backward=mode))


# Implicit gradients against references.


def test_implicit_matches_unrolled_float32():
  """Anderson forward and backward; gradient flows to b through c."""
  w, b, x = _problem()
  implicit = _grad_through_c(
      _fp(backward="implicit", max_iter=200, tol=1e-7, backward_tol=1e-7,
          on_backward_failure="ignore"), w, b, x)
  reference = _grad_through_c(
      lambda w, c, y0: _picard(tanh_map, w, c, y0, 200), w, b, x)
  library_unrolled = _grad_through_c(
      _fp(backward="unrolled", solver="picard", max_iter=200, tol=1e-30),
      w, b, x)
  _assert_close(implicit, reference, 1e-5)
  _assert_close(library_unrolled, reference, 1e-5)
  assert float(jnp.linalg.norm(implicit[1])) > 1e-2


@pytest.mark.heavy
def test_implicit_matches_unrolled_and_closed_form_float64():
  with _x64():
    w, b, x = _problem(jnp.float64)
    assert w.dtype == jnp.float64
    kwargs = dict(backward="implicit", max_iter=300, tol=1e-13,
                  backward_tol=1e-13, backward_max_iter=300,
                  on_backward_failure="ignore", **PICARD)
    implicit = _grad_through_c(_fp(**kwargs), w, b, x)
    reference = _grad_through_c(
        lambda w, c, y0: _picard(tanh_map, w, c, y0, 300), w, b, x)
    assert implicit[0].dtype == jnp.float64
    _assert_close(implicit, reference, 1e-10)
    linear = _grad_through_c(_fp(linear_map, **kwargs), w, b, x)
    _assert_close(linear, _grad_through_c(_closed_form, w, b, x), 1e-10)


def test_implicit_matches_closed_form_linear_float32():
  w, b, x = _problem()
  solve = _fp(linear_map, max_iter=200, tol=1e-7, backward_tol=1e-7,
              on_backward_failure="ignore", **PICARD)
  _assert_close(_grad_through_c(solve, w, b, x),
                _grad_through_c(_closed_form, w, b, x), 1e-5)


# The cheaper backward modes, against their definitions.


def _jacobian_terms(w, c, y_star):
  """v = dL/dy*, J^T v at y*, and the vjp of f w.r.t. (w, c) at y*."""
  v = jax.grad(_loss)(y_star)
  _, y_vjp = jax.vjp(lambda y: tanh_map(w, y, c), y_star)
  _, param_vjp = jax.vjp(lambda w, c: tanh_map(w, y_star, c), w, c)
  return v, y_vjp(v)[0], param_vjp


@pytest.mark.parametrize("clip", [None, 0.1])
def test_onestep_matches_definition(clip):
  w, c = _wc()
  result = _fp_grads(w, c, backward="onestep", onestep_clip=clip)
  v, jtv, param_vjp = _jacobian_terms(w, c, result.y_star)
  if clip is not None:
    v_norm = jnp.linalg.norm(v, axis=1)
    scale = jnp.minimum(1.0, clip * v_norm / jnp.linalg.norm(jtv, axis=1))
    assert bool(jnp.any(scale < 1.0)), "the clip should be active"
    jtv = jtv * scale[:, None]
    assert bool(jnp.all(jnp.linalg.norm(jtv, axis=1)
                        <= clip * v_norm * (1 + 1e-5)))
    unclipped = _fp_grads(w, c, backward="onestep").grads
    assert _rel_err(result.grads, unclipped) > 1e-3
  _assert_close(result.grads, param_vjp(v + jtv), 1e-6)


def test_jfb_matches_definition():
  w, c = _wc()
  result = _fp_grads(w, c, backward="jfb")
  v, _, param_vjp = _jacobian_terms(w, c, result.y_star)
  _assert_close(result.grads, param_vjp(v), 1e-6)


@pytest.mark.parametrize("steps,damping", [(3, 0.7), (2, 1.0)])
def test_phantom_matches_damped_unroll(steps, damping):
  w, c = _wc()
  result = _fp_grads(w, c, backward="phantom", phantom_steps=steps,
                     phantom_damping=damping)
  v = jax.grad(_loss)(result.y_star)

  def phantom(w, c):
    y = jax.lax.stop_gradient(result.y_star)
    for _ in range(steps):
      y = (1.0 - damping) * y + damping * tanh_map(w, y, c)
    return jnp.vdot(y, v)

  _assert_close(result.grads, jax.grad(phantom, argnums=(0, 1))(w, c), 1e-6)


def test_phantom_one_undamped_step_is_jfb():
  w, c = _wc()
  phantom = _fp_grads(w, c, backward="phantom", phantom_steps=1,
                      phantom_damping=1.0)
  _assert_close(phantom.grads, _fp_grads(w, c, backward="jfb").grads, 1e-6)


def test_modes_are_distinct_approximations():
  """Guards the comparisons above against modes silently sharing a path."""
  w, c = _wc()
  grads = {mode: _fp_grads(w, c, **_mode_options(mode)).grads
           for mode in ("implicit", "onestep", "jfb")}
  assert _rel_err(grads["onestep"], grads["implicit"]) > 1e-3
  assert _rel_err(grads["jfb"], grads["implicit"]) > 1e-3
  # One Neumann term is closer to the exact gradient than none.
  assert (_rel_err(grads["onestep"], grads["implicit"])
          < _rel_err(grads["jfb"], grads["implicit"]))


def test_forward_value_is_the_same_in_every_mode():
  w, c = _wc()
  y0 = jnp.zeros_like(c)
  primal = jax.jit(_fp(tol=1e-6, **PICARD))(w, c, y0)
  for mode in MODES:
    y_star = _fp_grads(w, c, y0, **_mode_options(mode)).y_star
    np.testing.assert_array_equal(y_star, primal, err_msg=mode)
  unrolled = _fp_grads(w, c, y0, backward="unrolled").y_star
  np.testing.assert_allclose(unrolled, primal, rtol=1e-5, atol=1e-5)


def test_y0_gets_zero_gradient():
  w, c = _wc()
  y0 = 0.3 * jnp.ones_like(c)
  for mode in MODES:
    grad_y0 = _fp_grads(w, c, y0, **_mode_options(mode)).grad_y0
    assert grad_y0.shape == y0.shape
    np.testing.assert_array_equal(grad_y0, jnp.zeros_like(y0), err_msg=mode)
  # Positive control: a short unrolled solve does depend on y0.
  unrolled = _fp_grads(w, c, y0, backward="unrolled", max_iter=2).grad_y0
  assert float(jnp.max(jnp.abs(unrolled))) > 1e-3


# Composition with jit, vmap and grad.


def test_jit_of_grad_equals_grad():
  w, c = _wc()

  def loss(w, c):
    return _loss(fixed_point(tanh_map, w, c, jnp.zeros_like(c), tol=1e-6,
                             **PICARD)[0])

  eager = jax.grad(loss, argnums=(0, 1))(w, c)
  jitted = _fp_grads(w, c, **_mode_options("implicit")).grads  # jit(grad)
  _assert_close(jitted, eager, 1e-5)


def test_vmap_matches_python_loop():
  w, _, _ = _problem()
  # Contexts of different sizes, so each instance stops at its own step.
  cs = (jax.random.normal(jax.random.key(1), (3, BATCH, DIM))
        * jnp.array([0.1, 1.0, 3.0])[:, None, None])

  def solve_and_grad(c):
    def loss(w, c):
      y_star, stats = fixed_point(tanh_map, w, c, jnp.zeros_like(c), tol=1e-6,
                                  **PICARD)
      return _loss(y_star), (y_star, stats.iterations)

    grads, (y_star, iterations) = jax.grad(
        loss, argnums=(0, 1), has_aux=True)(w, c)
    return y_star, grads, iterations

  batched = jax.jit(jax.vmap(solve_and_grad))(cs)
  assert len(set(np.asarray(batched[2]).max(axis=1).tolist())) > 1
  single = jax.jit(solve_and_grad)
  for i in range(cs.shape[0]):
    y_star, grads, iterations = single(cs[i])
    # Batched and unbatched matmuls round differently, so an example whose
    # residual lands next to tol may stop one step apart.
    assert int(jnp.max(jnp.abs(batched[2][i] - iterations))) <= 1
    np.testing.assert_allclose(batched[0][i], y_star, atol=1e-5)
    _assert_close(jax.tree_util.tree_map(lambda g: g[i], batched[1]), grads,
                  1e-4)


# Pytree state and closures.


def _dict_map(p, y, c):
  a, s = y["a"], y["s"]   # [batch, 3] and [batch, 2, 2]
  z = jnp.concatenate([a, s.reshape(s.shape[0], 4)], axis=1)
  h = jnp.tanh(z @ p["w"] + c)
  return {"a": h[:, :3], "s": (p["gain"] * h[:, 3:]).reshape(-1, 2, 2)}


def test_pytree_state_gradients_match_unrolled():
  k1, k2 = jax.random.split(jax.random.key(2))
  params = {"w": _contraction(k1, 7, norm=0.5), "gain": jnp.float32(0.9)}
  c = jax.random.normal(k2, (BATCH, 7))
  y0 = {"a": jnp.zeros((BATCH, 3)), "s": jnp.zeros((BATCH, 2, 2))}
  weights = jnp.arange(4.0).reshape(2, 2)

  def loss(solve):
    def fn(p, c):
      y = solve(p, c)
      return _loss(y["a"]) + jnp.sum(jnp.sin(y["s"]) * weights), y
    return jax.jit(jax.grad(fn, argnums=(0, 1), has_aux=True))

  implicit, y_star = loss(lambda p, c: fixed_point(
      _dict_map, p, c, y0, max_iter=200, tol=1e-7, backward_tol=1e-7,
      on_backward_failure="ignore", **PICARD)[0])(params, c)
  reference, _ = loss(lambda p, c: _picard(_dict_map, p, c, y0, 200))(
      params, c)
  assert y_star["a"].shape == (BATCH, 3) and y_star["s"].shape == (BATCH, 2, 2)
  _assert_close(implicit, reference, 1e-5)


@pytest.mark.heavy
@pytest.mark.parametrize("wrap", ["jit_of_grad", "grad_of_jit", "eager"])
def test_gradient_through_closed_over_value(wrap):
  w, c = _wc()
  y0 = jnp.zeros_like(c)

  def loss(w, scale):
    f = lambda p, y, cc: jnp.tanh(y @ p + scale * cc)  # closes over scale
    return _loss(fixed_point(f, w, c, y0, max_iter=200, tol=1e-7,
                             backward_tol=1e-7, on_backward_failure="ignore",
                             **PICARD)[0])

  def reference_loss(w, scale):
    f = lambda p, y, cc: jnp.tanh(y @ p[0] + p[1] * cc)
    return _loss(_picard(f, (w, scale), c, y0, 200))

  grad_fn = {
      "jit_of_grad": jax.jit(jax.grad(loss, argnums=(0, 1))),
      "grad_of_jit": jax.grad(jax.jit(loss), argnums=(0, 1)),
      "eager": jax.grad(loss, argnums=(0, 1)),
  }[wrap]
  grads = grad_fn(w, jnp.float32(0.8))
  expected = jax.jit(jax.grad(reference_loss, argnums=(0, 1)))(
      w, jnp.float32(0.8))
  assert abs(float(expected[1])) > 1e-2
  _assert_close(grads, expected, 1e-5)


# Backward failures and the probe.


FAILING = dict(backward_max_iter=2, backward_tol=1e-10)
CONVERGING = dict(backward_tol=1e-5)


def _saturated_wc():
  """Example 0 saturates tanh: J = 0 there, so its backward solve converges."""
  w, c = _wc()
  return w, c.at[0].set(100.0)


def test_backward_failure_nan_marks_failed_examples():
  w, c = _saturated_wc()
  g_w, g_c = _fp_grads(w, c, on_backward_failure="nan", **FAILING).grads
  assert bool(jnp.all(jnp.isfinite(g_c[0])))
  assert bool(jnp.all(jnp.isnan(g_c[1:])))
  assert bool(jnp.all(jnp.isnan(g_w)))
  ignored = _fp_grads(w, c, on_backward_failure="ignore", **FAILING).grads
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in ignored)
  np.testing.assert_allclose(g_c[0], ignored[1][0], rtol=1e-6)


def _warnings(caplog, w, c, **kwargs):
  fixed_point_lib._BACKWARD_WARNING.reset()  # the warning is rate-limited
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="attractor_jax"):
    result = _fp_grads(w, c, on_backward_failure="warn", **kwargs)
    jax.block_until_ready(result)
    jax.effects_barrier()
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in result.grads)
  return [r.getMessage() for r in caplog.records if r.name == "attractor_jax"]


def test_backward_failure_warns(caplog):
  w, c = _saturated_wc()
  messages = _warnings(caplog, w, c, **FAILING)
  assert len(messages) == 1, messages
  assert "did not converge for 3 example(s)" in messages[0]
  assert not _warnings(caplog, w, c, **CONVERGING)


@pytest.mark.parametrize("converges", [False, True])
def test_backward_probe_reports_the_solve(converges):
  w, c = _wc()
  stats = _fp_grads(w, c, on_backward_failure="ignore",
                    **(CONVERGING if converges else FAILING)).stats
  assert float(stats.examples) == BATCH
  assert float(stats.not_converged) == (0 if converges else BATCH)
  assert float(stats.nonfinite) == 0
  assert float(stats.mean_iterations) > 0
  if converges:
    assert float(stats.mean_residual) <= 1e-5
  else:
    assert float(stats.mean_iterations) <= 2
    assert float(stats.mean_residual) > 1e-10


def test_backward_probe_without_solve_reports_no_iterations():
  w, c = _wc()
  stats = _fp_grads(w, c, backward="jfb").stats
  assert float(stats.examples) == BATCH
  assert float(stats.mean_iterations) == 0
  assert float(stats.not_converged) == 0


# Cost of the primal.


@pytest.mark.parametrize("mode", MODES)
def test_primal_only_runs_one_while_loop(mode):
  w, c = _wc()
  solve = _fp(backward=mode)
  y0 = jnp.zeros_like(c)
  assert str(jax.make_jaxpr(solve)(w, c, y0)).count("while[") == 1
  if mode == "implicit":
    # Positive control: the gradient adds the backward solve's loop.
    grad_jaxpr = jax.make_jaxpr(
        jax.grad(lambda w, c: _loss(solve(w, c, y0))))(w, c)
    assert str(grad_jaxpr).count("while[") >= 2


@pytest.mark.parametrize("mode", ["onestep", "implicit"])
def test_backward_linearises_the_map_once(mode):
  """J^T v and the parameter vjp share one linearisation of f at y*: the
  gradient evaluates f's primal (tanh) as often as jfb, which needs no J^T."""
  w, c = _wc()
  y0 = jnp.zeros_like(c)

  def primal_evaluations(backward):
    solve = _fp(backward=backward)
    jaxpr = jax.make_jaxpr(jax.grad(lambda w, c: _loss(solve(w, c, y0))))(w, c)
    return str(jaxpr).count(" tanh ")

  assert primal_evaluations(mode) == primal_evaluations("jfb")


# Low precision.


@functools.partial(jax.jit, static_argnums=2)
def _value_and_grads(w, c, options):
  def loss(w, c):
    y, stats = fixed_point(tanh_map, w, c, jnp.zeros_like(c), **dict(options))
    return _loss(y.astype(jnp.float32)), (y, stats)

  return jax.grad(loss, argnums=(0, 1), has_aux=True)(w, c)


def test_bfloat16_map_with_float32_solver_state():
  """Anderson on a bfloat16 map; gradients in the parameters' dtypes."""
  w, c = _wc()
  options = (("backward_solver", "picard"), ("backward_tol", 1e-2),
             ("max_iter", 50), ("tol", 1e-2))
  (g_w, g_c), (y_star, stats) = _value_and_grads(
      w.astype(jnp.bfloat16), c.astype(jnp.bfloat16), options)
  assert y_star.dtype == jnp.bfloat16
  assert bool(jnp.all(stats.converged)), stats.residual
  assert stats.residual.dtype == jnp.float32
  assert g_w.dtype == jnp.bfloat16 and g_c.dtype == jnp.bfloat16
  (e_w, e_c), (y32, _) = _value_and_grads(w, c, options)
  assert y32.dtype == jnp.float32
  np.testing.assert_allclose(y_star.astype(jnp.float32), y32, atol=3e-2)
  assert _rel_err(g_w.astype(jnp.float32), e_w) < 0.1
  assert _rel_err(g_c.astype(jnp.float32), e_c) < 0.1
