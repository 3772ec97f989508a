"""Language modelling as a `tasks.Task`: text in, next-token loss out.

Its data are `data.LMData` (tokenizer, packed training batches, fixed
validation batches); after training it scores held-out last words, sweeps
test-time depth and prints a sample.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
from etils import epath

from attractor_jax import data as data_lib
from attractor_jax.configs import lm as lm_config
from attractor_jax.models import registry
from attractor_jax.parallel import distributed
from attractor_jax.tasks.lm import checks
from attractor_jax.tasks.lm import data as lm_data
from attractor_jax.tasks.lm import evaluation
from attractor_jax.tasks.lm import generation
from attractor_jax.tasks.lm import last_word
from attractor_jax.training import metrics as metrics_lib
from attractor_jax.training import tasks


@dataclasses.dataclass(frozen=True)
class LMTask(tasks.Task):
  """Next-token prediction on packed text (configs/lm.py)."""

  name: str = "lm"
  seed: int = 0

  @classmethod
  def from_config(cls, config) -> "LMTask":
    return cls(seed=int(config.get("seed", 0)))

  def validate_config(self, config, workdir=None, *, num_devices=None):
    return checks.validate_lm_config(config, workdir,
                                         num_devices=num_devices)

  def prepare_data(self, config, workdir) -> lm_data.LMData:
    return lm_data.prepare_data(config, workdir)

  def model_config(self, config, data: lm_data.LMData):
    return checks.model_config_from(config, data.tokenizer.vocab_size)

  uses_backward_probe = True

  def loss(self, model, batch):
    extra = {}
    kind = model.config.kind
    if (tasks.PROBE_KEY in batch
        and registry.supports(kind, registry.SOLVER_STATS)):
      extra["backward_probe"] = batch[tasks.PROBE_KEY]
    if tasks.STEP_KEY in batch and registry.supports(kind,
                                                     registry.TRAIN_KEY):
      # Training mode (a looped model samples each sequence's depth and
      # truncates backprop; a DEQ adds its Jacobian penalty), with
      # randomness fixed by the seed and the step.
      extra.update(train=True, key=jax.random.fold_in(
          jax.random.PRNGKey(self.seed), batch[tasks.STEP_KEY]))
    out = model(batch["inputs"], targets=batch["targets"],
                positions=batch["positions"], segment_ids=batch["segment_ids"],
                **extra)
    return out.loss, out

  def step_scalars(self, aux) -> dict[str, jax.Array]:
    return metrics_lib.lm_scalars(aux)

  def items_per_step(self, config) -> tuple[str, int]:
    return "tokens", int(config.batch_size * config.data.seq_len)

  def evaluate(self, model, data: lm_data.LMData) -> dict[str, float]:
    return evaluation.evaluate(model, data.validation)

  def describe_validation(self, step, validation) -> str:
    return (f"step {step}: validation loss {validation['loss']:.4f}, "
            f"perplexity {validation['perplexity']:.2f} over "
            f"{validation['tokens']} tokens")

  def finish(self, config, workdir, model, data) -> dict[str, Any]:
    """Last-word accuracy, the depth sweep (kinds that have a depth) and a
    sample (kinds with cached decoding)."""
    results = last_word_results(config, workdir, model, data.tokenizer,
                                data.validation_documents)
    kind = model.config.kind
    if config.depth_sweep and registry.supports(kind, registry.DEPTH_SWEEP):
      results.update(depth_sweeps(model, data.validation, workdir))
    if (registry.supports(kind, registry.CACHED_DECODING)
        and config.sample.num_tokens):
      results["sample"] = sample_text(model, data.tokenizer, config.sample,
                                      seed=config.seed,
                                      trained_context=config.data.seq_len)
      if distributed.is_main_process():
        (epath.Path(workdir) / "sample.txt").write_text(results["sample"])
      print(f"\nSample:\n{results['sample']}\n")
    return results


  def inference_setup(self, config, workdir):
    tokenizer = data_lib.load_tokenizer(
        epath.Path(workdir) / "tokenizer.model")
    return (checks.model_config_from(config, tokenizer.vocab_size),
            tokenizer)

  def evaluate_workdir(self, config, workdir, trained, assets, *,
                       eval_batches=None) -> dict[str, Any]:
    """Validation loss and perplexity, and the depth sweep (kinds that have
    a depth) written to workdir/eval/."""
    checks.validate_data(config, workdir)   # the corpus is still there
    if eval_batches is not None:
      config.eval_batches = eval_batches
    documents = lm_data.validation_documents(config)   # read once
    batches = lm_data.prepare_validation(config, workdir, assets,
                                            documents)
    result = evaluation.evaluate(trained.model, batches)
    print(self.describe_validation(trained.step, result))
    results = {"validation": result}
    results.update(last_word_results(config, workdir, trained.model,
                                     assets, documents))
    if registry.supports(trained.model.config.kind, registry.DEPTH_SWEEP):
      results.update(depth_sweeps(trained.model, batches, workdir))
    return results


def last_word_results(config, workdir: str, model, tokenizer,
                      documents: list[str]) -> dict:
  """{"last_word": ...} of `last_word.evaluate` on the held-out `documents`,
  printed and written to workdir/eval/last_word.json by process 0 (empty
  with config.last_word_examples = 0; a saved config without the field
  gets the default)."""
  limit = config.get("last_word_examples", lm_config.LAST_WORD_EXAMPLES)
  if not limit:
    return {}
  result = last_word.evaluate(
      model, documents, tokenizer,
      seq_len=config.data.seq_len, batch_size=config.batch_size,
      max_examples=limit)
  print(describe_last_words(result))
  if distributed.is_main_process():
    out = epath.Path(workdir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "last_word.json").write_text(json.dumps(result, indent=2))
  return {"last_word": result}


def describe_last_words(result: dict) -> str:
  """The printed lines of a `last_word.evaluate` result, saying what it
  measures and what chance gives."""
  return (
      "Held-out last words (LAMBADA-style: the last word of each held-out "
      "paragraph, predicted from the text before it; right only if every "
      f"token of it is): accuracy {100 * result['accuracy']:.1f}% "
      f"(± {100 * result['sem']:.1f}), word perplexity "
      f"{result['perplexity']:.4g} over {result['words']} words "
      f"({result['skipped']} skipped).\n  A word is "
      f"{result['tokens_per_word']:.2f} tokens on average; a uniform guess "
      f"over the vocabulary has word perplexity "
      f"{result['chance_perplexity']:.3g} and accuracy ~0.")


def depth_sweeps(model, batches, workdir: str) -> dict[str, list]:
  """The test-time depth sweep, and for solver models also the exact one
  (T plain applications of the map, Figure 7's T); printed, and written to
  workdir/eval/depth_sweep{,_exact}.{json,txt,png} by process 0."""
  sweeps = {"depth_sweep": (
      "T = the solver's step limit; T = 0 decodes the proposal c",
      "Depth sweep: solver capped at T iterations (stops at its tolerance)",
      False)}
  if registry.supports(model.config.kind, registry.SOLVER_STATS):
    sweeps["depth_sweep_exact"] = (
        "T = exactly T applications of the map (plain iteration, no early "
        "stop)", "Depth sweep: exactly T applications of the head map", True)
  results = {}
  for name, (what, title, exact) in sweeps.items():
    rows = evaluation.depth_sweep(model, batches, exact=exact)
    print(f"\nTest-time depth sweep ({what}):\n"
          + evaluation.format_table(rows))
    if distributed.is_main_process():
      paths = evaluation.write_depth_sweep(
          rows, os.path.join(workdir, "eval"), name=name, title=title)
      print(f"wrote {', '.join(str(p) for p in paths.values())}")
    results[name] = rows
  return results


def sample_text(model, tokenizer, sample_config, *, seed: int = 0,
                cached: bool = True,
                trained_context: Optional[int] = None) -> str:
  """Decodes `sample_config.num_tokens` tokens after the prompt (a top_k of
  0 samples from the whole vocabulary); warns past `trained_context`."""
  prompt = tokenizer.encode(sample_config.prompt) or [tokenizer.eos_id]
  tokens = generation.generate(
      model, jnp.asarray([prompt], jnp.int32), sample_config.num_tokens,
      key=jax.random.PRNGKey(seed), temperature=sample_config.temperature,
      top_k=sample_config.top_k or None, cached=cached,
      trained_context=trained_context)
  return tokenizer.decode([int(t) for t in tokens[0]])
