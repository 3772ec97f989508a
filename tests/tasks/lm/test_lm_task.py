"""The LM task trains each kind the way the kind is meant to train."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attractor_jax.models import build_model
from attractor_jax.models.config import LoopedConfig
from attractor_jax.tasks.lm import LMTask
from attractor_jax.training import optimizers
from attractor_jax.training import tasks
from attractor_jax.training import trainer

VOCAB, SEQ = 64, 16


def looped_model():
  config = LoopedConfig(vocab_size=VOCAB, dim=32, num_heads=2, mlp_dim=64,
                        prelude_layers=1, num_layers=1, coda_layers=1,
                        mean_depth=3, backprop_depth=1, out_init_scale=1.0)
  return build_model(config, rngs=nnx.Rngs(0))


def batch(seed=0):
  tokens = np.random.default_rng(seed).integers(0, VOCAB, (4, SEQ + 1))
  return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
          "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
          "positions": jnp.broadcast_to(jnp.arange(SEQ), (4, SEQ)),
          "segment_ids": jnp.ones((4, SEQ), jnp.int32)}


@pytest.mark.heavy
def test_looped_model_trains_at_a_sampled_depth_with_truncated_backprop():
  model, data = looped_model(), batch()
  task = LMTask(seed=3)
  step = jnp.asarray(5, jnp.int32)
  loss, _ = task.loss(model, dict(data, **{tasks.STEP_KEY: step}))
  key = jax.random.fold_in(jax.random.PRNGKey(3), step)
  train = model(data["inputs"], targets=data["targets"], train=True, key=key,
                positions=data["positions"], segment_ids=data["segment_ids"])
  evaluation = model(data["inputs"], targets=data["targets"],
                     positions=data["positions"],
                     segment_ids=data["segment_ids"])
  np.testing.assert_allclose(loss, train.loss, rtol=1e-6)
  assert abs(float(loss) - float(evaluation.loss)) > 1e-4
  # Another step draws other depths.
  other, _ = task.loss(model, dict(data, **{tasks.STEP_KEY: step + 1}))
  assert float(other) != float(loss)


@pytest.mark.heavy
def test_train_step_reports_the_training_mode_loss():
  model = looped_model()
  state = trainer.create_train_state(
      model.config, optimizers.OptimizerConfig(total_steps=10), seed=0)
  data = batch()
  expected, _ = LMTask(seed=0).loss(
      state.model, dict(data, **{tasks.STEP_KEY: jnp.asarray(0, jnp.int32)}))
  scalars = trainer.train_step(state.model, state.optimizer, data,
                               task=LMTask(seed=0))
  np.testing.assert_allclose(scalars["loss"], expected, rtol=1e-6)


@pytest.mark.heavy
def test_the_cached_train_step_updates_the_state_it_was_built_from():
  states = [trainer.create_train_state(
      looped_model().config, optimizers.OptimizerConfig(total_steps=10),
      seed=0) for _ in range(2)]
  cached = trainer.cached_train_step(states[1])
  for seed in range(2):
    plain = trainer.train_step(states[0].model, states[0].optimizer,
                               batch(seed), task=LMTask(seed=0))
    ours = cached(batch(seed), task=LMTask(seed=0))
    np.testing.assert_array_equal(plain["loss"], ours["loss"])
  assert states[1].step == states[0].step == 2
  for a, b in zip(jax.tree.leaves(states[0].pure()),
                  jax.tree.leaves(states[1].pure())):
    np.testing.assert_array_equal(a, b)


@pytest.mark.heavy
def test_a_run_prints_validation_and_explains_the_last_word_line(
    tmp_path, capsys, monkeypatch):
  from attractor_jax.tasks.lm import evaluation  # pylint: disable=g-import-not-at-top
  import tiny_configs  # pylint: disable=g-import-not-at-top
  titles = []
  write = evaluation.write_depth_sweep

  def recording_write(rows, out_dir, name, title):
    titles.append(title)
    return write(rows, out_dir, name=name, title=title)

  monkeypatch.setattr(evaluation, "write_depth_sweep", recording_write)
  config = tiny_configs.lm_config(total_steps=2)
  config.last_word_examples = 40
  config.depth_sweep = True
  summary = trainer.train_and_evaluate(config, str(tmp_path))
  out = capsys.readouterr().out
  loss = summary["validation"]["loss"]
  assert f"step 2: validation loss {loss:.4f}, perplexity" in out
  assert "Held-out last words (LAMBADA-style" in out
  result = summary["last_word"]
  assert result["tokens_per_word"] >= 1
  assert result["chance_perplexity"] == pytest.approx(
      config.data.vocab_size ** result["tokens_per_word"])
  assert f"{result['chance_perplexity']:.3g} and accuracy ~0" in out
  assert len(titles) == 2 and titles[0] != titles[1]
  assert (tmp_path / "eval" / "depth_sweep_exact.png").is_file()
