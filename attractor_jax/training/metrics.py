"""Metrics: TensorBoard events and a JSONL log in the workdir, a console line.

    writer = MetricWriter(workdir)
    progress = ProgressLine(total_steps, tokens_per_step=batch * seq)
    ...
    scalars = {"loss": loss, "perplexity": perplexity(loss), "lr": lr,
               **summarize_solver_stats(out.stats), **gate_means(model)}
    writer.write_scalars(step, scalars)
    progress.print(step, scalars)
    ...
    writer.close()

Files: `workdir/tensorboard/events.out.tfevents.*` (tensorboardX, no
TensorFlow needed) and `workdir/metrics.jsonl`, one JSON object per
`write_scalars` call: {"step": int, name: float, ...}. JSON has no NaN or
infinity, so non-finite values are written as the strings "nan", "inf" and
"-inf" (`float()` reads them back); the line stays standard JSON. Two calls
for the same step (say train and eval) write two lines.

A workdir on an object store (`gs://BUCKET/PATH`, through etils.epath) has no
append and no local folder: metrics.jsonl is kept in memory and the object
rewritten whole, and the event files are written to a local temporary folder
and copied into `workdir/tensorboard/`; both at most every `sync_secs`
(30 s), and on `flush` and `close`.

Why one module of ~520 lines: the writer, the readers of its two formats
and the scalar summaries share one record format (names, steps, how
non-finite values are written).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from typing import (Any, Callable, Iterable, Mapping, Optional, Sequence,
                    TextIO)

import jax
import jax.numpy as jnp
import numpy as np
import tensorboardX
from etils import epath
from flax import nnx
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from attractor_jax import solvers

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
GATE_NAMES = ("attn_gate", "mlp_gate")
# How often a remote workdir's metrics.jsonl and event files are uploaded.
SYNC_SECS = 30.0


def to_float(value: Any) -> float:
  """A Python float of a number or a one-element array (fetched from device)."""
  array = np.asarray(jax.device_get(value))
  if array.size != 1:
    raise ValueError(f"A scalar metric must have one element; got shape "
                     f"{array.shape}.")
  return float(array.reshape(()))


def _json_number(x: float):
  if math.isfinite(x):
    return x
  return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


class MetricWriter:
  """Writes scalars to TensorBoard event files and to `metrics.jsonl`.

  Only process 0 writes (the others hold a disabled writer), so every host
  may call it.
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
               enabled: Optional[bool] = None,
               resume_step: Optional[int] = None,
               sync_secs: float = SYNC_SECS,
               clock: Callable[[], float] = time.monotonic):
    """Opens the writers (creating `workdir`).

    Args:
      workdir: the run's directory, local or gs://BUCKET/PATH.
      tensorboard: also write TensorBoard event files.
      enabled: write at all; default: on process 0 only.
      resume_step: the step training resumes from. Records of later steps
        (written before a crash or preemption, and about to be redone) are
        dropped from metrics.jsonl, and TensorBoard is told to purge them,
        so every step is logged once.
      sync_secs: a remote workdir's files are uploaded at most this often
        (and on `flush` / `close`).
      clock: a seconds counter for `sync_secs` (injectable for tests).
    """
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.workdir = os.fspath(workdir)
    self.remote = _is_remote(self.workdir)
    self.jsonl_path = os.fspath(epath.Path(self.workdir) / JSONL_NAME)
    self.tensorboard_dir = os.fspath(epath.Path(self.workdir)
                                     / TENSORBOARD_DIR)
    self._jsonl = None
    self._summary = None
    self._staging = None        # the local event folder of a remote workdir
    self._sync_secs = sync_secs
    self._clock = clock
    self._synced_at = -math.inf
    if not self.enabled:
      return
    epath.Path(self.workdir).mkdir(parents=True, exist_ok=True)
    purge_step = None
    if resume_step is not None:
      _drop_records_after(self.jsonl_path, resume_step)
      purge_step = resume_step + 1
    if self.remote:
      self._jsonl = _RewrittenObject(epath.Path(self.jsonl_path))
    else:
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    if tensorboard:
      logdir = self.tensorboard_dir
      if self.remote:
        # tensorboardX writes gs:// only through google-cloud-storage (not a
        # dependency): write locally and copy the files through epath.
        self._staging = tempfile.mkdtemp(prefix="attractor-tensorboard-")
        logdir = self._staging
      self._summary = tensorboardX.SummaryWriter(
          logdir=logdir, flush_secs=30, purge_step=purge_step)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs `scalars` (numbers or one-element arrays) at `step`."""
    if not self.enabled:
      return
    values = {str(k): to_float(v) for k, v in scalars.items()}
    record = {"step": int(step)}
    record.update({k: _json_number(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    if self._summary is not None:
      for name, value in values.items():
        self._summary.add_scalar(name, value, int(step))
    if not self.remote:
      self._jsonl.flush()
    elif self._clock() - self._synced_at >= self._sync_secs:
      self._sync()

  def _sync(self) -> None:
    """Uploads a remote workdir's metrics.jsonl and event files."""
    self._synced_at = self._clock()
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._summary is not None:
      self._summary.flush()
    if self._staging is not None:
      remote = epath.Path(self.tensorboard_dir)
      remote.mkdir(parents=True, exist_ok=True)
      for name in sorted(os.listdir(self._staging)):
        local = os.path.join(self._staging, name)
        if os.path.isfile(local):
          with open(local, "rb") as f:
            (remote / name).write_bytes(f.read())

  def flush(self) -> None:
    if self.remote:
      if self.enabled:
        self._sync()
      return
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._summary is not None:
      self._summary.flush()

  def close(self) -> None:
    """Flushes and closes the files (idempotent)."""
    if self._summary is not None:
      self._summary.close()
      self._summary = None
    if self.remote and (self._jsonl is not None or self._staging is not None):
      self._sync()        # the last records and the closed event files
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._staging is not None:
      shutil.rmtree(self._staging, ignore_errors=True)
      self._staging = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _is_remote(path: str) -> bool:
  return "://" in path


class _RewrittenObject:
  """A text file on an object store, which has no append: holds the whole
  text and rewrites the object on `flush` (when something was written)."""

  def __init__(self, path: epath.Path):
    self.path = path
    self._text = io.StringIO()
    if path.exists():
      self._text.write(path.read_text())
    self._dirty = False

  def write(self, text: str) -> None:
    self._text.write(text)
    self._dirty = True

  def flush(self) -> None:
    if self._dirty:
      self.path.write_text(self._text.getvalue())
      self._dirty = False

  def close(self) -> None:
    self.flush()


def _record_step(line: str) -> float:
  """The step of a metrics.jsonl line; inf for a torn (half-written) one."""
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return math.inf


def _drop_records_after(path: str, step: int) -> None:
  """Rewrites a metrics.jsonl without the records of steps after `step`
  (a local file through a temporary file and a rename, an object on gs://
  whole)."""
  target = epath.Path(path)
  if not target.exists():
    return
  with target.open("r") as f:
    lines = f.readlines()
  kept = [line for line in lines if _record_step(line) <= step]
  if len(kept) == len(lines):
    return
  if _is_remote(path):
    target.write_text("".join(kept))
    return
  temporary = path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(temporary, path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
  """The records of a metrics.jsonl file (local or gs://), with "nan"/"inf"
  turned to floats."""
  records = []
  with epath.Path(path).open("r") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        records.append({k: float(v) if isinstance(v, str) else v
                        for k, v in record.items()})
  return records


def read_event_scalars(path: str | os.PathLike
                       ) -> dict[str, list[tuple[int, float]]]:
  """Scalars of a TensorBoard event file (or of every one in a directory),
  local or gs://.

  Reads the TFRecord framing and Event protos with tensorboardX's own code,
  checking each record's CRC, so no TensorFlow or TensorBoard is needed.

  Returns:
    tag -> [(step, value), ...] in file order.

  Raises:
    ValueError: a truncated or corrupt record.
  """
  path = epath.Path(path)
  files = ([path] if path.is_file() else sorted(
      p for p in path.iterdir() if "tfevents" in p.name))
  scalars: dict[str, list[tuple[int, float]]] = {}
  for name in files:
    data = name.read_bytes()
    offset = 0
    while offset < len(data):
      if offset + 12 > len(data):
        raise ValueError(f"Truncated record header in {name} at {offset}.")
      header = data[offset:offset + 8]
      (length,) = struct.unpack("Q", header)
      (header_crc,) = struct.unpack("I", data[offset + 8:offset + 12])
      body = data[offset + 12:offset + 12 + length]
      footer = data[offset + 12 + length:offset + 16 + length]
      if (header_crc != masked_crc32c(header) or len(body) != length
          or len(footer) != 4
          or struct.unpack("I", footer)[0] != masked_crc32c(body)):
        raise ValueError(f"Corrupt or truncated record in {name} at {offset}.")
      offset += 16 + length
      event = event_pb2.Event.FromString(body)
      if event.HasField("summary"):
        for value in event.summary.value:
          if value.HasField("simple_value"):
            scalars.setdefault(value.tag, []).append(
                (int(event.step), float(value.simple_value)))
  return scalars


# ----------------------------------------------------------------- progress


def format_duration(seconds: float) -> str:
  """MM:SS below an hour, H:MM:SS below a day, then "Nd HH:MM:SS"."""
  if not math.isfinite(seconds):
    return "--:--"
  seconds = int(round(max(seconds, 0.0)))
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  if days:
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}"
  if hours:
    return f"{hours}:{minutes:02d}:{secs:02d}"
  return f"{minutes:02d}:{secs:02d}"


def _format_value(x: float) -> str:
  return f"{x:.3g}" if abs(x) < 1e4 or not math.isfinite(x) else f"{x:.4g}"


class ProgressLine:
  """A one-line console summary with throughput and ETA.

      step 120/1000 | loss 3.21 | 5400 tok/s | ETA 02:13

  The rate is measured from the first call (so compilation before it does not
  count) to the latest one.
  """

  def __init__(self, total_steps: int, *, tokens_per_step: Optional[int] = None,
               keys: Iterable[str] = ("loss",),
               clock: Callable[[], float] = time.monotonic,
               stream: Optional[TextIO] = None, unit: str = "tok"):
    """Args:
      total_steps: the last step.
      tokens_per_step: if set, tok/s is computed from the step rate; else a
        "tokens_per_s" scalar is shown when given.
      unit: the short name of what tokens_per_step counts ("tok", "seg").
      keys: scalars to show, in order, when present.
      clock: a seconds counter (injectable for tests).
      stream: where `print` writes (default stdout).
    """
    self.total_steps = total_steps
    self.tokens_per_step = tokens_per_step
    self.keys = tuple(keys)
    self.clock = clock
    self.stream = stream
    self.unit = unit
    self._start: Optional[tuple[int, float]] = None

  def steps_per_second(self, step: int, now: float) -> Optional[float]:
    if self._start is None or step <= self._start[0] or now <= self._start[1]:
      return None
    return (step - self._start[0]) / (now - self._start[1])

  def format(self, step: int, scalars: Optional[Mapping[str, Any]] = None
             ) -> str:
    """The line for `step`; the first call starts the clock."""
    now = self.clock()
    if self._start is None:
      self._start = (step, now)
    scalars = dict(scalars or {})
    parts = [f"step {step}/{self.total_steps}"]
    for key in self.keys:
      if key in scalars:
        parts.append(f"{key} {_format_value(to_float(scalars[key]))}")
    rate = self.steps_per_second(step, now)
    tokens_per_s = None
    if self.tokens_per_step is not None and rate is not None:
      tokens_per_s = rate * self.tokens_per_step
    elif "tokens_per_s" in scalars:
      tokens_per_s = to_float(scalars["tokens_per_s"])
    if tokens_per_s is not None:
      parts.append(f"{tokens_per_s:.0f} {self.unit}/s")
    eta = math.inf if rate is None else (self.total_steps - step) / rate
    parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)

  def print(self, step: int, scalars: Optional[Mapping[str, Any]] = None
            ) -> str:
    """Formats and prints the line (flushed); returns it."""
    line = self.format(step, scalars)
    stream = self.stream or sys.stdout
    print(line, file=stream, flush=True)
    return line


# ----------------------------------------------------------------- scalars


def perplexity(loss: Any) -> jax.Array:
  """exp(mean token cross-entropy)."""
  return jnp.exp(jnp.asarray(loss, jnp.float32))


def summarize_solver_stats(stats, prefix: str = "solver/"
                           ) -> dict[str, jax.Array]:
  """Scalars of a `SolverStats` (from `SolverStats.summary`), or {} for None.

  Keys: iterations_mean/max, residual_mean/max, converged_fraction,
  nonfinite_count, diverged_count, not_converged_count, num_f_evals, each
  with `prefix`. Stats stacked over extra leading axes (micro-batches)
  reduce over all of them.
  """
  if stats is None:
    return {}
  summary = dict(stats.summary())
  summary["not_converged_count"] = jnp.sum(~stats.converged)
  return {prefix + k: jnp.mean(jnp.asarray(v, jnp.float32))
          for k, v in summary.items()}


def backward_scalars(probe_gradient, prefix: str = "backward/"
                     ) -> dict[str, jax.Array]:
  """Scalars of the backward solves that filled a `backward_probe`."""
  stats = solvers.backward_stats(probe_gradient)
  return {prefix + "examples_count": stats.examples,
          prefix + "iterations_mean": stats.mean_iterations,
          prefix + "residual_mean": stats.mean_residual,
          prefix + "not_converged_count": stats.not_converged,
          prefix + "nonfinite_count": stats.nonfinite,
          prefix + "diverged_count": stats.diverged}


# Scalars whose logged value covers every step since the last log, not just
# the logged one: a solver failure on an unlogged step is still counted.
AGGREGATED_PREFIXES = ("solver/", "backward/")


class StepAggregator:
  """Collects per-step scalars between two logs and reduces them.

  Keys under `AGGREGATED_PREFIXES` are reduced over the steps: `*_max` by
  max, `*_count` by sum, the rest by mean. Other keys keep the logged step's
  value. Values stay on device until `reduce` (one transfer per log).
  """

  def __init__(self, prefixes: Sequence[str] = AGGREGATED_PREFIXES):
    self.prefixes = tuple(prefixes)
    self._steps: list[dict] = []

  def add(self, scalars: Mapping[str, Any]) -> None:
    self._steps.append({k: v for k, v in scalars.items()
                        if k.startswith(self.prefixes)})

  def reduce(self, latest: Mapping[str, Any]) -> dict[str, float]:
    """`latest` as floats, its aggregated keys replaced by their reduction
    over the steps added since the last call; starts a new interval."""
    steps = jax.device_get(self._steps)
    self._steps = []
    out = {k: to_float(v) for k, v in jax.device_get(dict(latest)).items()}
    for key in {k for step in steps for k in step}:
      values = np.asarray([to_float(step[key]) for step in steps
                           if key in step])
      if key.endswith("_max"):
        out[key] = float(values.max())
      elif key.endswith("_count"):
        out[key] = float(values.sum())
      else:
        out[key] = float(values.mean())
    return out


def lm_scalars(output, prefix: str = "") -> dict[str, jax.Array]:
  """loss, perplexity, head_contribution and solver stats of an LMOutput."""
  scalars = {}
  if output.loss is not None:
    scalars[prefix + "loss"] = output.loss
    scalars[prefix + "perplexity"] = perplexity(output.loss)
  if output.head_contribution is not None:
    scalars[prefix + "head_contribution"] = jnp.mean(output.head_contribution)
  scalars.update(summarize_solver_stats(output.stats, prefix + "solver/"))
  return scalars


def gate_means(model_or_params, *, gate_max: float = 1.0,
               head_key: str = "head", prefix: str = "gates/"
               ) -> dict[str, jax.Array]:
  """Mean gate value g = gate_max * sigmoid(raw) of the head's attention and
  MLP gates, over channels and blocks.

  Args:
    model_or_params: a model (each ChannelGate's own gate_max is used) or a
      params pytree (e.g. `nnx.state(model, nnx.Param)`; `gate_max` is used).
    gate_max: the gate ceiling for params (ModelConfig.gate_max).
    head_key: path component marking the attractor head.
    prefix: key prefix.

  Returns:
    {prefix + "attn_mean": ..., prefix + "mlp_mean": ...} for the gates found.
  """
  found: dict[str, list[jax.Array]] = {name: [] for name in GATE_NAMES}
  if isinstance(model_or_params, nnx.Module):
    for path, node in nnx.iter_graph(model_or_params):
      if (path and path[-1] in GATE_NAMES and head_key in path
          and hasattr(node, "raw") and hasattr(node, "gate_max")):
        found[path[-1]].append(jnp.ravel(node.value))
  else:
    leaves = jax.tree_util.tree_leaves_with_path(nnx.as_pure(model_or_params))
    for path, raw in leaves:
      names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
      names = [n for n in names if n not in ("value", "raw_value")]
      if (len(names) >= 2 and names[-1] == "raw" and names[-2] in GATE_NAMES
          and head_key in names):
        gate = gate_max * jax.nn.sigmoid(jnp.asarray(raw, jnp.float32))
        found[names[-2]].append(jnp.ravel(gate))
  return {f"{prefix}{name.split('_')[0]}_mean": jnp.mean(jnp.concatenate(v))
          for name, v in found.items() if v}
