"""Training configs small enough for tests, shared by the test modules."""

from attractor_jax.configs import lm


def lm_config(total_steps=6):
  """A 1-layer LM on the built-in corpus: seconds per run."""
  config = lm.get_config()
  config.model.dim = 32
  config.model.mlp_dim = 64
  config.model.num_heads = 2
  config.model.num_layers = 1
  config.solve.max_iter = 6
  config.data.vocab_size = 512
  config.data.seq_len = 32
  config.batch_size = 4
  config.eval_batches = 1
  config.total_steps = total_steps
  config.log_every = 2
  config.eval_every = 100
  config.checkpoint_every = 2
  config.depth_sweep = False
  config.sample.num_tokens = 0
  return config
