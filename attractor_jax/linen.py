"""Linen wrappers: the attractor head and the LMs inside a user's Linen model.

Import it under a name of its own, so it does not shadow flax's `linen`:

    import jax
    import jax.numpy as jnp
    from flax import linen as nn
    from attractor_jax import linen as attractor_linen

    class Model(nn.Module):
      @nn.compact
      def __call__(self, x):                            # x: [batch, 3]
        c = nn.Dense(16)(x)[:, None, :]                 # [batch, seq=1, dim]
        y, stats = attractor_linen.attractor_head(
            dim=16, num_heads=2, mlp_dim=32, causal=False, name="head")(c)
        return nn.Dense(1)(y[:, 0])

    model, x = Model(), jnp.ones((4, 3))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]  # no solve
    step = jax.jit(lambda params, x: model.apply({"params": params}, x))
    out = step(params, x)                                # [4, 1]

Built on `flax.nnx.bridge`. The returned objects are ordinary
`linen.Module`s: use them in `@nn.compact` or `setup`, `init` them with a
"params" rng, and `apply` them under `jax.jit` / `jax.grad` like any Linen
layer.

How the bridge behaves (flax 0.12):

- Parameters live in the Linen "params" collection under the wrapper's name
  and the NNX attribute path (e.g. `params/head/blocks/0/attn_gate/raw`, or
  `params/ToLinen_0/...` with the automatic name). Each leaf is an
  `nnx.bridge.NNXMeta` box that carries the logical axis names, so
  `nn.get_partition_spec` works; optax and `jax.grad` treat boxes as pytree
  nodes, and `flax.linen.meta.unbox(params)` gives the raw arrays, with the
  same paths and shapes as `nnx.state(model, nnx.Param)` of the NNX model.
- `init` runs a forward pass; every attractor-head or DEQ solve inside a
  wrapper of this module is skipped during `init` (max_iter is taken as 0,
  so y* = c): `init` needs only the shapes. `init_with_output` therefore
  returns the unsolved output.
- `apply` rebuilds the NNX module (tracing its initialisers) and then loads
  the Linen variables into it. Under `jax.jit` the discarded initial values
  are dead code, so jit the step; an eager `apply` re-initialises and traces
  the solver every call (the head warns once).
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

from attractor_jax import models
from attractor_jax.nn import attractor_head as attractor_head_lib
from attractor_jax.nn import blocks as blocks_lib


class ToLinen(nnx.bridge.ToLinen):
  """`flax.nnx.bridge.ToLinen` that skips the fixed-point solves at `init`.

  Named like flax's class, so automatic Linen names (`ToLinen_0`) and thus
  parameter paths stay those of the plain bridge.
  """

  def __call__(self, *args, **kwargs):
    if self.is_initializing():
      with attractor_head_lib.solve_skipped():
        return super().__call__(*args, **kwargs)
    return super().__call__(*args, **kwargs)


def to_linen(nnx_class: Callable[..., nnx.Module], *args: Any,
             name: Optional[str] = None, **kwargs: Any) -> nn.Module:
  """Any NNX module (class or factory, and its arguments) as Linen.

  `rngs` is supplied by the bridge from the Linen "params" rng at init.
  Constructor arguments must be hashable (the package's configs are frozen
  dataclasses). Attractor-head and DEQ solves inside it are skipped during
  `init`.
  """
  return ToLinen(nnx_class, args=args, kwargs=nn.FrozenDict(kwargs),
                 name=name)


def attractor_head(*, dim: int, mlp_dim: int, causal: bool,
                   num_heads: Optional[int] = None, num_blocks: int = 1,
                   name: Optional[str] = None, **options: Any) -> nn.Module:
  """`AttractorHead.create(...)` as a Linen module.

  Called as `head(c, positions=..., segment_ids=..., max_iter=..., y0=...)`
  on `c` of shape `[batch, seq, dim]` (MLP-only heads: `[batch, ..., dim]`);
  returns `(y_star, stats)`.

  Args:
    dim, mlp_dim, num_heads, num_blocks: sizes (see `AttractorHead.create`).
    causal: required: True for decoders, False for sets, graphs, puzzles.
    name: the Linen name (default: auto, e.g. "ToLinen_0").
    **options: the other arguments of `AttractorHead.create` (attention,
      rope_theta, qk_norm, gate_max, gate_init, out_init_scale,
      solve_config, dtype, ...).
  """
  return to_linen(attractor_head_lib.AttractorHead.create, dim=dim,
                  mlp_dim=mlp_dim, causal=causal, num_heads=num_heads,
                  num_blocks=num_blocks, name=name, **options)


def attractor_head_linen(spec: blocks_lib.BlockSpec, num_blocks: int,
                         solve_config: attractor_head_lib.SolveConfig = (
                             attractor_head_lib.SolveConfig()),
                         *, name: Optional[str] = None) -> nn.Module:
  """An `AttractorHead` from a BlockSpec as a Linen module.

  Called as `head(c, positions=..., segment_ids=..., max_iter=..., y0=...)`
  on `c` of shape `[batch, seq, dim]`; returns `(y_star, stats)`.

  Args:
    spec: the gated pre-norm block spec (gate_max set, out_init_scale > 0;
      mind its `causal`, True by default).
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
  return to_linen(models.model_class(config.kind), config, name=name)


def attractor_lm_linen(config, *, name: Optional[str] = None) -> nn.Module:
  """The Attractor LM as a Linen module (`config.kind` must be "attractor")."""
  if config.kind != "attractor":
    raise ValueError(f"attractor_lm_linen needs kind='attractor'; got "
                     f"{config.kind!r} (use language_model_linen for other "
                     "kinds).")
  return language_model_linen(config, name=name)
