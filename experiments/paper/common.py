"""What the paper-in-miniature scripts share: one training run per (variant,
seed) of the embedded default with a few config fields changed, and the
statistics over seeds.

A variant is a name and a dict of dotted config overrides (`{"solve.backward":
"phantom"}`, `{"model.preset": "gpt-tiny"}`). The seed also draws the
train/validation split, so perplexities vary more across seeds than across
variants; the paired difference to a baseline variant (same seed: same split,
batches and initialisation) is the comparison that can rank them.
"""

import json
import math
import os
import shutil
import statistics
import time

from attractor_jax.configs import lm
from attractor_jax.training import metrics
from attractor_jax.training import trainer


def config_with(overrides: dict, seed: int, steps: int):
  """The embedded default with `overrides`, `seed` and `steps`."""
  config = lm.get_config()
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  config.seed = seed
  config.total_steps = steps
  config.log_every = max(1, steps // 6)
  config.eval_every = steps
  config.depth_sweep = False
  config.sample.num_tokens = 0
  return config


def train(name: str, overrides: dict, seed: int, steps: int,
          workdir: str) -> dict:
  """Trains one (variant, seed) from scratch; its validation and timing."""
  shutil.rmtree(workdir, ignore_errors=True)      # a fresh run, no resume
  start = time.perf_counter()
  summary = trainer.train_and_evaluate(config_with(overrides, seed, steps),
                                       workdir)
  wall = time.perf_counter() - start
  rows = metrics.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
  val = summary["validation"]
  return {"mode": name, "seed": seed, "perplexity": val["perplexity"],
          "loss": val["loss"], "tokens": val["tokens"],
          "iterations": val.get("iterations", math.nan),
          "tokens_per_s": statistics.median(rates) if rates else math.nan,
          "wall_s": wall}


def train_all(variants: dict, seeds, steps: int, workdir_root: str
              ) -> list[dict]:
  """`train` for every seed and variant (name -> overrides), in that order."""
  runs = []
  for seed in seeds:
    for name, overrides in variants.items():
      workdir = os.path.join(workdir_root, f"{name}-{seed}")
      runs.append(train(name, overrides, seed, steps, workdir))
      print(f"{name} seed {seed}: perplexity {runs[-1]['perplexity']:.2f}",
            flush=True)
  return runs


def write_outputs(out: str, text: str, payload: dict, plot) -> None:
  """OUT.md (text), OUT.json (payload) and OUT.png (`plot(path)`)."""
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".md", "w", encoding="utf-8") as f:
    f.write(text)
  with open(out + ".json", "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2)
  plot(out + ".png")
  print(text)


def over_seeds(runs: list[dict], names, baseline: str) -> list[dict]:
  """Per variant: perplexity mean, std and sem over seeds, the paired
  difference to `baseline` (mean and sem), mean solver iterations, and the
  step time relative to the baseline's."""
  base = {r["seed"]: r for r in runs if r["mode"] == baseline}
  rows = []
  for name in names:
    mine = [r for r in runs if r["mode"] == name]
    ppl = [r["perplexity"] for r in mine]
    std = statistics.stdev(ppl) if len(ppl) > 1 else math.nan
    diffs = [r["perplexity"] - base[r["seed"]]["perplexity"] for r in mine]
    diff_std = statistics.stdev(diffs) if len(diffs) > 1 else math.nan
    rate = statistics.mean(r["tokens_per_s"] for r in mine)
    base_rate = statistics.mean(r["tokens_per_s"] for r in base.values())
    rows.append({
        "mode": name, "seeds": len(mine), "perplexity": statistics.mean(ppl),
        "std": std, "sem": std / math.sqrt(len(ppl)),
        "diff": statistics.mean(diffs),
        "diff_sem": diff_std / math.sqrt(len(diffs)),
        "iterations": statistics.mean(r["iterations"] for r in mine),
        "tokens_per_s": rate, "step_time_ratio": base_rate / rate})
  return rows


def runs_table(runs: list[dict]) -> list[str]:
  """Markdown lines listing every run."""
  lines = ["| variant | seed | perplexity | tokens/s | wall s |",
           "|---|---|---|---|---|"]
  for r in runs:
    lines.append(f"| {r['mode']} | {r['seed']} | {r['perplexity']:.2f} | "
                 f"{r['tokens_per_s']:.0f} | {r['wall_s']:.0f} |")
  return lines
