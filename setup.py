"""score_sde: score-based generative modelling through SDEs, in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="score_sde",
    version="0.1.0",
    description="Score-based generative models through SDEs, in JAX/Flax",
    url="https://github.com/score-sde/score_sde",  # the notebooks install from here (REPO_URL)
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The config files live at the top of the repository (configs/, for --config) and install
    # as score_sde.configs through the link score_sde/configs -> ../configs, the name they
    # import each other by: no top-level `configs` package in site-packages.
    packages=find_packages(include=["score_sde", "score_sde.*"]),
    package_data={"score_sde": ["metrics/*.msgpack"]},
    install_requires=[
        "jax>=0.6,<0.12",
        "flax>=0.10,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "etils[epath]>=1.7,<2",  # every file path, local or gs:// (score_sde.storage)
        "ml_collections>=1.0,<2",
        "absl-py>=2.0,<3",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "diffrax>=0.6,<0.8",
        "scikit-learn>=1.3,<2",
        "tensorboardX>=2.6,<3",
        "pillow>=10,<14",
        "matplotlib>=3.7,<4",
        "msgpack>=1.0,<2",
        "tqdm>=4.60,<5",
        "grain>=0.2.10,<0.3",  # the in-process (num_workers=0) threaded image reader
    ],
    extras_require={
        # gs:// work directories: etils.epath reaches buckets through gcsfs (or TensorFlow),
        # tensorboardX through google-cloud-storage; orbax needs nothing more (tensorstore)
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.14,<4"],
        "gpu": ["jax[cuda12]>=0.6,<0.12"],
        "tfds": ["tensorflow-datasets>=4.9.7", "array_record>=0.5"],
        # benchmarks/published_solvers.py: diffusers' schedulers; k-diffusion's samplers need
        # `pip install --no-deps k-diffusion==0.1.1.post1` (its dctorch pins numpy < 2: jax breaks)
        "bench": ["torch==2.13.0", "diffusers>=0.30,<1", "torchdiffeq>=0.2,<1",
                  "torchsde>=0.2.6,<1", "tqdm>=4"],
        # torch (CPU wheel) + pytorch-fid: the reference network of the Inception equivalence test.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "torch==2.13.0",
                 "torchvision==0.28.0", "pytorch-fid==0.3.0",
                 # gs:// work directories, tested against a local GCS emulator
                 "gcsfs>=2024.2", "google-cloud-storage>=2.14,<4",
                 "gcp-storage-emulator>=2026.7,<2028",
                 # the notebooks run top to bottom in the tests
                 "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29",
                 # the tfds data_source pipeline is tested on tfds.testing.mock_data
                 "tensorflow-datasets>=4.9.7", "array_record>=0.5"],
    },
)
