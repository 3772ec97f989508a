"""Extrapolation evaluation: exact accuracy at every size, and against the
test-time iteration budget.

`solve(model, examples, max_iter=...)` runs each instance through the
model's own forward: the attractor reasoner solved by its head to the
tolerance (at most max_iter iterations), the feed-forward stack once.
Per size it reports

- `exact_accuracy`: instances whose every position is right (the headline);
- `converged_fraction`, `iterations_mean`, `iterations_max`,
  `residual_median`: the solve's (attractor only);
- `exact_accuracy_converged`: exact accuracy among converged instances.

`budget_curve(model, examples, budgets)` gives exact accuracy after exactly
b map applications from c (`looped/<b>`: the model as a looped network) and
with the solve stopped after b iterations (`solve/<b>`: the attractor run
to its tolerance or the budget). An attractor that does not "overthink"
never loses accuracy as b grows.

Instances go in batches of `batch_size`; a last short batch is padded with
copies of its first instance, which are not counted.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from attractor_jax.tasks.extrapolation.generators import Examples

RESULTS_NAME = "extrapolation"


def _exact(logits: jax.Array, targets: jax.Array) -> jax.Array:
  right = jnp.argmax(logits, axis=-1) == targets
  return jnp.all(right.reshape(right.shape[0], -1), axis=1)


@functools.partial(nnx.jit, static_argnames=("max_iter",))
def _solve_batch(model, inputs, targets, *, max_iter: Optional[int]):
  logits, stats = model(inputs, max_iter=max_iter)
  row = {"exact": _exact(logits, targets)}
  if stats is not None:
    row.update(iterations=stats.iterations.astype(jnp.float32),
               residual=stats.residual.astype(jnp.float32),
               converged=stats.converged)
  return row


@functools.partial(nnx.jit, static_argnames=("budgets",))
def _looped_batch(model, inputs, targets, *, budgets: tuple[int, ...]):
  c = model.encode(inputs)
  y, done, rows = c, 0, []
  for count in budgets:
    y = model.head.iterate(c, count - done, y0=y)
    done = count
    rows.append(_exact(model.readout(y), targets))
  return jnp.stack(rows)


def _batches(examples: Examples, batch_size: int):
  n = len(examples.inputs)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    index = np.arange(start, start + batch_size)
    index = np.where(index < stop, index, start)
    yield examples.inputs[index], examples.targets[index], stop - start


def solve(model, examples: Examples, *, max_iter: Optional[int] = None,
          batch_size: int = 250) -> dict[str, np.ndarray]:
  """Per-instance results (`exact`, and for the attractor `iterations`,
  `residual`, `converged`), each `[n]`."""
  pieces: dict[str, list] = {}
  for inputs, targets, real in _batches(examples, batch_size):
    row = jax.device_get(_solve_batch(model, inputs, targets,
                                      max_iter=max_iter))
    for key, value in row.items():
      pieces.setdefault(key, []).append(np.asarray(value)[:real])
  return {key: np.concatenate(value) for key, value in pieces.items()}


def summarize(rows: dict[str, np.ndarray]) -> dict[str, float]:
  """The per-size metrics of the module docstring."""
  exact = rows["exact"]
  result = {"count": float(len(exact)),
            "exact_accuracy": float(exact.mean())}
  if "converged" in rows:
    converged = rows["converged"].astype(bool)
    result.update(
        converged_fraction=float(converged.mean()),
        iterations_mean=float(rows["iterations"].mean()),
        iterations_max=float(rows["iterations"].max()),
        residual_median=float(np.median(rows["residual"])))
    if converged.any():
      result["exact_accuracy_converged"] = float(exact[converged].mean())
  return result


def evaluate(model, examples: Examples, *, max_iter: Optional[int] = None,
             batch_size: int = 250) -> dict[str, float]:
  """`summarize` of `solve`."""
  return summarize(solve(model, examples, max_iter=max_iter,
                         batch_size=batch_size))


def budget_curve(model, examples: Examples, budgets: Sequence[int], *,
                 batch_size: int = 250) -> dict[str, float]:
  """Exact accuracy at each budget: `looped/<b>` (exactly b map
  applications) and `solve/<b>` (the solve stopped at b iterations).
  Empty for a model without a head."""
  if not budgets or not hasattr(model, "head"):
    return {}
  budgets = tuple(sorted(set(int(b) for b in budgets)))
  looped = []
  for inputs, targets, real in _batches(examples, batch_size):
    looped.append(np.asarray(_looped_batch(model, inputs, targets,
                                           budgets=budgets))[:, :real])
  looped = np.concatenate(looped, axis=1).mean(axis=1)
  curve = {f"looped/{b}": float(v) for b, v in zip(budgets, looped)}
  for b in budgets:
    rows = solve(model, examples, max_iter=b, batch_size=batch_size)
    curve[f"solve/{b}"] = float(rows["exact"].mean())
  return curve


def format_table(results: dict[str, dict[str, float]]) -> str:
  """A markdown table of the per-size results (keys: sizes as strings),
  then the budget curves where measured."""
  lines = ["| size | instances | exact | converged | iterations (mean / max)"
           " | max_iter |", "|---|---|---|---|---|---|"]
  for size, row in results.items():
    converged = ("-" if "converged_fraction" not in row
                 else f"{100 * row['converged_fraction']:.1f}%")
    iterations = ("-" if "iterations_mean" not in row else
                  f"{row['iterations_mean']:.1f} / "
                  f"{row['iterations_max']:.0f}")
    max_iter = row.get("max_iter")
    lines.append(f"| {size} | {int(row['count'])} | "
                 f"{100 * row['exact_accuracy']:.1f}% | {converged} | "
                 f"{iterations} | {'-' if max_iter is None else max_iter} |")
  for size, row in results.items():
    budgets = sorted(int(k.split("/")[1]) for k in row
                     if k.startswith("looped/"))
    if not budgets:
      continue
    lines += ["", f"Exact accuracy against the iteration budget at size "
              f"{size}:", "", "| budget | looped (exactly b) | solve (at "
              "most b) |", "|---|---|---|"]
    for b in budgets:
      lines.append(f"| {b} | {100 * row[f'looped/{b}']:.1f}% | "
                   f"{100 * row[f'solve/{b}']:.1f}% |")
  return "\n".join(lines)


def write_results(results: dict[str, Any], out_dir: str,
                  extra: Optional[dict] = None) -> tuple[str, str]:
  """Writes out_dir/extrapolation.json (the results and `extra`) and
  extrapolation.md (the table); their paths."""
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  json_path = os.path.join(out_dir, RESULTS_NAME + ".json")
  md_path = os.path.join(out_dir, RESULTS_NAME + ".md")
  epath.Path(json_path).write_text(json.dumps(
      dict(extra or {}, sizes=results), indent=2, sort_keys=True))
  header = ", ".join(f"{k} {v}" for k, v in (extra or {}).items())
  epath.Path(md_path).write_text(
      (f"{header}\n\n" if header else "") + format_table(results) + "\n")
  return json_path, md_path
