"""Starting runs: budget sweeps (planned as a manifest), local and SLURM launching, the demo."""
