"""The notebooks run top to bottom on the CPU in small mode, and are committed without outputs.

Each notebook is read into memory and executed there (the committed file is never written) in
a fresh kernel with SCORE_SDE_NOTEBOOK_SMALL=1, the working directory notebooks/ and this
checkout first on the path, as a user would run it: on one CPU device, and the demo (whose
training and sampling are sharded) on 8 simulated ones too. The setup cell's install logic
(decisions only; nothing is installed) is tested on its own. Needs the test extra's nbclient,
nbformat and ipykernel; skipped without them.
"""

from __future__ import annotations

import ast
import json
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
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


def _execute(name: str, monkeypatch, tmp_path, devices: int, extra_cells: list[str] = ()):
    """Run a notebook in small mode on `devices` CPU devices; returns it with its outputs."""
    monkeypatch.setenv("SCORE_SDE_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # this checkout, not another installed copy
    if devices == 1:
        monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device, like a user's kernel
    else:
        monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count={devices}")

    nb = _read(name)
    nb.cells.extend(nbformat.v4.new_code_cell(source) for source in extra_cells)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    try:
        client.execute()
    finally:  # the executed copy, for a look at the outputs of a failing run
        nbformat.write(nb, tmp_path / name)
    print(f"{name} on {devices} device(s): executed in {time.perf_counter() - start:.0f} s "
          f"(executed copy: {tmp_path / name})")

    errors = [out for cell in nb.cells for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert not errors
    figures = sum(_figures(cell) for cell in nb.cells)
    assert figures == NOTEBOOKS[name], f"{name}: {figures} figures, expected {NOTEBOOKS[name]}"
    return nb


def _stdout(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", [])
                   if out.get("name") == "stdout")


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_runs_top_to_bottom_in_small_mode(name, monkeypatch, tmp_path):
    nb = _execute(name, monkeypatch, tmp_path, devices=1)
    out = _stdout(nb)
    assert str(ROOT / "score_sde") in out and "1 local device(s)" in out  # the setup cell
    if name == "score_sde_demo.ipynb":
        assert "split over 1 device(s)" in out


# Run in the kernel after the demo: how its trained parameters and its last samples lie.
SHARDING_REPORT = """
import json
leaves = jax.tree.leaves(state.params)
print("SHARDING", json.dumps({
    "devices": jax.local_device_count(),
    "params_replicated": all(leaf.sharding.is_fully_replicated for leaf in leaves),
    "params_devices": sorted({len(leaf.sharding.device_set) for leaf in leaves}),
    "samples": x.shape[0], "per_device": x.sharding.shard_shape(x.shape)[0],
    "sample_devices": len({shard.device for shard in x.addressable_shards}),
}))
"""


@pytest.mark.slow
def test_demo_shards_over_8_devices(monkeypatch, tmp_path):
    nb = _execute("score_sde_demo.ipynb", monkeypatch, tmp_path, devices=8,
                  extra_cells=[SHARDING_REPORT])
    out = _stdout(nb)
    assert "8 local device(s)" in out
    # The training batches and every sampler's output, as printed from the arrays themselves.
    assert "steps of batch 16 split over 8 device(s)" in out
    assert "samples per sampler: 16 split over 8 device(s)" in out
    report = json.loads(out.split("SHARDING", 1)[1].splitlines()[0])
    assert report["devices"] == 8
    assert report["params_replicated"] and report["params_devices"] == [8]
    assert report["sample_devices"] == 8  # the SDEdit samples of the last cell
    assert report["per_device"] * 8 == report["samples"]


# ---------------------------------------------------------------- the setup cell's decisions


def _setup_cell(name: str) -> str:
    return next(cell.source for cell in _read(name).cells if cell.cell_type == "code")


@pytest.fixture(scope="module")
def setup_cell() -> dict:
    """The setup cell's imports, REPO_URL and functions, without its actions (nothing runs)."""
    tree = ast.parse(_setup_cell("score_sde_demo.ipynb"))
    tree.body = [node for node in tree.body
                 if isinstance(node, ast.Import | ast.ImportFrom | ast.Assign | ast.FunctionDef)]
    namespace: dict = {}
    exec(compile(tree, "setup cell", "exec"), namespace)
    return namespace


def test_notebooks_share_one_setup_cell():
    sources = {_setup_cell(name) for name in NOTEBOOKS}
    assert len(sources) == 1, "the notebooks' first code cells differ: keep them identical"


def test_repo_url_default_is_setup_py_url(setup_cell):
    assert setup_cell["REPO_URL"] == setup_cell["setup_arg"](str(ROOT / "setup.py"), "url")
    assert setup_cell["REPO_URL"].startswith("https://")


def test_setup_reads_the_jax_range_of_setup_py(setup_cell):
    from importlib.metadata import version

    requires = setup_cell["setup_arg"](str(ROOT / "setup.py"), "install_requires")
    jax_req = [Requirement(r) for r in requires if Requirement(r).name == "jax"]
    assert len(jax_req) == 1 and jax_req[0].specifier
    assert version("jax") in jax_req[0].specifier  # the test environment is in range too


JAX_RANGE = "jax>=0.6,<0.12"


def test_setup_keeps_a_runtime_stack_in_range(setup_cell):
    installed = {"jax": "0.7.2", "jaxlib": "0.7.2", "libtpu": "0.0.21", "numpy": "2.1.0"}
    pins, note = setup_cell["jax_plan"](JAX_RANGE, installed)
    assert pins == ["jax==0.7.2", "jaxlib==0.7.2", "libtpu==0.0.21"]
    assert note.startswith("keeping the runtime's jax==0.7.2, jaxlib==0.7.2, libtpu==0.0.21")
    pins, _ = setup_cell["jax_plan"](JAX_RANGE, {"jax": "0.6.0", "jaxlib": "0.6.0"}, gpu=True)
    assert pins == ["jax==0.6.0", "jaxlib==0.6.0"]


@pytest.mark.parametrize("installed, gpu, extras, found", [
    ({"jax": "0.4.33", "jaxlib": "0.4.33", "libtpu": "0.0.2"}, False, {"tpu"}, "jax 0.4.33"),
    ({"jax": "0.12.0", "jaxlib": "0.12.0"}, True, {"cuda12"}, "jax 0.12.0"),
    ({"jax": "0.5.3", "jaxlib": "0.5.3"}, False, set(), "jax 0.5.3"),
    ({}, False, set(), "no jax"),
])
def test_setup_installs_jax_in_range_otherwise(setup_cell, installed, gpu, extras, found):
    pins, note = setup_cell["jax_plan"](JAX_RANGE, installed, gpu=gpu)
    assert len(pins) == 1
    wanted = Requirement(pins[0])
    assert wanted.name == "jax" and wanted.extras == extras
    assert wanted.specifier == SpecifierSet(">=0.6,<0.12")
    assert f"the runtime has {found}, outside" in note and f"installing {pins[0]}" in note
    assert ("libtpu" in note) == ("tpu" in extras)


def test_setup_without_network_names_the_url(setup_cell, tmp_path):
    url = (tmp_path / "no-such-repository.git").as_uri()  # fails at once, as offline would
    with pytest.raises(RuntimeError, match="could not be cloned") as err:
        setup_cell["clone"](url, str(tmp_path / "clone"))
    assert url in str(err.value) and "REPO_URL" in str(err.value)
    assert setup_cell["clone"](str(tmp_path), str(tmp_path / "clone")) == str(tmp_path)


def test_setup_installs_from_repo_url_when_missing(setup_cell, monkeypatch, tmp_path, capsys):
    # The whole install branch, with pip replaced by a recorder: this checkout as REPO_URL.
    from importlib.metadata import version

    calls = []
    monkeypatch.setattr(setup_cell["importlib"].util, "find_spec", lambda name: None)
    monkeypatch.setattr(setup_cell["subprocess"], "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.chdir(tmp_path)  # outside any checkout
    setup_cell["ensure_score_sde"](str(ROOT))
    assert calls == [[sys.executable, "-m", "pip", "install", "-q", str(ROOT),
                      f"jax=={version('jax')}", f"jaxlib=={version('jaxlib')}"]]
    assert Path.cwd() == NOTEBOOK_DIR  # where the notebooks find ../tests/fixtures
    out = capsys.readouterr().out
    assert f"installing score_sde from {ROOT}; keeping the runtime's jax==" in out
