"""Comparing finished runs: metrics, final losses, the speedup estimate, plots and reports."""
