"""Validation loss, perplexity and the test-time depth sweep."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax.models import lm_common
from attractor_jax.models.attractor_lm import AttractorLM
from attractor_jax.models.config import ModelConfig
from attractor_jax.models.gpt import GPT
from attractor_jax.models.looped import Looped
from attractor_jax.nn.attractor_head import SolveConfig
from attractor_jax.tasks.lm import evaluation

TINY = dict(vocab_size=64, dim=32, num_heads=2, mlp_dim=64, num_layers=1,
            head_layers=1, out_init_scale=1.0, gate_init=0.2)


def make_batches():
  """Three [2, 8] batches with different counts of ignored targets."""
  rng = np.random.default_rng(0)
  batches = []
  for ignored in (0, 5, 11):
    inputs = rng.integers(0, 64, (2, 8)).astype(np.int32)
    targets = rng.integers(0, 64, (2, 8)).astype(np.int32)
    targets.reshape(-1)[:ignored] = -100
    batches.append({
        "inputs": inputs, "targets": targets,
        "segment_ids": np.ones((2, 8), np.int32),
        "positions": np.broadcast_to(np.arange(8, dtype=np.int32), (2, 8))})
  return batches


def loss_of_all(model, batches, max_iter=None):
  """The loss of one call on the batches concatenated along the batch axis."""
  joined = {k: jnp.concatenate([b[k] for b in batches]) for k in batches[0]}
  step = nnx.jit(lambda m, b: m(b["inputs"], targets=b["targets"],
                                segment_ids=b["segment_ids"],
                                positions=b["positions"],
                                max_iter=max_iter).loss)
  return float(step(model, joined))


@pytest.fixture(scope="module")
def model():
  config = ModelConfig(**TINY, solve=SolveConfig(max_iter=4))
  return AttractorLM(config, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def rows(model):
  return evaluation.depth_sweep(model, make_batches())


def test_depth_schedule():
  assert evaluation.depth_schedule(0) == [0]
  assert evaluation.depth_schedule(1) == [0, 1]
  assert evaluation.depth_schedule(2) == [0, 1, 2]
  assert evaluation.depth_schedule(8) == [0, 1, 2, 4, 8]
  assert evaluation.depth_schedule(12) == [0, 1, 2, 4, 8, 12]
  with pytest.raises(ValueError):
    evaluation.depth_schedule(-1)


@pytest.mark.heavy
def test_evaluate_weights_batches_by_their_tokens(model):
  batches = make_batches()
  result = evaluation.evaluate(model, batches)
  expected = loss_of_all(model, batches)
  np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
  assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
  assert result["tokens"] == 3 * 16 - 16
  # The third batch's first row has no target: it counts in no mean.
  assert (result["sequences"], result["batches"]) == (5, 3)
  assert 0 < result["iterations"] <= 4
  assert 0 <= result["converged_fraction"] <= 1
  assert result["head_contribution"] > 0
  unweighted = np.mean([evaluation.evaluate(model, [b])["loss"]
                        for b in batches])
  assert abs(unweighted - expected) > 1e-4  # The weighting matters here.


@pytest.mark.heavy
def test_sweep_rows_and_t0_decodes_the_proposal(model, rows):
  assert [row["T"] for row in rows] == [0, 1, 2, 4]
  for row in rows:
    assert set(row) == set(evaluation.ROW_KEYS)
    assert row["iterations"] <= row["T"]
    assert row["perplexity"] == pytest.approx(math.exp(row["loss"]))
  t0 = rows[0]
  np.testing.assert_allclose(
      t0["loss"], loss_of_all(model, make_batches(), max_iter=0), rtol=1e-5)
  assert t0["converged_fraction"] == 0.0 and math.isnan(t0["residual"])
  assert t0["head_contribution"] == pytest.approx(0.0, abs=1e-6)
  assert rows[-1]["iterations"] > 0 and rows[-1]["loss"] != t0["loss"]


def test_batches_may_be_a_callable_but_not_an_iterator(model):
  rows = evaluation.depth_sweep(model, make_batches, depths=[0])
  assert rows[0]["T"] == 0
  with pytest.raises(ValueError, match="iterator"):
    evaluation.depth_sweep(model, iter(make_batches()))


def test_write_depth_sweep(rows, tmp_path):
  paths = evaluation.write_depth_sweep(rows, tmp_path / "eval")
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(paths["json"], encoding="utf-8") as f:
    json.load(f)  # Standard JSON (no bare NaN).
  back = evaluation.read_depth_sweep(paths["json"])
  for row, read in zip(rows, back, strict=True):
    assert read.keys() == row.keys()
    for key, value in row.items():
      assert read[key] == value or (math.isnan(read[key]) and math.isnan(value))
  with open(paths["txt"], encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert lines[0].split()[:3] == ["T", "loss", "perplexity"]
  assert len(lines) == 1 + len(rows)
  assert len({len(line) for line in lines}) == 1  # Aligned columns.


def test_gpt_evaluates_but_has_no_depth_sweep():
  gpt = GPT(ModelConfig(kind="gpt", **TINY), rngs=nnx.Rngs(0))
  result = evaluation.evaluate(gpt, make_batches())
  assert "iterations" not in result and math.isfinite(result["loss"])
  with pytest.raises(ValueError, match="fixed depth"):
    evaluation.depth_sweep(gpt, make_batches())


@pytest.mark.heavy
def test_looped_sweep_runs_t_loop_steps():
  config = ModelConfig(kind="looped", mean_depth=1, **TINY)
  looped = Looped(config, rngs=nnx.Rngs(0))
  rows = evaluation.depth_sweep(looped, make_batches())
  assert [row["T"] for row in rows] == [0, 1, 2]
  assert [row["iterations"] for row in rows] == [0.0, 1.0, 2.0]
  assert all(math.isnan(row["converged_fraction"]) for row in rows)
  assert len({row["loss"] for row in rows}) == 3


@pytest.mark.heavy
def test_validation_covers_the_whole_split_and_pads_the_last_batch(tmp_path):
  from tiny_configs import lm_config as tiny_config
  from attractor_jax import data as data_lib
  from attractor_jax.tasks.lm import data as lm_data
  config = tiny_config()
  config.eval_batches = 0                      # the default: the whole split
  prepared = lm_data.prepare_data(config, str(tmp_path))
  _, val_docs = data_lib.split_documents(
      lm_data.load_documents(config.data),
      config.data.validation_fraction, seed=config.seed)
  rows = list(data_lib.make_lm_dataset(
      data_lib.tokenize_documents(val_docs, prepared.tokenizer),
      config.data.seq_len, 1, eos_id=prepared.tokenizer.eos_id,
      pad_id=prepared.tokenizer.pad_id, shuffle=False, num_epochs=1,
      drop_remainder=False))
  batches = prepared.validation
  assert len(rows) % config.batch_size            # a partial last batch
  assert len(batches) == -(-len(rows) // config.batch_size)
  assert {len(b["inputs"]) for b in batches} == {config.batch_size}
  targets = lambda bs: sum(int(np.sum(b["targets"] != -100)) for b in bs)
  assert targets(batches) == targets(rows)        # no token dropped
  model = AttractorLM(ModelConfig(**dict(TINY, vocab_size=512)),
                      rngs=nnx.Rngs(0))
  result = evaluation.evaluate(model, batches)
  assert result["tokens"] == targets(rows)
  assert result["sequences"] == len(rows)         # padding rows not counted


@pytest.mark.heavy
def test_exact_sweep_applies_the_map_exactly_t_times(model):
  batches = make_batches()
  exact = evaluation.depth_sweep(model, batches, depths=[0, 1, 3, 8],
                                 exact=True)
  capped = evaluation.depth_sweep(model, batches, depths=[3, 8])
  assert [row["iterations"] for row in exact] == [0.0, 1.0, 3.0, 8.0]

  def applied(t):
    """Loss of f^t(c), written out with the model's own pieces."""
    def loss(m, b):
      c = m.propose(b["inputs"], positions=b["positions"],
                    segment_ids=b["segment_ids"])
      y = c
      for _ in range(t):
        y = m.head.map(y, c, positions=b["positions"],
                       segment_ids=b["segment_ids"])
      logits = m.unembed(y, m.embed)
      return lm_common.cross_entropy(logits, b["targets"], -100)
    joined = {k: jnp.concatenate([b[k] for b in batches]) for k in batches[0]}
    return float(nnx.jit(loss)(model, joined))

  for row in exact:
    np.testing.assert_allclose(row["loss"], applied(row["T"]), rtol=1e-5)
  # The solver's capped sweep stops once converged: T = 3 and 8 agree there,
  # while 3 and 8 applications differ.
  assert capped[0]["iterations"] < 8 and capped[1]["iterations"] < 8
  assert exact[2]["loss"] != exact[3]["loss"]
