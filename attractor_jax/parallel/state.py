"""Shardings of whole states: a module's nnx.State and optimizer states.

    abstract = nnx.eval_shape(lambda: make_model(rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)
    state = jax.jit(lambda: nnx.state(make_model(rngs=nnx.Rngs(0))),
                    out_shardings=shardings)()    # created already sharded

Optimizer states: `nnx.Optimizer` copies each parameter's metadata onto its
moments, so `state_shardings(nnx.state(optimizer), mesh)` shards them like
their parameters (step counts replicated). A raw optax state has no metadata:
`shard_like_params` gives each leaf whose path ends with a parameter's path
(optax's `mu` / `nu` / momentum subtrees mirror the parameters) and whose
shape matches it that parameter's sharding, and replicates every other leaf
(counts, factored or masked statistics).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attractor_jax.parallel import rules as rules_lib


def _is_variable(x) -> bool:
  return isinstance(x, nnx.Variable)


def _path_tokens(path) -> tuple:
  """Hashable keys of a pytree path, less a Variable's trailing `.value`."""
  if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and (
      path[-1].name == "value"):
    path = path[:-1]
  tokens = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        tokens.append(getattr(key, attr))
        break
    else:
      tokens.append(str(key))
  return tuple(tokens)


def _leaf_sharding(value, names, mesh, rules, what: str) -> NamedSharding:
  shape = getattr(value, "shape", None)
  if not names or shape is None:
    return NamedSharding(mesh, P())
  try:
    spec = rules_lib.logical_to_mesh_spec(names, rules)
  except ValueError as e:
    raise ValueError(f"{what}: {e}") from None
  return NamedSharding(mesh, rules_lib.fit_spec_to_shape(spec, shape, mesh,
                                                         what))


def state_shardings(state: Any, mesh,
                    rules: rules_lib.Rules = rules_lib.DEFAULT_RULES) -> Any:
  """NamedShardings for every leaf of an nnx.State (or an nnx.Module).

  Args:
    state: an nnx.State (concrete or abstract, e.g. from `nnx.eval_shape`),
      a module (its `nnx.state`), or any pytree.
    mesh: the mesh.
    rules: the rules table.

  Returns:
    The same structure with each Variable's value replaced by its
    NamedSharding (usable as jit in/out shardings and by `jax.device_put`).
    Variables with logical names (`out_sharding` metadata) are mapped by the
    rules and fitted to their shape; every other leaf is replicated.

  The metadata is read directly rather than through `nnx.get_partition_spec`,
  so a Flax `logical_axis_rules` context does not rewrite the names first.
  """
  if isinstance(state, nnx.Module):
    state = nnx.state(state)

  def one(path, x):
    what = "/".join(str(t) for t in _path_tokens(path))
    if _is_variable(x):
      value = x.get_value()
      if value is None:
        return x
      names = x.get_metadata().get("out_sharding")
      return x.replace(_leaf_sharding(value, names, mesh, rules, what))
    return _leaf_sharding(x, None, mesh, rules, what)

  return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_variable)


def _compatible(sharding: NamedSharding, shape) -> bool:
  """Whether `sharding` can lay out an array of `shape` (rank, divisibility)."""
  if shape is None or len(sharding.spec) > len(shape):
    return False
  try:
    sharding.shard_shape(tuple(shape))
  except ValueError:
    return False
  return True


def shard_like_params(opt_state: Any, param_shardings: Any,
                      params: Optional[Any] = None) -> Any:
  """Shardings for an optimizer state, copied from the parameters' shardings.

  Args:
    opt_state: the optimizer state (concrete or abstract), e.g. `tx.init(p)`.
    param_shardings: NamedShardings of the parameters (`state_shardings`).
    params: the parameters (arrays, ShapeDtypeStructs or Variables thereof),
      same structure as `param_shardings`; when given, a leaf takes a
      parameter's sharding only if its shape equals the parameter's,
      otherwise only if the sharding fits the leaf's shape.

  Returns:
    `opt_state`'s structure with a NamedSharding per leaf: the sharding of
    the parameter whose path is the longest suffix of the leaf's path, if
    the shapes agree; replicated otherwise.

  Raises:
    ValueError: if `param_shardings` holds no NamedSharding (no mesh).
  """
  flat = jax.tree_util.tree_flatten_with_path(param_shardings)[0]
  table = {_path_tokens(path): [s, None] for path, s in flat}
  meshes = [s.mesh for _, s in flat if isinstance(s, NamedSharding)]
  if not meshes:
    raise ValueError("param_shardings holds no NamedSharding.")
  if params is not None:
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
      if _path_tokens(path) in table:
        table[_path_tokens(path)][1] = tuple(getattr(p, "shape", ()))
  replicated = NamedSharding(meshes[0], P())

  def one(path, x):
    tokens, shape = _path_tokens(path), getattr(x, "shape", None)
    for start in range(len(tokens)):
      if tokens[start:] in table:
        sharding, param_shape = table[tokens[start:]]
        if params is not None and shape is not None:
          ok = tuple(shape) == param_shape
        else:
          ok = _compatible(sharding, shape)
        return sharding if ok else replicated
    return replicated

  return jax.tree_util.tree_map_with_path(one, opt_state)


def global_batch(model, batch: dict) -> dict:
  """The batch as is on one process; with several, each process's rows (its
  share, as the data pipeline gives it) assembled into global arrays over the
  mesh the model's parameters live on."""
  if jax.process_count() == 1:
    return batch
  param = jax.tree.leaves(nnx.state(model, nnx.Param))[0]
  return rules_lib.shard_batch(batch, param.sharding.mesh)
