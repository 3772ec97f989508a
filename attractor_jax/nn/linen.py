"""Linen wrappers: the attractor head and the LMs inside a user's Linen model.

Built on `flax.nnx.bridge.to_linen`. The returned object is an ordinary
`linen.Module`: use it in `@nn.compact` or `setup`, `init` it with a "params"
rng, and `apply` it under `jax.jit` / `jax.grad` like any Linen layer.

    class Model(nn.Module):
      @nn.compact
      def __call__(self, x):
        c = nn.Dense(64)(x)[:, None, :]                   # [batch, seq, dim]
        y, stats = linen.attractor_head_linen(spec, 1, solve_config)(c)
        return nn.Dense(1)(y[:, 0])

How the bridge behaves (flax 0.12):

- Parameters live in the Linen "params" collection under the wrapper's name
  and the NNX attribute path (e.g. `params/ToLinen_0/blocks/0/attn_gate/raw`
  with the default automatic name). Each leaf is an `nnx.bridge.NNXMeta` box
  that carries the logical axis names, so `nn.get_partition_spec` works;
  optax and `jax.grad` treat boxes as pytree nodes, and
  `flax.linen.meta.unbox(params)` gives the raw arrays, with the same paths
  and shapes as `nnx.state(model, nnx.Param)` of the NNX model.
- `init` runs a forward pass; the head's solve is not needed for it, so pass
  `max_iter=0` (y* = c) to `init` and jit it.
- `apply` rebuilds the NNX module (tracing its initialisers) and then loads
  the Linen variables into it. Under `jax.jit` the discarded initial values
  are dead code, so jit the step; eager `apply` re-initialises every call.
- Keyword arguments of `__call__` pass through (`max_iter`, `positions`,
  ...); another method is chosen with `nnx_method`, e.g.
  `lm.apply(variables, tokens, nnx_method="propose")`.
- The head's solver stats are returned as outputs (a pytree), not stored in
  variables.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from flax import linen as nn
from flax import nnx

from attractor_jax.nn import attractor_head as attractor_head_lib
from attractor_jax.nn import blocks as blocks_lib


def to_linen(nnx_class: Callable[..., nnx.Module], *args: Any,
             name: Optional[str] = None, **kwargs: Any) -> nn.Module:
  """Any of the package's NNX modules (class and constructor args) as Linen.

  `rngs` is supplied by the bridge from the Linen "params" rng at init.
  Constructor arguments must be hashable (the package's configs are frozen
  dataclasses).
  """
  return nnx.bridge.to_linen(nnx_class, *args, name=name, **kwargs)


def attractor_head_linen(spec: blocks_lib.BlockSpec, num_blocks: int,
                   solve_config: attractor_head_lib.SolveConfig = (
                       attractor_head_lib.SolveConfig()),
                   *, name: Optional[str] = None) -> nn.Module:
  """An `AttractorHead` as a Linen module.

  Called as `head(c, positions=..., segment_ids=..., max_iter=..., y0=...)`
  on `c` of shape `[batch, seq, dim]`; returns `(y_star, stats)`.

  Args:
    spec: the gated pre-norm block spec (gate_max set).
    num_blocks: blocks of the residual branch R.
    solve_config: solver, stopping rule and backward mode.
    name: the Linen name (default: auto, e.g. "ToLinen_0").
  """
  return to_linen(attractor_head_lib.AttractorHead, spec, num_blocks,
                  solve_config, name=name)


def language_model_linen(config, *, name: Optional[str] = None) -> nn.Module:
  """A language model of any kind (`models.ModelConfig`) as a Linen module.

  Called as `lm(tokens, targets=..., positions=..., segment_ids=...,
  max_iter=...)`; returns the model's `LMOutput` (logits, loss, stats).
  """
  # Imported here: models depend on nn, not the other way round.
  from attractor_jax import models  # pylint: disable=g-import-not-at-top
  return to_linen(models.model_class(config.kind), config, name=name)


def attractor_lm_linen(config, *, name: Optional[str] = None) -> nn.Module:
  """The Attractor LM as a Linen module (`config.kind` must be "attractor")."""
  if config.kind != "attractor":
    raise ValueError(f"attractor_lm_linen needs kind='attractor'; got "
                     f"{config.kind!r} (use language_model_linen for other "
                     "kinds).")
  return language_model_linen(config, name=name)
