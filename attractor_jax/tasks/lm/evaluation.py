"""Evaluation: validation loss and perplexity, and a test-time depth sweep.

    result = evaluate(model, val_batches)            # loss, perplexity, ...
    rows = depth_sweep(model, val_batches)           # T = 0, 1, 2, 4, ...
    paths = write_depth_sweep(rows, workdir)         # .json, .txt, .png

The sweep measures equilibrium internalization (docs/design.md section 1): at
T = 0 the attractor LM decodes its proposal c without any solver step; if
training internalized the fixed point, its loss is close to that of y*.

`batches` is an iterable of dicts with keys "inputs" and "targets" (and
optionally "segment_ids", "positions"), int `[batch, seq]`, as the data
pipeline yields them, or a zero-argument callable that returns such an
iterable. A sweep passes over the batches once per depth, so it needs a list
(or any re-iterable such as a grain dataset) or a callable, not an iterator.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
from typing import Any, Callable, Iterable, Optional, Sequence

import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from attractor_jax import parallel
from attractor_jax.models import registry
from attractor_jax.nn.attractor_head import SolveConfig

Batches = Iterable[dict] | Callable[[], Iterable[dict]]
ROW_KEYS = ("T", "loss", "perplexity", "iterations", "converged_fraction",
            "residual", "head_contribution")
_SOLVER_KEYS = ("iterations", "residual", "converged_fraction")


def depth_schedule(max_iter: int) -> list[int]:
  """0, 1, 2, 4, 8, ... up to max_iter, with max_iter itself always last."""
  if max_iter < 0:
    raise ValueError(f"max_iter must be >= 0; got {max_iter}.")
  depths, t = [0], 1
  while t < max_iter:
    depths.append(t)
    t *= 2
  return depths + [max_iter] if max_iter > 0 else depths


@functools.partial(nnx.jit, static_argnames=("max_iter",))
def _eval_step(model, batch: dict, max_iter: Optional[int]) -> dict:
  """Per-batch sums; compiled once per (model, batch shape, max_iter)."""
  targets = batch["targets"]
  out = model(batch["inputs"], targets=targets,
              segment_ids=batch.get("segment_ids"),
              positions=batch.get("positions"), max_iter=max_iter)
  kept = targets != model.config.ignore_index
  # Padding rows (no target: the last validation batch is filled up with
  # them) count in no mean.
  real = jnp.any(kept, axis=1)
  per_row = lambda x: jnp.sum(jnp.where(real, x.astype(jnp.float32), 0.0))
  sums = {"loss": out.loss, "tokens": jnp.sum(kept), "sequences":
          jnp.sum(real)}
  if out.stats is not None:
    sums["iterations"] = per_row(out.stats.iterations)
    sums["residual"] = per_row(out.stats.residual)
    sums["converged_fraction"] = per_row(out.stats.converged)
  if out.head_contribution is not None:
    sums["head_contribution"] = per_row(out.head_contribution)
  return sums


def _iterate(batches: Batches) -> Iterable[dict]:
  return batches() if callable(batches) else batches


def evaluate(model, batches: Batches, *, max_iter: Optional[int] = None,
             max_batches: Optional[int] = None) -> dict[str, float]:
  """Token-weighted validation loss and, for solver models, solver stats.

  Each batch's mean loss is weighted by its count of non-ignored targets, so
  the result equals the loss over all tokens at once. Solver stats are means
  over sequences.

  Args:
    model: any LM of `attractor_jax.models` (GPT ignores `max_iter`).
    batches: see the module docstring.
    max_iter: test-time solver steps (loop depth for Looped); None uses the
      model's default. 0 decodes the attractor's proposal c.
    max_batches: stop after this many batches (for endless iterables).

  Returns:
    {"loss", "perplexity", "tokens", "sequences", "batches"} and, when the
    model reports them, "iterations", "residual" (NaN at T = 0: never
    measured), "converged_fraction" and "head_contribution".

  Raises:
    ValueError: no batch, or no non-ignored target.
  """
  loss_sum, totals, tokens, sequences, count = 0.0, {}, 0, 0, 0
  for batch in _iterate(batches):
    if max_batches is not None and count >= max_batches:
      break
    batch = parallel.global_batch(model, dict(batch))
    sums = _eval_step(model, batch, max_iter=max_iter)
    sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    n = int(sums.pop("tokens"))
    loss_sum += float(sums.pop("loss")) * n
    tokens += n
    sequences += int(sums.pop("sequences"))
    count += 1
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  if tokens == 0:
    raise ValueError(f"No non-ignored target in {count} batches.")
  loss = loss_sum / tokens
  result = {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens,
            "sequences": sequences, "batches": count}
  result.update({k: v / sequences for k, v in totals.items()})
  return result


def exact_depth_model(model, depth: int):
  """A copy of an attractor LM or DEQ whose solve is exactly `depth` plain
  applications of its map: f^T(y0) (Picard, no early stop, the last iterate
  returned, not the best one). Figure 7's T, where the solver's own sweep
  only caps the iterations (an Anderson step is not one application of f,
  and a converged solve stops before the cap)."""
  model = nnx.clone(model)
  solve = model.config.solve
  exact = SolveConfig(solver="picard", max_iter=depth, min_iter=depth,
                      tol=solve.tol, backward=solve.backward,
                      track_best=False, divergence_factor=None)
  model.config = model.config.replace(solve=exact)
  if hasattr(model, "head"):
    model.head.solve_config = exact
  return model


def depth_sweep(model, batches: Batches,
                depths: Optional[Sequence[int]] = None, *,
                exact: bool = False) -> list[dict]:
  """Evaluates the model at each test-time depth T.

  Supports the attractor LM and DEQ (T = solver step limit, or with `exact`
  exactly T applications of the map) and the looped model (T = loop depth:
  it runs exactly T steps, so its "iterations" is T and its converged
  fraction and residual are NaN).

  Args:
    model: an attractor, DEQ or looped LM.
    batches: a re-iterable or a callable (see the module docstring).
    depths: the T values; default `depth_schedule` of the configured
      `solve.max_iter` (twice `mean_depth` for a looped model, its training
      maximum).
    exact: for solver models, T plain iterations exactly
      (`exact_depth_model`) instead of the configured solver capped at T.

  Returns:
    One dict per T with keys `ROW_KEYS` (NaN where not reported).

  Raises:
    ValueError: a GPT (fixed depth: use `evaluate`), or a one-shot iterator.
  """
  if not registry.supports(model.config.kind, registry.DEPTH_SWEEP):
    raise ValueError(f"A {model.config.kind!r} model has a fixed depth, so a "
                     "depth sweep is meaningless; use evaluate() for its "
                     "loss.")
  if not callable(batches) and iter(batches) is batches:
    raise ValueError("depth_sweep passes over the batches once per depth; "
                     "pass a list or a callable, not an iterator.")
  if depths is None:
    depths = depth_schedule(registry.sweep_depth(model.config))
  solved = registry.supports(model.config.kind, registry.SOLVER_STATS)
  rows = []
  for t in depths:
    at_depth = exact_depth_model(model, int(t)) if exact and solved else model
    result = evaluate(at_depth, batches, max_iter=int(t))
    if not any(k in result for k in _SOLVER_KEYS):
      result["iterations"] = float(t)
    rows.append({"T": int(t), **{k: float(result.get(k, math.nan))
                                 for k in ROW_KEYS[1:]}})
  return rows


def _json_value(x: Any) -> Any:
  if isinstance(x, float) and not math.isfinite(x):
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
  return x


def read_depth_sweep(path: str | os.PathLike) -> list[dict]:
  """The rows of a depth_sweep.json (local or gs://), with "nan"/"inf"
  strings as floats."""
  rows = json.loads(epath.Path(path).read_text())
  return [{k: float(v) if isinstance(v, str) else v for k, v in row.items()}
          for row in rows]


def format_table(rows: Sequence[dict]) -> str:
  """An aligned text table of the rows ("-" where NaN)."""
  keys = [k for k in ROW_KEYS if any(k in row for row in rows)]

  def cell(value):
    if isinstance(value, float):
      return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)

  table = [keys] + [[cell(row.get(k, math.nan)) for k in keys] for row in rows]
  widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths))
                   for line in table) + "\n"


def write_depth_sweep(rows: Sequence[dict], out_dir: str | os.PathLike,
                      name: str = "depth_sweep",
                      title: str = "Test-time depth sweep") -> dict[str, str]:
  """Writes NAME.json, .txt (aligned table) and .png into out_dir (local or
  gs://BUCKET/PATH: written through etils.epath).

  JSON holds standard numbers, non-finite ones as the strings "nan"/"inf"
  (`read_depth_sweep` reads them back). The plot shows perplexity, and below
  it the converged fraction and mean iterations, against T on a symlog
  (base 2) axis, linear in [0, 1] so T = 0 is shown; `title` above it.

  Returns:
    {"json": path, "txt": path, "png": path}.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  out_dir = os.fspath(out_dir)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  paths = {ext: os.path.join(out_dir, f"{name}.{ext}")
           for ext in ("json", "txt", "png")}
  epath.Path(paths["json"]).write_text(json.dumps(
      [{k: _json_value(v) for k, v in row.items()} for row in rows],
      indent=2, allow_nan=False))
  epath.Path(paths["txt"]).write_text(format_table(rows))

  ts = [row["T"] for row in rows]
  column = lambda key: [row.get(key, math.nan) for row in rows]
  fig = Figure(figsize=(6, 6), layout="constrained")
  top, bottom = fig.subplots(2, 1, sharex=True)
  top.plot(ts, column("perplexity"), "o-", color="C0")
  top.set_ylabel("perplexity")
  top.set_title(title)
  bottom.plot(ts, column("converged_fraction"), "s-", color="C1")
  bottom.set_ylabel("converged fraction", color="C1")
  bottom.set_ylim(-0.05, 1.05)
  twin = bottom.twinx()
  twin.plot(ts, column("iterations"), "^--", color="C2")
  twin.set_ylabel("mean iterations", color="C2")
  bottom.set_xscale("symlog", base=2, linthresh=1, linscale=0.5)
  bottom.set_xticks(ts, [str(t) for t in ts])
  bottom.set_xlabel("test-time iterations T")
  for ax in (top, bottom):
    ax.grid(True, alpha=0.3)
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100)
  epath.Path(paths["png"]).write_bytes(png.getvalue())
  return paths
