"""Configs for the driver tests: configs/tiny.py made even cheaper to compile.

The same overrides exist as a dict (for in-process runs) and as `--config.*` flags (for
subprocess runs of score_sde.main), so both build the identical config.
"""

from __future__ import annotations

import ml_collections

# A one-level U-Net without attention compiles in a few seconds on the CPU.
FAST = {
    "model.ch_mult": (1,),
    "model.attn_resolutions": (),
    "model.dropout": 0.0,
    "training.snapshot_sampling": False,
    "training.n_jitted_steps": 1,
    "data.random_flip": False,
}


def _set(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value


def tiny(overrides: dict | None = None) -> ml_collections.ConfigDict:
    from configs.tiny import get_config

    config = get_config()
    for k, v in {**FAST, **(overrides or {})}.items():
        _set(config, k, v)
    return config


def cli(overrides: dict | None = None) -> list[str]:
    """The same overrides as command-line flags for score_sde.main with configs/tiny.py."""
    return ["--config=configs/tiny.py"] + [f"--config.{k}={_literal(v)}"
                                           for k, v in {**FAST, **(overrides or {})}.items()]


def _literal(v) -> str:
    if isinstance(v, tuple):
        return "(" + ",".join(str(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    return str(v)
