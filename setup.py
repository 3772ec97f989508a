"""attractor_jax: Attractor Models in JAX/Flax."""

import setuptools

setuptools.setup(
    name="attractor_jax",
    version="0.1.0",
    description=("Attractor Models: fixed-point solved looped transformers, "
                 "with implicit differentiation, in JAX/Flax."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["attractor_jax", "attractor_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.5.0",
        "numpy>=1.26",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            # Cross-check only: jaxopt is no longer maintained upstream.
            "jaxopt>=0.8.3",
        ],
    },
)
