"""The rules table: logical axis names -> mesh axes, and shardings from it.

Parameters carry logical axis names (("vocab", "embed"), ("embed", "heads",
"head_dim"), ...) as `out_sharding` metadata; activations use "batch" and
"length". One table, `DEFAULT_RULES`, maps each name to mesh axes of
`mesh.make_mesh` (None: replicated). A spec's mesh axes are resolved in order:

  * a mesh axis already used by an earlier dimension of the same spec is
    dropped from the later one (("batch", "embed") -> P(("data", "fsdp"),
    None)), since an array cannot be split twice over one mesh axis;
  * for a concrete shape, a dimension whose size does not divide by the size
    of its mesh axes drops mesh axes from the end until it does (replicated
    when none are left), with a logged warning, instead of failing.

    shardings = state_shardings(nnx.state(abstract_model), mesh)
    opt_shardings = shard_like_params(abstract_opt_state, shardings, params)
    step = jax.jit(train_step, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=shardings)
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence, Union

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MeshAxes = Union[None, str, tuple[str, ...]]
Rules = Sequence[tuple[str, MeshAxes]]

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),   # activations: the batch, over all data axes
    ("length", None),              # activations: the sequence
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),              # stacked (scanned) layers
)

logger = logging.getLogger(__name__)


def _as_tuple(entry) -> tuple:
  """None -> (), "a" -> ("a",), ("a", "b") -> ("a", "b")."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def _as_entry(axes: Sequence[str]) -> MeshAxes:
  """The PartitionSpec entry for a list of mesh axes (inverse of _as_tuple)."""
  if not axes:
    return None
  return axes[0] if len(axes) == 1 else tuple(axes)


def rules_table(rules: Rules = DEFAULT_RULES) -> dict[str, tuple[str, ...]]:
  """The rules as a dict: logical name -> tuple of mesh axes.

  Raises:
    ValueError: for a malformed entry or a logical name listed twice.
  """
  table = {}
  for rule in rules:
    axes = rule[1] if len(rule) == 2 else 0
    if not isinstance(axes, (type(None), str, tuple)) or (
        not isinstance(rule[0], str) or
        not all(isinstance(a, str) for a in _as_tuple(axes))):
      raise ValueError(f"A rule is (logical name, None | mesh axis | tuple of "
                       f"mesh axes); got {rule!r}.")
    if rule[0] in table:
      raise ValueError(f"Logical axis name {rule[0]!r} has two rules.")
    table[rule[0]] = _as_tuple(rule[1])
  return table


def logical_to_mesh_spec(logical_spec: Sequence[Any],
                         rules: Rules = DEFAULT_RULES) -> P:
  """Maps a spec of logical axis names to a PartitionSpec of mesh axes.

  Args:
    logical_spec: one entry per dimension: None, a logical name or a tuple of
      names (a PartitionSpec of logical names works).
    rules: the rules table.

  Returns:
    The PartitionSpec, one entry per dimension; a mesh axis used by an
    earlier dimension is dropped from later ones.

  Raises:
    ValueError: for a name the rules do not know (the known ones are listed).
  """
  table = rules_table(rules)
  used, spec = set(), []
  for entry in logical_spec:
    axes = []
    for name in _as_tuple(entry):
      if name not in table:
        raise ValueError(f"Unknown logical axis name {name!r} in "
                         f"{tuple(logical_spec)}; the rules know "
                         f"{sorted(table)}.")
      axes += [a for a in table[name] if a not in used and a not in axes]
    used.update(axes)
    spec.append(_as_entry(axes))
  return P(*spec)


def fit_spec_to_shape(spec: P, shape: Sequence[int], mesh,
                      what: str = "array") -> P:
  """`spec` padded to `shape`'s rank, each dimension divisible by its axes.

  Args:
    spec: a PartitionSpec of mesh axes, at most one entry per dimension.
    shape: the array's (global) shape.
    mesh: a Mesh (or AbstractMesh) naming every axis of `spec`.
    what: the array's name, for messages.

  Returns:
    A PartitionSpec with one entry per dimension; a dimension whose size does
    not divide by the product of its mesh axes' sizes loses mesh axes from
    the end until it does (a warning is logged).

  Raises:
    ValueError: if `spec` is longer than `shape` or names an unknown mesh axis.
  """
  sizes = dict(mesh.shape)
  if len(spec) > len(shape):
    raise ValueError(f"{what}: spec {spec} has more entries than its shape "
                     f"{tuple(shape)} has dimensions.")
  entries = tuple(spec) + (None,) * (len(shape) - len(spec))
  fitted = []
  for dim, (entry, size) in enumerate(zip(entries, shape)):
    axes = _as_tuple(entry)
    unknown = [a for a in axes if a not in sizes]
    if unknown:
      raise ValueError(f"{what}: mesh axes {unknown} are not in the mesh, "
                       f"whose axes are {tuple(sizes)}.")
    kept = list(axes)
    while kept and size % math.prod(sizes[a] for a in kept):
      kept.pop()
    if len(kept) < len(axes):
      logger.warning("%s: dimension %d (size %d) does not divide by mesh axes "
                     "%s; sharding it over %s instead.", what, dim, size,
                     axes, tuple(kept) or "none (replicated)")
    fitted.append(_as_entry(kept))
  return P(*fitted)


def logical_sharding(mesh, logical_spec: Sequence[Any],
                     rules: Rules = DEFAULT_RULES,
                     shape: Optional[Sequence[int]] = None,
                     what: str = "array") -> NamedSharding:
  """NamedSharding for logical names; fitted to `shape` when it is given."""
  spec = logical_to_mesh_spec(logical_spec, rules)
  if shape is not None:
    spec = fit_spec_to_shape(spec, shape, mesh, what)
  return NamedSharding(mesh, spec)


def batch_sharding(mesh, rules: Rules = DEFAULT_RULES) -> NamedSharding:
  """Sharding of `[batch, seq]` arrays: P(("data", "fsdp"), None) by default."""
  return logical_sharding(mesh, ("batch", "length"), rules)


def shard_batch(batch, mesh, rules: Rules = DEFAULT_RULES):
  """Global arrays, sharded over the batch axes, from each host's rows.

  Every host calls this with its own rows (`mesh.process_batch_slice`) of
  every array; the global batch is the hosts' rows stacked in process order.
  Single-host, the local batch is the global one.

  Args:
    batch: a pytree of host-local arrays, `[local_batch, ...]` (numpy or jax).
    mesh: the mesh.
    rules: "batch" shards dimension 0, "length" dimension 1.

  Returns:
    The same pytree of global `jax.Array`s.

  Raises:
    ValueError: for a scalar, or a global batch that does not divide by the
      size of the batch's mesh axes (it must not silently replicate).
  """
  count = jax.process_count()

  def one(path, x):
    if x.ndim == 0:
      raise ValueError(f"{jax.tree_util.keystr(path)}: cannot shard a scalar "
                       f"over the batch.")
    global_shape = (x.shape[0] * count,) + tuple(x.shape[1:])
    logical = (("batch", "length") + (None,) * x.ndim)[:x.ndim]
    spec = logical_to_mesh_spec(logical, rules)
    fitted = fit_spec_to_shape(spec, global_shape, mesh, "batch")
    if fitted[0] != spec[0]:
      raise ValueError(f"{jax.tree_util.keystr(path)}: the global batch "
                       f"{global_shape[0]} does not divide by the size of "
                       f"mesh axes {spec[0]}.")
    return jax.make_array_from_process_local_data(
        NamedSharding(mesh, fitted), x, global_shape)

  return jax.tree_util.tree_map_with_path(one, batch)
