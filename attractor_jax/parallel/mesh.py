"""The device mesh ("data", "fsdp", "tensor") and each host's share of a batch.

    mesh = make_mesh(data=-1, fsdp=4, tensor=2)  # -1: the remaining devices

Multi-host: `jax.distributed.initialize()` must run before any other JAX
call (the commands do it: `parallel.distributed`); afterwards `jax.devices()`
lists every host's devices and `make_mesh` spans them all. On GPUs and CPUs the devices are ordered host by
host and the mesh is filled row-major with "tensor" varying fastest, so keep
`fsdp * tensor` a divisor of the devices per host: then only the data-parallel
gradient all-reduce crosses hosts. TPU topologies are handled by
`jax.make_mesh`; multi-slice TPU (and GPU clusters whose nodes should each
hold a whole model replica) take `dcn_data`, the data parallelism across
slices (or processes), and get `mesh_utils.create_hybrid_device_mesh`.

Each host loads only its rows of the global batch (`process_batch_slice`) and
`rules.shard_batch` assembles the global, sharded arrays from them.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(sizes: Sequence[int], num_devices: int
                       ) -> tuple[int, ...]:
  """Sizes of the mesh axes, one -1 replaced so that they use every device.

  Args:
    sizes: one size per mesh axis; positive, or -1 (at most one).
    num_devices: how many devices the mesh must use.

  Returns:
    The sizes, with product `num_devices`.

  Raises:
    ValueError: for a size other than -1 below 1, more than one -1, or sizes
      whose product does not divide (or, without -1, equal) `num_devices`.
  """
  sizes = tuple(int(s) for s in sizes)
  if any(s < 1 and s != -1 for s in sizes):
    raise ValueError(f"Mesh axis sizes must be positive or -1; got {sizes}.")
  if sizes.count(-1) > 1:
    raise ValueError(f"At most one mesh axis size may be -1; got {sizes}.")
  fixed = math.prod(s for s in sizes if s != -1)
  if num_devices % fixed:
    raise ValueError(f"Mesh axis sizes {sizes} (product {fixed}) do not "
                     f"divide the number of devices, {num_devices}.")
  if -1 in sizes:
    return tuple(num_devices // fixed if s == -1 else s for s in sizes)
  if fixed != num_devices:
    raise ValueError(f"Mesh axis sizes {sizes} use {fixed} of the "
                     f"{num_devices} devices; set one size to -1 or pass "
                     f"`devices` to use a subset.")
  return sizes


def dcn_groups(devices: Optional[Sequence[jax.Device]] = None
               ) -> tuple[int, bool]:
  """(number of groups, grouped by slice) of the devices that `dcn_data`
  spreads over: TPU slices when there are several, else processes."""
  devices = list(jax.devices() if devices is None else devices)
  slices = {getattr(d, "slice_index", None) for d in devices}
  if None not in slices and len(slices) > 1:
    return len(slices), True
  return len({d.process_index for d in devices}), False


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Optional[Sequence[jax.Device]] = None, *,
              dcn_data: int = 1) -> Mesh:
  """A mesh with axes ("data", "fsdp", "tensor") over all (or given) devices.

  Args:
    data: data-parallel size within a slice (batch split, parameters
      replicated).
    fsdp: fully sharded data-parallel size (batch and parameters split).
    tensor: tensor-parallel size (heads, MLP and vocabulary split).
    devices: the devices to use, flat; default `jax.devices()` (every host).
      One size may be -1 to take the devices the others leave.
    dcn_data: data parallelism across slices, over the data-centre network
      (multi-slice TPU; elsewhere across processes). Each of the `dcn_data`
      groups of devices (a slice, or a process) holds a whole
      `data x fsdp x tensor` mesh over its fast interconnect, and only the
      gradient all-reduce crosses groups. The "data" axis is then
      `dcn_data * data` long, group-major.

  Returns:
    A `jax.sharding.Mesh` whose axes are all `AxisType.Auto` (shardings come
    from `jit` in/out shardings and constraints, not from types).

  Raises:
    ValueError: see `resolve_mesh_shape`; or `dcn_data` that does not match
      the number of slices (or processes).
  """
  devices = list(jax.devices() if devices is None else devices)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if dcn_data == 1:
    shape = resolve_mesh_shape((data, fsdp, tensor), len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types,
                         devices=devices)
  groups, by_slice = dcn_groups(devices)
  if dcn_data < 1 or groups != dcn_data:
    raise ValueError(
        f"mesh dcn_data={dcn_data} needs as many "
        f"{'slices' if by_slice else 'processes'} as that; the devices span "
        f"{groups}.")
  shape = resolve_mesh_shape((data, fsdp, tensor), len(devices) // dcn_data)
  grid = mesh_utils.create_hybrid_device_mesh(
      shape, (dcn_data, 1, 1), devices, process_is_granule=not by_slice,
      allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES, axis_types=axis_types)


def process_batch_slice(global_batch: int,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> slice:
  """The rows of a global batch this host loads: contiguous, equal shares.

  Args:
    global_batch: the batch size summed over all hosts.
    process_index: this host; default `jax.process_index()`.
    process_count: the number of hosts; default `jax.process_count()`.

  Returns:
    `slice(start, stop)` of length `global_batch // process_count`.

  Raises:
    ValueError: if `global_batch` does not divide by the number of hosts.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} is outside [0, {count}).")
  if global_batch < 1 or global_batch % count:
    raise ValueError(f"The global batch size {global_batch} must be a "
                     f"positive multiple of the number of processes, {count}.")
  share = global_batch // count
  return slice(index * share, (index + 1) * share)
