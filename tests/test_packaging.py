"""What the package installs (issue 24, item 9): everything under the name score_sde.

The config files stay at the top of the repository (users pass their paths to --config) and
install as score_sde.configs, the name they import each other by (score_sde/configs is a link
to ../configs), so no top-level `configs` package lands in site-packages.
"""

import ast
import os
import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import setuptools

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _setup_kwargs(monkeypatch) -> dict:
    """The keyword arguments setup.py passes to setuptools.setup (nothing is built)."""
    captured = {}
    monkeypatch.chdir(ROOT)  # setup.py reads README.md
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    runpy.run_path(str(ROOT / "setup.py"), run_name="__main__")
    return captured


def _config_packages() -> set[str]:
    """score_sde.configs and one subpackage per folder of configs/ with an __init__.py."""
    return {".".join(("score_sde", *init.parent.relative_to(ROOT).parts))
            for init in CONFIGS.rglob("__init__.py")}


def test_every_installed_package_is_under_score_sde(monkeypatch):
    packages = _setup_kwargs(monkeypatch)["packages"]
    assert [p for p in packages if p.split(".")[0] != "score_sde"] == []
    assert "score_sde.configs" in packages and _config_packages() <= set(packages)


def test_score_sde_configs_is_the_configs_folder():
    assert (ROOT / "score_sde" / "configs").resolve() == CONFIGS.resolve()
    import score_sde.configs.digits

    assert Path(score_sde.configs.digits.__file__).resolve() == (CONFIGS / "digits.py").resolve()


@pytest.mark.parametrize("path", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.py")))
def test_config_files_import_each_other_as_score_sde_configs(path):
    """A config file is loaded by path (--config); its imports of other config files must name
    the installed package, which a wheel has too."""
    tree = ast.parse((CONFIGS / path).read_text())
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert [n for n in names if n.split(".")[0] == "configs"] == []


@pytest.mark.slow
def test_the_wheel_installs_the_configs_under_score_sde(tmp_path):
    """Build the wheel from a copy of the sources (the checkout gets no build/ folder), check
    its top-level names and load a config file from it where no `configs` package exists."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("score_sde", "configs"):
        shutil.copytree(ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"score_sde"}
    shipped = {n[:-len("/__init__.py")].replace("/", ".") for n in names
               if n.endswith("/__init__.py")}
    assert _config_packages() <= shipped
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    load = ("import sys; sys.modules['configs'] = None; import score_sde.configs.digits_cd as m; "
            "print(m.__file__, m.get_config().training.objective)")
    done = subprocess.run([sys.executable, "-c", load], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(site),
                                                       "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(site / "score_sde" / "configs" / "digits_cd.py"), "cd"]
