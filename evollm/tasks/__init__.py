"""Evaluation tasks: data loading, prompting and scoring shared by the world and the real benchmarks."""
