"""Puzzle evaluation that cannot flatter: every test puzzle, every segment.

`evaluate(model, data)` runs each puzzle from the model's initial carry for
exactly `config.max_segments` deep-supervision segments, in eval mode (no
random halting, no exploration, no Jacobian penalty), and scores the answer
of the last segment:

- `exact_accuracy`: puzzles whose every cell is right (the headline);
- `cell_accuracy`: all cells; `blank_cell_accuracy`: only the cells the
  model had to fill (Sudoku blanks, maze open cells);
- `tier/<tier>/exact_accuracy` and `tier/<tier>/count` per difficulty tier;
- `segment/<s>/exact_accuracy` after each segment s = 1..max_segments, and
  the solver's `segment/<s>/iterations_mean`, `residual_mean` and
  `converged_fraction` (attractor reasoner);
- with the learned halting head read in eval mode (an answer is taken at the
  first segment whose q_halt > 0, else the last): `halting/exact_accuracy`
  and `halting/segments_mean`. It is reported beside the headline, never
  instead of it.

Puzzles are processed in batches of `batch_size`; the last batch is padded
with copies of its first puzzle so that one compiled program serves all,
and the copies are not counted.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from attractor_jax import parallel
from attractor_jax.parallel import mesh as mesh_lib
from attractor_jax.tasks.puzzles.data import PuzzleSet

RESULTS_NAME = "puzzle_eval.json"


@nnx.jit
def _solve_batch(model, inputs: jax.Array, labels: jax.Array,
                 answer_mask: jax.Array) -> dict[str, jax.Array]:
  """All segments of one batch; per-segment, per-example results."""
  graphdef, state = nnx.split(model)
  carry = model.initial_carry(inputs.shape[0])

  def segment(carry, _):
    carry, out = nnx.merge(graphdef, state)(inputs, carry, train=False)
    correct = jnp.argmax(out.logits, axis=-1) == labels
    row = {
        "exact": jnp.all(correct, axis=-1),
        "cells_right": jnp.sum(correct, axis=-1),
        "blanks_right": jnp.sum(correct & answer_mask, axis=-1),
        "halt": out.q_halt > 0,
    }
    if out.stats is not None:
      row.update(iterations=out.stats.iterations.astype(jnp.float32),
                 residual=out.stats.residual.astype(jnp.float32),
                 converged=out.stats.converged.astype(jnp.float32))
    return carry, row

  _, rows = jax.lax.scan(segment, carry, None,
                         length=model.config.max_segments)
  return rows      # each [segments, batch]


def _batches(data: PuzzleSet, batch_size: int):
  """(inputs, labels, answer_mask, real rows) of fixed-size batches."""
  mask = data.answer_mask()
  for start in range(0, len(data), batch_size):
    stop = min(start + batch_size, len(data))
    index = np.arange(start, start + batch_size)
    index = np.where(index < stop, index, start)
    yield (data.inputs[index], data.labels[index], mask[index],
           stop - start)


def _solve_global_batch(model, inputs, labels, mask) -> dict[str, np.ndarray]:
  """`_solve_batch` on one process; with several, each solves its share of
  the batch's rows (assembled into global arrays) and every process gets
  all results back."""
  if jax.process_count() == 1:
    return jax.device_get(_solve_batch(model, inputs, labels, mask))
  rows = mesh_lib.process_batch_slice(len(inputs))
  batch = parallel.global_batch(model, {
      "inputs": inputs[rows], "labels": labels[rows], "mask": mask[rows]})
  # (Global arrays come back whole whatever `tiled`; it must be True.)
  return multihost_utils.process_allgather(_solve_batch(
      model, batch["inputs"], batch["labels"], batch["mask"]), tiled=True)


def per_puzzle_results(model, data: PuzzleSet, *, batch_size: int = 256
                       ) -> dict[str, np.ndarray]:
  """Per-segment results of every puzzle: each value `[segments, n]`.

  Every process passes over all puzzles; with several processes each solves
  its share of every batch (`batch_size` must divide by their number).
  """
  pieces: dict[str, list] = {}
  for inputs, labels, mask, real in _batches(data, batch_size):
    rows = _solve_global_batch(model, inputs, labels, mask)
    for key, value in rows.items():
      pieces.setdefault(key, []).append(np.asarray(value)[:, :real])
  return {key: np.concatenate(value, axis=1) for key, value in pieces.items()}


def summarize(rows: dict[str, np.ndarray], data: PuzzleSet
              ) -> dict[str, float]:
  """The metrics of the module docstring from `per_puzzle_results`."""
  n, seq_len = len(data), data.seq_len
  blanks = data.answer_mask().sum(axis=1)
  exact = rows["exact"]
  result = {
      "count": float(n),
      "segments": float(exact.shape[0]),
      "exact_accuracy": float(exact[-1].mean()),
      "cell_accuracy": float(rows["cells_right"][-1].sum() / (n * seq_len)),
      "blank_cell_accuracy": float(rows["blanks_right"][-1].sum()
                                   / max(blanks.sum(), 1)),
  }
  for tier in data.tier_names:
    in_tier = data.tiers == tier
    result[f"tier/{tier}/count"] = float(in_tier.sum())
    if in_tier.any():
      result[f"tier/{tier}/exact_accuracy"] = float(exact[-1][in_tier].mean())
  for s in range(exact.shape[0]):
    result[f"segment/{s + 1}/exact_accuracy"] = float(exact[s].mean())
    for key in ("iterations", "residual", "converged"):
      if key in rows:
        name = "converged_fraction" if key == "converged" else key + "_mean"
        result[f"segment/{s + 1}/{name}"] = float(rows[key][s].mean())
  # Halting in eval mode: the answer of the first segment that halts.
  halts = rows["halt"].copy()
  halts[-1] = True
  first = np.argmax(halts, axis=0)
  result["halting/exact_accuracy"] = float(
      exact[first, np.arange(n)].mean())
  result["halting/segments_mean"] = float((first + 1).mean())
  return result


def evaluate(model, data: PuzzleSet, *, batch_size: int = 256
             ) -> dict[str, float]:
  """The metrics of the module docstring over all of `data`."""
  return summarize(per_puzzle_results(model, data, batch_size=batch_size),
                   data)


def format_table(result: dict[str, float], tier_names) -> str:
  """The headline, cell accuracies and tiers as a small text table."""
  lines = [f"exact accuracy {result['exact_accuracy']:.2%} of "
           f"{int(result['count'])} puzzles after "
           f"{int(result['segments'])} segments; cells "
           f"{result['cell_accuracy']:.2%}, blank cells "
           f"{result['blank_cell_accuracy']:.2%}",
           f"{'tier':>10}  {'puzzles':>7}  {'exact':>7}"]
  for tier in tier_names:
    count = int(result.get(f"tier/{tier}/count", 0))
    exact = result.get(f"tier/{tier}/exact_accuracy")
    cell = "-" if exact is None else f"{exact:.2%}"
    lines.append(f"{tier:>10}  {count:>7}  {cell:>7}")
  lines.append(f"halting head (eval mode): exact "
               f"{result['halting/exact_accuracy']:.2%} after "
               f"{result['halting/segments_mean']:.2f} segments on average")
  return "\n".join(lines)


def write_results(result: dict[str, Any], out_dir: str,
                  extra: Optional[dict] = None) -> str:
  """Writes `result` (and `extra`) to out_dir/puzzle_eval.json (local or
  gs://, through etils.epath); its path."""
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  path = os.path.join(out_dir, RESULTS_NAME)
  epath.Path(path).write_text(json.dumps(dict(extra or {}, **result),
                                         indent=2, sort_keys=True))
  return path
