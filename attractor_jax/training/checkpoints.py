"""Checkpoints: an orbax CheckpointManager over state, data state and config.

Layout (one directory per saved step, orbax's default naming):

    workdir/checkpoints/<step>/state/      params + optimizer state + step
                                           (a pytree, orbax PyTreeSave)
    workdir/checkpoints/<step>/data/       the data iterator's state (JSON)
    workdir/checkpoints/<step>/config/     the model / training config (JSON)
    workdir/checkpoints/<step>/checksums/  one checksum per array (JSON)
    workdir/set_aside_checkpoints/<step>-<why>-<time>/
                                           steps found unreadable, or saved
                                           just before training diverged

Saves are asynchronous (the call returns once arrays are copied off the
device; `wait_until_finished` blocks). The last `max_to_keep` *confirmed*
steps are kept: a step is confirmed by `confirm()`, which the trainer calls
once the step after it trained normally, so a checkpoint of parameters that
turned out to diverge never rotates a good one out (`set_aside_unconfirmed`
moves such checkpoints away).
Orbax writes a step into a temporary directory and renames it when complete,
so a process killed mid-save leaves only a temporary directory, which is
ignored and removed when the directory is opened again. A run started on a
workdir that holds checkpoints resumes from the latest readable one:

    ckpt = Checkpointer(workdir, max_to_keep=3, save_interval_steps=1000)
    restored = ckpt.restore_latest_readable(abstract_state)
    if restored is not None:
      state, data_state, saved_config = restored
    ...
    ckpt.save(step, state, data_state, config)   # no-op off the interval
    ...
    ckpt.close()

Restoring checks the saved tree against the target (every missing or
reshaped array is named) and the arrays against the checksums written with
them (see `checkpoint_integrity`).

Preemption: `reached_preemption(step)` is orbax's multi-host sync point,
true on every host at the same step once the job has received a preemption
notice (when `jax.distributed` was initialised). The trainer saves there,
waits until the save is durable and exits (`run_guards.PreemptionWatcher`).

Why one module of ~440 lines: saving, restoring, verifying and setting
aside checkpoints are one protocol over one folder layout.
"""

from __future__ import annotations

import re
import time
from typing import Any, Mapping, NamedTuple, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from attractor_jax import errors
from attractor_jax.models.config import config_to_dict
from attractor_jax.training import checkpoint_integrity as integrity

SET_ASIDE_DIR = "set_aside_checkpoints"


class CheckpointError(errors.UserError, RuntimeError):
  """A checkpoint could not be read (corrupt, partial or missing)."""


class ConfigMismatchError(errors.ConfigError):
  """A workdir's checkpoint does not fit the model of the current config."""


# -------------------------------------------------------------------- config


def _flatten(tree: Mapping, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping) and value:
      flat.update(_flatten(value, name + "."))
    else:
      flat[name] = value
  return flat


def config_differences(saved_config: Any, current_config: Any) -> list[str]:
  """"field: saved X, current Y" for every field that differs (dotted paths).

  A field present in only one config counts as a difference.
  """
  saved = _flatten(config_to_dict(saved_config))
  current = _flatten(config_to_dict(current_config))
  missing = object()
  show = lambda v: "<missing>" if v is missing else repr(v)
  diffs = []
  for name in sorted(set(saved) | set(current)):
    old, new = saved.get(name, missing), current.get(name, missing)
    if old != new:
      diffs.append(f"{name}: saved {show(old)}, current {show(new)}")
  return diffs


def check_compatible(saved_config: Any, current_config: Any) -> None:
  """Raises ConfigMismatchError naming every field where the configs differ.

  Args:
    saved_config: the config stored with a checkpoint (dict, dataclass or
      ConfigDict; nested configs are compared field by field).
    current_config: the config of this run.
  """
  diffs = config_differences(saved_config, current_config)
  if diffs:
    raise ConfigMismatchError(
        f"The checkpoint's config differs from this run's in {len(diffs)} "
        "field(s):\n  " + "\n  ".join(diffs) + "\nUse a fresh workdir, or "
        "make the config match the checkpoint's.")


# -------------------------------------------------------------------- state


def abstract_like(state: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) of a pytree of arrays."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Restored(NamedTuple):
  """What `Checkpointer.restore` read back."""

  state: Any
  data_state: dict
  config: dict
  step: int


class Checkpointer:
  """Saves and restores training checkpoints under `workdir/checkpoints`.

  Attributes:
    directory: the checkpoint directory.
    manager: the underlying `ocp.CheckpointManager`.
  """

  def __init__(self, workdir: epath.PathLike, *, max_to_keep: Optional[int] = 3,
               save_interval_steps: int = 1, async_save: bool = True,
               read_only: bool = False):
    """Opens (creating if needed) `workdir/checkpoints`.

    Temporary directories of saves that never finished (the process died
    mid-save) are removed here, unless `read_only`.

    Args:
      workdir: the run's directory.
      max_to_keep: how many of the latest confirmed checkpoints to keep
        (None: all); unconfirmed ones are kept in addition.
      save_interval_steps: `save` writes only at multiples of this, at the
        first step saved into an empty directory (orbax's InitialSavePolicy),
        when forced, or at a preemption sync point.
      async_save: write in a background thread.
      read_only: only read (evaluation, sampling): nothing is created,
        cleaned up or saved, so a trainer may be writing meanwhile.
    """
    self.directory = epath.Path(workdir) / "checkpoints"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,
        save_interval_steps=0 if read_only else save_interval_steps,
        enable_async_checkpointing=async_save, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only)
    handlers = {"state": ocp.PyTreeCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                "config": ocp.JsonCheckpointHandler(),
                "checksums": ocp.JsonCheckpointHandler()}
    # Orbax warns that a read-only directory is read-only; that is the point.
    verbosity = logging.get_verbosity()
    if read_only:
      logging.set_verbosity(logging.ERROR)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_handlers=handlers)
    finally:
      logging.set_verbosity(verbosity)
    self._max_to_keep = max_to_keep
    self._unconfirmed: list[int] = []

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
    if not (force or self.manager.should_save(step)):
      return False
    args = ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data=ocp.args.JsonSave(dict(data_state or {})),
        config=ocp.args.JsonSave(config_to_dict(config)),
        checksums=ocp.args.JsonSave(integrity.tree_checksums(state)))
    saved = self.manager.save(step, args=args, force=force)
    if saved:
      self._unconfirmed.append(step)
    return saved

  def confirm(self) -> None:
    """Marks the checkpoints saved so far as good, then drops the oldest
    confirmed ones beyond `max_to_keep`."""
    if not self._unconfirmed:
      return
    self._unconfirmed.clear()
    if self._max_to_keep is None:
      return
    steps = self.all_steps()
    for step in steps[:max(len(steps) - self._max_to_keep, 0)]:
      self.manager.delete(step)

  def set_aside_unconfirmed(self, why: str) -> list[epath.Path]:
    """Moves the unconfirmed checkpoints under `set_aside_checkpoints/` (so
    that a resumed run starts from the last confirmed one); returns where."""
    self.wait_until_finished()
    moved = [self._move_aside(step, why) for step in self._unconfirmed
             if step in self.all_steps()]
    self._unconfirmed.clear()
    return moved

  def _restore(self, step: int, **items):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:   # orbax raises many types for damaged files.
      raise CheckpointError(
          f"Could not read item(s) {sorted(items)} of the checkpoint at "
          f"step {step} in {self.step_path(step)}: it is corrupt or "
          f"incomplete ({type(e).__name__}: {_first_line(e)})") from e

  def _saved_tree(self, step: int) -> Any:
    try:
      metadata = self.manager.item_metadata(step)["state"]
    except Exception as e:   # same: a damaged step fails in many ways.
      raise CheckpointError(
          f"Could not read the array metadata of the checkpoint at step "
          f"{step} in {self.step_path(step)}: it is corrupt or incomplete "
          f"({type(e).__name__}: {_first_line(e)})") from e
    tree = getattr(metadata, "tree", metadata)
    if not jax.tree.leaves(tree):
      raise CheckpointError(
          f"The checkpoint at step {step} in {self.step_path(step)} has no "
          "array metadata: it is corrupt or incomplete.")
    return tree

  def restore(self, step: Optional[int] = None, abstract_state: Any = None, *,
              current_config: Any = None, partial: bool = False):
    """Restores `step` (default: the latest) as a `Restored` tuple.

    Args:
      step: which checkpoint; None for the latest.
      abstract_state: the target pytree (ShapeDtypeStructs or arrays): the
        restored state takes its structure, dtypes and shardings, and must
        match the saved tree exactly (every difference is named in the
        error). None restores the saved structure as is.
      current_config: this run's config; when the trees differ, the error
        also lists the config fields that differ from the saved config.
      partial: `abstract_state` is a subset of the saved tree (e.g. only the
        parameters); nothing else is read.

    Raises:
      FileNotFoundError: no checkpoint (at that step).
      ConfigMismatchError: the checkpoint does not fit `abstract_state`.
      CheckpointError: the checkpoint cannot be read, or its arrays do not
        match the checksums saved with them.
    """
    self.wait_until_finished()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise errors.MissingPathError(f"No checkpoint in {self.directory}.")
    elif step not in self.all_steps():
      raise errors.MissingPathError(
          f"No checkpoint of step {step} in {self.directory}; have "
          f"{self.all_steps()}.")
    has_checksums = (self.step_path(step) / "checksums").exists()
    meta_items = dict(data=ocp.args.JsonRestore(),
                      config=ocp.args.JsonRestore())
    if has_checksums:
      meta_items["checksums"] = ocp.args.JsonRestore()
    meta = self._restore(step, **meta_items)
    saved_config = dict(meta.config or {})
    if abstract_state is None:
      state_args = ocp.args.PyTreeRestore()
    else:
      abstract_state = abstract_like(abstract_state)
      self._check_structure(step, abstract_state, saved_config,
                            current_config, partial)
      state_args = ocp.args.PyTreeRestore(
          item=abstract_state,
          restore_args=ocp.checkpoint_utils.construct_restore_args(
              abstract_state),
          partial_restore=partial)
    state = self._restore(step, state=state_args).state
    if has_checksums:
      bad = integrity.checksum_mismatches(meta.checksums or {}, state)
      if bad:
        raise CheckpointError(
            f"The checkpoint at step {step} in {self.step_path(step)} is "
            f"corrupt: {len(bad)} array(s) do not match the checksums saved "
            f"with them ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}"
            ").")
    return Restored(state, dict(meta.data or {}), saved_config, step)

  def _check_structure(self, step, abstract_state, saved_config,
                       current_config, partial) -> None:
    diffs = integrity.structure_differences(
        self._saved_tree(step), abstract_state, partial=partial)
    if not diffs:
      return
    message = (f"The checkpoint at step {step} in {self.step_path(step)} "
               f"does not fit this model: {len(diffs)} array(s) differ:\n  "
               + "\n  ".join(diffs[:20])
               + ("\n  ..." if len(diffs) > 20 else ""))
    if current_config is not None:
      fields = config_differences(saved_config, current_config)
      if fields:
        message += ("\nConfig fields that differ from the checkpoint's:\n  "
                    + "\n  ".join(fields))
    message += _layer_layout_hint(diffs)
    raise ConfigMismatchError(
        message + "\nUse a fresh workdir, or make the config match the "
        "checkpoint.")

  def restore_latest_readable(self, abstract_state: Any = None, *,
                              current_config: Any = None,
                              partial: bool = False,
                              move_corrupt: bool = True):
    """`restore` of the newest checkpoint that reads back intact, or None.

    A step that cannot be read (truncated or corrupted files, a failed
    checksum) is reported with a warning naming it and, with `move_corrupt`,
    moved to `workdir/set_aside_checkpoints/` (kept, not deleted, out of
    the way of the steps a resumed run will save); the next older step is
    tried. A checkpoint that does not fit the model is not a corruption: its
    ConfigMismatchError propagates.

    Returns:
      None if the directory holds no checkpoint at all.

    Raises:
      CheckpointError: checkpoints exist but none of them is readable.
    """
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return self.restore(step, abstract_state,
                            current_config=current_config, partial=partial)
      except CheckpointError as e:
        failures.append(str(e))
        where = ""
        if move_corrupt:
          where = f"; moved it to {self._move_aside(step, 'unreadable')}"
        logging.warning("Skipping an unreadable checkpoint%s. %s", where, e)
        print(f"warning: skipping the unreadable checkpoint of step {step}"
              f"{where}.", flush=True)
    if failures:
      raise CheckpointError(
          f"None of the {len(failures)} checkpoint(s) in {self.directory} "
          "can be read; the newest failed with: " + failures[0])
    return None

  def _move_aside(self, step: int, why: str) -> epath.Path:
    """Moves a step's directory under `set_aside_checkpoints/`."""
    target_dir = self.directory.parent / SET_ASIDE_DIR
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{step}-{why}-{time.strftime('%Y%m%d-%H%M%S')}"
    self.step_path(step).rename(target)
    self.manager.reload()
    return target

  def wait_until_finished(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves, confirms them (nothing is left to confirm
    after `set_aside_unconfirmed`) and releases the manager."""
    self.wait_until_finished()
    self.confirm()
    self.manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _layer_layout_hint(diffs: list[str]) -> str:
  """How to convert, when the trees differ in stacked vs per-layer blocks."""
  found = re.search(r"(?:^|/)(backbone|blocks)/layers/", "\n".join(diffs),
                    re.MULTILINE)
  if not found:
    return ""
  key = found.group(1)
  return (
      f"\nThe checkpoint and the model lay out the {key!r} blocks "
      "differently (model.scan_layers): one holds them per layer, the other "
      "stacked. Set --config.model.scan_layers to the checkpoint's value, or "
      "convert. A per-layer checkpoint into a scanned model: restore into "
      "the per-layer layout, then stack it:\n"
      f"  target = {{'model': block_stack.unstack_layers(scanned_params, "
      f"{key!r})}}\n"
      f"  params = block_stack.stack_layers(checkpointer.restore(step, "
      f"target, partial=True).state['model'], {key!r})\n"
      "(attractor_jax.nn.block_stack; the other way round, swap the two "
      "functions).")


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return text[0][:300] if text else ""
