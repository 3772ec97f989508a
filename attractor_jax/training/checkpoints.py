"""Checkpoints: an orbax CheckpointManager over state, data state and config.

Layout (one directory per saved step, orbax's default naming):

    workdir/checkpoints/<step>/state/    params + optimizer state + step
                                         (ocp.args.StandardSave, a pytree)
    workdir/checkpoints/<step>/data/     the data iterator's state (JSON)
    workdir/checkpoints/<step>/config/   the model / training config (JSON)

Saves are asynchronous (the call returns once arrays are copied off the
device; `wait_until_finished` blocks); the last `max_to_keep` steps are kept.
A run started on a workdir that holds checkpoints resumes from the latest:

    ckpt = Checkpointer(workdir, max_to_keep=3, save_interval_steps=1000)
    restored = ckpt.maybe_restore(abstract_state, current_config=config)
    if restored is not None:
      state, data_state, saved_config = restored
    ...
    ckpt.save(step, state, data_state, config)   # no-op off the interval
    ...
    ckpt.close()

Preemption: orbax's `CheckpointManager.save` already saves, off the interval,
at a step where `reached_preemption(step)` is true (a multi-host sync point
set when the job receives a preemption notice, e.g. a SIGTERM on Cloud TPU, if
`jax.distributed` was initialised with preemption sync). A train loop should
check `Checkpointer.reached_preemption(step)` after `save` and, if true,
`wait_until_finished()` and exit (MaxText style).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

# Config fields that fix parameter shapes (matched as dotted suffixes, so
# "dim" matches both "dim" and "model.dim").
MODEL_SHAPE_KEYS = ("kind", "vocab_size", "dim", "num_heads", "mlp_dim",
                    "num_layers", "head_layers", "prelude_layers",
                    "coda_layers", "mlp", "qk_norm", "tie_embeddings",
                    "param_dtype")
ITEMS = ("state", "data", "config")


class CheckpointError(RuntimeError):
  """A checkpoint could not be read (corrupt, partial or missing)."""


class ConfigMismatchError(ValueError):
  """A workdir's saved config is incompatible with the current one."""


# -------------------------------------------------------------------- config


def config_to_dict(config: Any) -> dict:
  """A JSON-serialisable dict of a dataclass, ConfigDict, mapping or None.

  Values JSON cannot hold (dtypes, tuples' contents, enums...) become their
  `str`; tuples become lists.
  """
  if config is None:
    return {}
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  elif dataclasses.is_dataclass(config) and not isinstance(config, type):
    config = dataclasses.asdict(config)
  return json.loads(json.dumps(_jsonable(config)))


def _jsonable(x: Any) -> Any:
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return _jsonable(dataclasses.asdict(x))
  if hasattr(x, "to_dict"):
    return _jsonable(x.to_dict())
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (bool, int, str)) or x is None:
    return x
  if isinstance(x, float):
    return x if math.isfinite(x) else str(x)
  if isinstance(x, (np.generic, np.ndarray, jax.Array)) and np.ndim(x) == 0:
    return _jsonable(np.asarray(x).item())
  return str(x)


def _flatten(tree: Mapping, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def _selected(flat_key: str, keys: Optional[Iterable[str]]) -> bool:
  if keys is None:
    return True
  return any(flat_key == k or flat_key.endswith("." + k) for k in keys)


def check_compatible(saved_config: Any, current_config: Any,
                     keys: Optional[Iterable[str]] = MODEL_SHAPE_KEYS
                     ) -> None:
  """Raises ConfigMismatchError naming every differing field.

  Args:
    saved_config: the config stored with a checkpoint (dict, dataclass or
      ConfigDict; nested configs are compared field by field).
    current_config: the config of this run.
    keys: fields to compare, as dotted paths or dotted suffixes ("dim"
      matches "model.dim"); None compares every field. A field present in
      only one config counts as a difference.
  """
  saved = _flatten(config_to_dict(saved_config))
  current = _flatten(config_to_dict(current_config))
  missing = object()
  diffs = []
  for name in sorted(set(saved) | set(current)):
    if not _selected(name, keys):
      continue
    old, new = saved.get(name, missing), current.get(name, missing)
    if old != new:
      show = lambda v: "<missing>" if v is missing else repr(v)
      diffs.append(f"{name}: saved {show(old)}, current {show(new)}")
  if diffs:
    raise ConfigMismatchError(
        "The checkpoint's config does not match this run's config in "
        f"{len(diffs)} field(s):\n  " + "\n  ".join(diffs) +
        "\nUse a fresh workdir, or make the config match the checkpoint.")


# -------------------------------------------------------------------- state


def abstract_like(state: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) of a pytree of arrays."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
  """Saves and restores training checkpoints under `workdir/checkpoints`.

  Attributes:
    directory: the checkpoint directory.
    manager: the underlying `ocp.CheckpointManager`.
  """

  def __init__(self, workdir: epath.PathLike, *, max_to_keep: Optional[int] = 3,
               save_interval_steps: int = 1, async_save: bool = True):
    """Opens (creating if needed) `workdir/checkpoints`.

    Args:
      workdir: the run's directory.
      max_to_keep: how many of the latest checkpoints to keep (None: all).
      save_interval_steps: `save` writes only at multiples of this, at the
        first step saved into an empty directory (orbax's InitialSavePolicy),
        when forced, or at a preemption sync point.
      async_save: write in a background thread.
    """
    self.directory = epath.Path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=ITEMS)

  def step_path(self, step: int) -> epath.Path:
    """Where step `step` lives."""
    return self.directory / str(step)

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """The latest finished checkpoint's step, or None."""
    return self.manager.latest_step()

  def reached_preemption(self, step: int) -> bool:
    """True at a preemption sync point (see module docstring)."""
    return self.manager.reached_preemption(step)

  def save(self, step: int, state: Any, data_state: Optional[Mapping] = None,
           config: Any = None, *, force: bool = False) -> bool:
    """Starts saving a checkpoint; returns whether one is being written.

    Nothing is written off the save interval (unless `force`, or at a
    preemption point), nor for a step already saved.

    Args:
      step: the training step (the checkpoint's name).
      state: a pytree of arrays: params, optimizer state, step (e.g.
        `nnx.as_pure` of nnx States, or plain dicts).
      data_state: the data iterator's state, a JSON-serialisable dict.
      config: the run's config (dataclass, ConfigDict or dict).
      force: save regardless of the interval.
    """
    if step in self.all_steps():
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(dict(data_state or {})),
        config=ocp.args.JsonSave(config_to_dict(config)))
    return self.manager.save(step, args=args, force=force)

  def _restore(self, step: int, **items):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:   # orbax raises many types for damaged files.
      raise CheckpointError(
          f"Could not restore item(s) {sorted(items)} of the checkpoint at "
          f"step {step} in {self.step_path(step)}: it may be corrupt or "
          "partially written, or not match the target's structure "
          f"({type(e).__name__}: {e}). Delete that step's directory to resume "
          "from an earlier one.") from e

  def restore(self, step: Optional[int] = None, abstract_state: Any = None, *,
              current_config: Any = None,
              compatible_keys: Optional[Iterable[str]] = MODEL_SHAPE_KEYS):
    """Restores (state, data_state, config) of `step` (default: latest).

    Args:
      step: which checkpoint; None for the latest.
      abstract_state: the target pytree (ShapeDtypeStructs or arrays): the
        restored state takes its structure, dtypes and shardings. None
        restores the saved structure as is.
      current_config: if given, checked against the saved config first
        (`check_compatible` with `compatible_keys`).
      compatible_keys: see `check_compatible`.

    Raises:
      FileNotFoundError: no checkpoint (at that step).
      ConfigMismatchError: the saved config differs from `current_config`.
      CheckpointError: the checkpoint cannot be read.
    """
    self.wait_until_finished()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    elif step not in self.all_steps():
      raise FileNotFoundError(f"No checkpoint of step {step} in "
                              f"{self.directory}; have {self.all_steps()}.")
    meta = self._restore(step, data=ocp.args.JsonRestore(),
                         config=ocp.args.JsonRestore())
    if current_config is not None:
      check_compatible(meta.config, current_config, compatible_keys)
    if abstract_state is not None:
      abstract_state = abstract_like(abstract_state)
    state = self._restore(
        step, state=ocp.args.StandardRestore(abstract_state)).state
    return state, dict(meta.data or {}), dict(meta.config or {})

  def maybe_restore(self, abstract_state: Any = None, *,
                    current_config: Any = None,
                    compatible_keys: Optional[Iterable[str]] = MODEL_SHAPE_KEYS
                    ):
    """`restore` of the latest checkpoint, or None if there is none."""
    if self.latest_step() is None:
      return None
    return self.restore(None, abstract_state, current_config=current_config,
                        compatible_keys=compatible_keys)

  def wait_until_finished(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and releases the manager."""
    self.manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
