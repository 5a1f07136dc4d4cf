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
        "deepspeed>=0.16",
        "megatron-core==0.16.1",
        "sentencepiece",
        "numpy",
        "pyyaml",
        "tqdm",
        "wandb",
        "zstandard",
    ],
    extras_require={
        "eval": ["lm-eval", "transformers", "safetensors", "accelerate", "datasets"],
        "plots": ["matplotlib"],  # tools/plot_runs.py and the demo's report
        "gpu": ["transformer-engine[pytorch]", "flash-attn"],
        "dev": ["pytest", "ruff", "matplotlib"],
    },
)
