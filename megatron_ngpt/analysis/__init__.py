"""Comparing runs: metrics loading, token-budget sweeps, the speedup estimate, plots, reports."""
