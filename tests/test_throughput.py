"""benchmarks/throughput.py runs end to end on the tiny config (structure only, not speed)."""

from __future__ import annotations

import importlib.util
import json
import os

import ml_collections
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location(
        "throughput", os.path.join(ROOT, "benchmarks", "throughput.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_config_bf16_reports_speed_flops_and_memory(throughput, tmp_path):
    out = tmp_path / "throughput.json"
    # bf16 exercises the whole mixed-precision path; batch 8 splits over the 8 test devices;
    # one resolution level (ch_mult=1) keeps the two compiles short.
    results = throughput.main(["--config", os.path.join(ROOT, "configs", "tiny.py"),
                               "--batch", "8", "--precision", "bf16", "--iters", "1",
                               "--set", "model.ch_mult=1", "--json", str(out)])
    assert json.loads(out.read_text()) == results
    (r,) = results
    assert r["precision"] == "bf16" and r["batch"] == 8 and r["params"] > 0
    for key in ("train_img_per_s", "forward_img_per_s", "train_step_ms", "forward_ms",
                "train_gflop_per_img", "forward_gflop_per_img", "train_gbytes_per_step",
                "forward_gbytes_per_call", "train_program_bytes", "forward_program_bytes"):
        assert r[key] > 0, key
    assert r["train_gflop_per_img"] > r["forward_gflop_per_img"]  # backward + update
    assert r["train_mfu"] is None or 0 < r["train_mfu"] < 1  # None: unknown CPU peak


def test_set_field_converts_to_the_field_type_and_accepts_new_fields(throughput):
    config = ml_collections.ConfigDict(
        {"model": {"nf": 128, "ch_mult": (1, 2), "fir": False, "dtype": "float32"}})
    for item in ("model.nf=32", "model.ch_mult=1,2,2", "model.fir=true",
                 "model.dtype=bfloat16", "model.remat=True"):
        throughput._set_field(config, *item.split("=", 1))
    assert config.model.nf == 32 and config.model.ch_mult == (1, 2, 2)
    assert config.model.fir is True and config.model.remat is True
    assert config.model.dtype == "bfloat16"
