"""megatron-ngpt: nGPT and GPT-2 pretraining on megatron-core + DeepSpeed."""
from setuptools import find_packages, setup

setup(
    name="megatron-ngpt",
    version="0.1.0",
    description="Pretraining stack for nGPT (normalized transformer) and its GPT-2 baseline",
    packages=find_packages(include=["megatron_ngpt", "megatron_ngpt.*"]),
    # What the demo, the sweep and `--config NAME` need from a plain (non-editable) install.
    package_data={"megatron_ngpt": ["configs/*.yaml", "configs/*/*.yaml", "slurm/*.sh",
                                    "eval/tasks/*.yaml", "eval/tasks/*.jsonl",
                                    "eval/tasks/*/*.yaml", "eval/tasks/*/*.jsonl"]},
    python_requires=">=3.10",
    # torch is deliberately unpinned here: GPU users keep their CUDA build. CPU machines get the
    # local CPU wheel first through `make install` (see Makefile).
    install_requires=[
        "torch>=2.4",
        # The suite has run against 0.19.8 only; parallel/deepspeed_internals.py asserts the private
        # layout it reads, so another version fails at start-up rather than training wrong.
        "deepspeed==0.19.8",
        "megatron-core==0.16.1",
        "sentencepiece",
        "numpy",
        "pyyaml",
        "tqdm",
        "wandb",
        "xxhash",
        "zstandard",
    ],
    extras_require={
        "eval": ["lm-eval", "transformers", "safetensors", "accelerate", "datasets"],
        "plots": ["matplotlib"],  # tools/plot_runs.py and the demo's report
        "gpu": ["transformer-engine[pytorch]", "flash-attn"],
        # triton: the nGPT kernels' CPU tests run them in Triton's interpreter.
        "dev": ["pytest", "pytest-timeout", "ruff", "matplotlib", "triton"],
    },
)
