"""Checks of the config fields every task shares: integers and numbers in
range, the optimizer and its schedule, the mesh against the devices.

Each raises `errors.ConfigError` naming the field and the fix; a task's
`validate_config` calls them before anything is read or written.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import jax

from attractor_jax import errors
from attractor_jax.parallel import mesh as mesh_lib
from attractor_jax.training import optimizers


def check_integer(config, name: str, least: int) -> int:
  """config.<name> (dotted) as an int >= least, or a ConfigError."""
  value = _get(config, name)
  if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
      or value < least):
    raise errors.ConfigError(
        f"config.{name} must be an integer >= {least}; got {value!r}.\n"
        f"Pass --config.{name}=N with N >= {least}.")
  return int(value)

def check_number(config, name: str, low: float = -math.inf,
                 high: float = math.inf, *,
                 low_open: bool = False, high_open: bool = False) -> float:
  """config.<name> (dotted) as a number in the range, or a ConfigError."""
  value = _get(config, name)
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
  if ok:
    ok = (value > low if low_open else value >= low) and (
        value < high if high_open else value <= high)
  if not ok:
    if math.isinf(high):
      rule = (">" if low_open else ">=") + f" {low:g}"
    else:
      rule = ("in " + ("(" if low_open else "[") + f"{low:g}, {high:g}"
              + (")" if high_open else "]"))
    raise errors.ConfigError(
        f"config.{name} must be a number {rule}; got {value!r}.\n"
        f"Pass --config.{name}=X with X {rule}.")
  return float(value)

def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config

def check_optimizer(config) -> None:
  """The optimizer's name, schedule, fields and ranges."""
  hint = ("\nFix --config.optimizer.* (the fields of OptimizerConfig in "
          "attractor_jax/training/optimizers.py).")
  fields = dict(config.optimizer.to_dict(), total_steps=config.total_steps)
  try:
    optimizer_config = optimizers.OptimizerConfig.from_config(fields)
  except (TypeError, ValueError) as error:
    raise errors.ConfigError(f"optimizer: {error}{hint}") from error
  ranges = dict(lr=dict(low=0, low_open=True), decay_fraction=dict(low=0,
                                                                   high=1),
                weight_decay=dict(low=0), fp_lr_scale=dict(low=0))
  for name, bounds in ranges.items():
    if name in config.optimizer:
      check_number(config, "optimizer." + name, **bounds)
  if "warmup_steps" in config.optimizer:
    check_integer(config, "optimizer.warmup_steps", 0)
  if config.optimizer.get("clip_norm") is not None:
    check_number(config, "optimizer.clip_norm", low=0)
  try:
    optimizers.lr_schedule(optimizer_config)
    optimizers.make_optimizer(optimizer_config)
  except (TypeError, ValueError) as error:
    raise errors.ConfigError(f"optimizer: {error}{hint}") from error

def check_mesh(config, num_devices: Optional[int],
               batch_fields: tuple[str, ...] = ("batch_size",)) -> None:
  """The mesh against the devices, and the batches (`batch_fields` of the
  config, each a global batch) against the processes and the mesh."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  sizes = tuple(config.mesh.get(axis) for axis in mesh_lib.MESH_AXES)
  dcn_data = config.mesh.get("dcn_data", 1)
  if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
             for s in sizes + (dcn_data,)):
    raise errors.ConfigError(
        f"config.mesh sizes must be integers; got {sizes}, dcn_data "
        f"{dcn_data!r}.\nPass --config.mesh.data/fsdp/tensor/dcn_data as "
        "integers (-1: the rest, not for dcn_data).")
  groups, by_slice = mesh_lib.dcn_groups()
  if dcn_data > 1 and dcn_data != groups:
    raise errors.ConfigError(
        f"config.mesh.dcn_data {dcn_data}: the devices span {groups} "
        f"{'slice' if by_slice else 'process'}(es).\nSet "
        f"--config.mesh.dcn_data={groups}"
        + ("" if groups == 1 else " or 1") + ".")
  if dcn_data < 1 or num_devices % dcn_data:
    raise errors.ConfigError(
        f"config.mesh.dcn_data {dcn_data} does not divide the {num_devices} "
        "device(s).\nSet --config.mesh.dcn_data to the number of slices (or "
        "processes) the data-parallel groups span; 1 for one slice.")
  try:
    data, fsdp, _ = mesh_lib.resolve_mesh_shape(sizes,
                                                num_devices // dcn_data)
  except ValueError as error:
    raise errors.ConfigError(
        f"mesh (data, fsdp, tensor) = {sizes}: {error}\nSet "
        "--config.mesh.data/fsdp/tensor so that their product divides the "
        f"{num_devices // dcn_data} device(s) of each of the {dcn_data} "
        "data-parallel group(s); -1 takes the rest.") from error
  data *= dcn_data
  processes = jax.process_count()
  for field in batch_fields:
    global_batch = config[field]
    if global_batch % processes:
      raise errors.ConfigError(
          f"The batch of {global_batch} does not split over the {processes} "
          f"processes (config.{field} is the global batch).\nPass "
          f"--config.{field}= a multiple of {processes}.")
    if global_batch % (data * fsdp):
      raise errors.ConfigError(
          f"The batch of {global_batch} does not split over the mesh's "
          f"{data * fsdp} data-parallel devices (mesh.data {data} x mesh.fsdp "
          f"{fsdp}).\nPass --config.{field}= a multiple of {data * fsdp}, "
          "or change --config.mesh.*.")
