"""benchmarks/restore_digits.py's smoke mode: a network at random weights, one task, one
method, a tiny budget; the results file and its tables."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_restore_digits_quick_writes_cells_baselines_and_tables(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks import restore_digits

    out = tmp_path / "r.json"
    restore_digits.main(["--quick", "--config", "configs/tiny.py", "--tasks", "denoise@0.1",
                         "--methods", "ddrm:samples=2;mmps", "--nfes", "4", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["n"] == 8 and results["unconditional"] is None
    (base,) = results["baselines"]
    assert base["baseline"] == "observation" and base["task"] == "denoise@0.1"
    assert 15 < base["psnr"] < 30  # noise of std 0.05 in [0, 1] units, clipped: about 26 dB
    ddrm, mmps = results["cells"]
    assert ddrm["nfe_used"] == 4 and np.isfinite(ddrm["psnr"]) and ddrm["digits_fd_floor"] > 0
    assert "nfe=4 is below the cost" in mmps["skipped"]  # 2 + 6 CG steps per call
    tables = capsys.readouterr().out
    assert "| ddrm:samples=2 4 |" in tables and "| y (as is) |" in tables
    restore_digits.main(["--summarize", str(out)])
    assert "targets" in capsys.readouterr().out


@pytest.mark.slow
def test_posterior_cost_measures_one_method_in_process():
    sys.path.insert(0, str(ROOT))
    from benchmarks import posterior_cost

    args = posterior_cost.argparse.Namespace(
        config="configs/tiny.py", task="sr2_avgpool", sigma_y=0.05, nfe=8, batch=2,
        repeats=1, warmup=0, method="ddrm")
    row = posterior_cost.measure(args)
    assert row["nfe_used"] == 8 and row["finite"] and row["seconds_per_image"] > 0
    assert row["xla_buffers_mib"] > 0 and row["peak_rss_mib"] > 100
    assert "| ddrm | 8 |" in posterior_cost.table([row])
