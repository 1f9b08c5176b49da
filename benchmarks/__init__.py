"""Reproducible measurements of score_sde; each study is a module or script (benchmarks/README.md).

A package so that the sampler studies run as `python -m benchmarks.<study>` over one shared
core (benchmarks/sampler_core.py); it is not installed with score_sde.
"""
