"""The notebooks run top to bottom on the CPU in small mode, and are committed without outputs.

Each notebook is read into memory and executed there (the committed file is never written) in
a fresh kernel with SCORE_SDE_NOTEBOOK_SMALL=1 and the working directory notebooks/, as a user
would run it. Needs the test extra's nbclient, nbformat and ipykernel; skipped without them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
# notebook -> the number of figures it shows (one per plt.show()), checked after a run.
NOTEBOOKS = {
    "sde_tour_2d.ipynb": 6,
    "score_sde_demo.ipynb": 7,
}
CELL_TIMEOUT_S = 600  # per cell; a small-mode cell takes seconds to a minute on 2 busy cores


def _read(name: str):
    return nbformat.read(NOTEBOOK_DIR / name, as_version=4)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    dirty = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"{name}: code cells {dirty} carry outputs or execution counts; clear "
                       "them before committing (e.g. Jupyter's 'Clear All Outputs')")


def _figures(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_runs_top_to_bottom_in_small_mode(name, monkeypatch, tmp_path):
    monkeypatch.setenv("SCORE_SDE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, like a user's kernel

    nb = _read(name)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:  # the executed copy, for a look at the outputs of a failing run
        nbformat.write(nb, tmp_path / name)
    print(f"{name}: executed in {time.perf_counter() - start:.0f} s "
          f"(executed copy: {tmp_path / name})")

    errors = [out for cell in nb.cells for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors
    figures = sum(_figures(cell) for cell in nb.cells)
    assert figures == NOTEBOOKS[name], f"{name}: {figures} figures, expected {NOTEBOOKS[name]}"
