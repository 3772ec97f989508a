"""What the paper-in-miniature scripts share: one training run per (variant,
seed) of the embedded default with a few config fields changed, and the
statistics over seeds.

A variant is a name and a dict of dotted config overrides (`{"solve.backward":
"phantom"}`, `{"model.preset": "gpt-tiny"}`). The seed also draws the
train/validation split, so perplexities vary more across seeds than across
variants; the paired difference to a baseline variant (same seed: same split,
batches and initialisation) is the comparison that can rank them.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import time

from attractor_jax import models
from attractor_jax.configs import lm
from attractor_jax.tasks.lm import checks as lm_checks
from attractor_jax.training import metrics
from attractor_jax.training import trainer


def argument_parser(doc: str, name: str, steps: int = 300
                    ) -> argparse.ArgumentParser:
  """The options every script takes: --steps, --seeds, --workdir_root
  (/tmp/NAME) and --out (experiments/paper/results/NAME)."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument("--steps", type=int, default=steps)
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--workdir_root", default=f"/tmp/{name}")
  parser.add_argument("--out", default=f"experiments/paper/results/{name}")
  return parser


def config_with(overrides: dict, seed: int, steps: int):
  """The embedded default with `seed`, `steps` and then `overrides` (no depth
  sweep and no sample unless the overrides ask for them)."""
  config = lm.get_config()
  config.seed = seed
  config.total_steps = steps
  config.log_every = max(1, steps // 6)
  config.eval_every = steps
  config.depth_sweep = False
  config.sample.num_tokens = 0
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def parameter_count(overrides: dict) -> int:
  """Parameters of the model that `overrides` give the embedded default."""
  config = config_with(overrides, seed=0, steps=1)
  return models.parameter_count(
      lm_checks.model_config_from(config, config.data.vocab_size))


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
  words = summary.get("last_word", {})
  return {"mode": name, "seed": seed, "perplexity": val["perplexity"],
          "loss": val["loss"], "tokens": val["tokens"],
          "iterations": val.get("iterations", math.nan),
          "converged_fraction": val.get("converged_fraction", math.nan),
          "last_word_accuracy": words.get("accuracy", math.nan),
          "last_word_perplexity": words.get("perplexity", math.nan),
          "last_word_words": words.get("words", 0),
          "tokens_per_s": statistics.median(rates) if rates else math.nan,
          "wall_s": wall, "workdir": workdir}


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


def _stdev(values: list[float]) -> float:
  """Sample std; NaN with fewer than two values or any NaN among them."""
  if len(values) < 2 or any(v != v for v in values):
    return math.nan
  return statistics.stdev(values)


def paired_stats(runs: list[dict], name: str, baseline: str,
                 metric: str) -> dict:
  """`metric` of variant `name` over seeds: mean, std and sem, and the paired
  difference to `baseline` (same seed) as diff and diff_sem."""
  base = {r["seed"]: r.get(metric, math.nan) for r in runs
          if r["mode"] == baseline}
  mine = [r for r in runs if r["mode"] == name]
  values = [r.get(metric, math.nan) for r in mine]
  diffs = [value - base[r["seed"]] for r, value in zip(mine, values)]
  std, diff_std = _stdev(values), _stdev(diffs)
  return {"mean": statistics.mean(values), "std": std,
          "sem": std / math.sqrt(len(values)),
          "diff": statistics.mean(diffs),
          "diff_sem": diff_std / math.sqrt(len(diffs)), "seeds": len(mine)}


def over_seeds(runs: list[dict], names, baseline: str) -> list[dict]:
  """Per variant: perplexity, last-word accuracy and last-word perplexity
  (mean, std and sem over seeds, the paired difference to `baseline` with its
  sem), mean solver iterations and converged fraction, and the step time
  relative to the baseline's."""
  base_rate = statistics.mean(r["tokens_per_s"] for r in runs
                              if r["mode"] == baseline)
  rows = []
  for name in names:
    ppl = paired_stats(runs, name, baseline, "perplexity")
    words = paired_stats(runs, name, baseline, "last_word_accuracy")
    word_ppl = paired_stats(runs, name, baseline, "last_word_perplexity")
    mine = [r for r in runs if r["mode"] == name]
    mean = lambda key, mine=mine: statistics.mean(r.get(key, math.nan)
                                                  for r in mine)
    rate = mean("tokens_per_s")
    rows.append({
        "mode": name, "seeds": ppl["seeds"], "perplexity": ppl["mean"],
        "std": ppl["std"], "sem": ppl["sem"], "diff": ppl["diff"],
        "diff_sem": ppl["diff_sem"],
        **{f"last_word_{k}": v for k, v in words.items() if k != "seeds"},
        **{f"last_word_ppl_{k}": v for k, v in word_ppl.items()
           if k != "seeds"},
        "iterations": mean("iterations"),
        "converged_fraction": mean("converged_fraction"),
        "tokens_per_s": rate, "step_time_ratio": base_rate / rate})
  return rows


def number(value: float, spec: str = ".1f", unit: str = "") -> str:
  """`value` formatted with `unit`, or "-" for NaN (a model without it)."""
  return "-" if value != value else format(value, spec) + unit


def perplexity_cells(row: dict) -> str:
  """A table row's first cells: variant, perplexity ± std, sem, and the
  paired difference ± its sem (up to the next cell's opening)."""
  return (f"| {row['mode']} | {row['perplexity']:.2f} ± {row['std']:.2f} | "
          f"{row['sem']:.2f} | {row['diff']:+.2f} ± {row['diff_sem']:.2f} | ")


def last_word_ppl(row: dict) -> str:
  """A row's last-word perplexity, mean ± std over seeds, in thousands."""
  return (f"{row['last_word_ppl_mean'] / 1e3:.1f}k ± "
          f"{row['last_word_ppl_std'] / 1e3:.1f}k")


def ablation_table(rows: list[dict], baseline: str,
                   params: dict[str, int]) -> list[str]:
  """Markdown lines: perplexity, paired difference to `baseline`, last-word
  perplexity and accuracy, parameters, solver iterations and converged
  fraction."""
  lines = [f"| variant | perplexity | sem | vs {baseline} (paired) | "
           "last-word ppl | last-word acc. | parameters | iterations | "
           "converged |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        perplexity_cells(r) +
        f"{last_word_ppl(r)} | "
        f"{100 * r['last_word_mean']:.1f}% | {params[r['mode']] / 1e3:.0f}k | "
        f"{number(r['iterations'])} | "
        f"{number(100 * r['converged_fraction'], '.1f', '%')} |")
  return lines


def runs_table(runs: list[dict]) -> list[str]:
  """Markdown lines listing every run."""
  lines = ["| variant | seed | perplexity | last-word ppl | last-word acc. | "
           "tokens/s | wall s |", "|---|---|---|---|---|---|---|"]
  for r in runs:
    accuracy = number(100 * r.get("last_word_accuracy", math.nan), ".1f",
                      "%")
    word_ppl = number(r.get("last_word_perplexity", math.nan) / 1e3, ".1f",
                      "k")
    lines.append(f"| {r['mode']} | {r['seed']} | {r['perplexity']:.2f} | "
                 f"{word_ppl} | {accuracy} | {r['tokens_per_s']:.0f} | "
                 f"{r['wall_s']:.0f} |")
  return lines


def plot_perplexity(rows: list[dict], path: str, baseline: str) -> None:
  """Two bar charts: perplexity (± std) and the paired difference to
  `baseline` (± sem)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(2 + 1.3 * len(rows), 3), layout="constrained")
  left, right = fig.subplots(1, 2)
  names = [r["mode"] for r in rows]
  left.bar(names, [r["perplexity"] for r in rows],
           yerr=[r["std"] for r in rows], color="C0")
  left.set_title("validation perplexity")
  right.bar(names, [r["diff"] for r in rows],
            yerr=[r["diff_sem"] for r in rows], color="C1")
  right.axhline(0.0, color="black", linewidth=0.8)
  right.set_title(f"paired difference to {baseline}")
  for axes in (left, right):
    axes.tick_params(axis="x", labelrotation=20)
  fig.savefig(path, dpi=100)


def setup_line(runs: list[dict], args, baseline: str) -> str:
  """What every table's runs were: steps, seeds, validation and pairing."""
  words = statistics.mean(r.get("last_word_words", 0) for r in runs)
  return (f"Tiny presets on the built-in corpus, {args.steps} steps of the "
          f"embedded default's batches, seeds "
          f"{', '.join(map(str, args.seeds))}; perplexity over the whole "
          f"validation split (about {runs[0]['tokens']} tokens): mean ± std "
          f"over seeds, the standard error of the mean (sem), and the paired "
          f"difference to {baseline} (same seed: same split, batches and "
          f"data order) with its sem. Last words: LAMBADA-style, the last "
          f"word of each held-out paragraph (about {words:.0f} words per "
          "seed, attractor_jax/tasks/lm/last_word.py): perplexity of the "
          "word (all its tokens) and top-1 accuracy.")


def run_ablation(title: str, variants: dict, baseline: str,
                 paper: dict[str, float], args, note: str = "") -> list[dict]:
  """Trains `variants` over `args.seeds` and writes args.out.{md,json,png}:
  `ablation_table` with the paper's perplexities and `note` below it."""
  runs = train_all(variants, args.seeds, args.steps, args.workdir_root)
  rows = over_seeds(runs, variants, baseline)
  params = {name: parameter_count(overrides)
            for name, overrides in variants.items()}
  lines = [f"# {title}", "", setup_line(runs, args, baseline), ""]
  lines += ablation_table(rows, baseline, params)
  lines += ["", "The paper's perplexities (60M parameters): "
            + ", ".join(f"{k} {v}" for k, v in paper.items()) + ".", ""]
  lines += ([note, ""] if note else []) + ["Runs:", ""] + runs_table(runs)
  write_outputs(args.out, "\n".join(lines) + "\n",
                {"rows": rows, "runs": runs, "steps": args.steps,
                 "parameters": params},
                lambda path: plot_perplexity(rows, path, baseline))
  return rows
