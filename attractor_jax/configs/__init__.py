"""ml_collections config files, one per experiment family (big_vision style).

Pick one with `--config=attractor_jax/configs/lm.py:VARIANT`.
"""
