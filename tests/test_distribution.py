"""The distribution: published as circuits-mi (PyPI's `circuits` is an unrelated event
framework), imported as `circuits`, and refusing to import beside that other project."""

from __future__ import annotations

import email
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = "Mechanistic circuits analysis"  # the summary the guard in circuits/__init__.py trusts

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]


def _project() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


def test_pyproject_names_circuits_mi_and_keeps_the_command() -> None:
    project = _project()
    assert project["name"] == "circuits-mi"
    assert project["scripts"] == {"circuits": "circuits.cli:main"}
    assert project["description"].startswith(OURS)  # else the import guard refuses ourselves
    assert "docs" in project["optional-dependencies"]


def _fake_dist(folder: Path, name: str, version: str, summary: str) -> None:
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: {summary}\n"
    )


def _import_circuits(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-c", "import circuits"],
        cwd=path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_refuses_the_unrelated_circuits_distribution(tmp_path: Path) -> None:
    _fake_dist(tmp_path, "circuits", "3.2.5", "Asynchronous Component based Event Application")
    done = _import_circuits(tmp_path)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: the distribution 'circuits'")
    assert "unrelated project" in last and "pip uninstall -y circuits" in last
    assert "pip install circuits-mi" in last


def test_import_accepts_our_own_distribution_under_its_old_name(tmp_path: Path) -> None:
    # An old editable install of this project was called "circuits"; it must not trip the guard.
    _fake_dist(tmp_path, "circuits", "0.1.0", f"{OURS} for conv nets and transformers")
    done = _import_circuits(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools")
def test_wheel_is_circuits_mi_with_the_circuits_package_and_command(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "circuits", src / "circuits", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "-w", str(tmp_path / "out"), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "out").glob("*.whl")
    assert wheel.name.startswith("circuits_mi-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        meta = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    assert meta["Name"] == "circuits-mi" and meta["Summary"].startswith(OURS)
    assert "circuits = circuits.cli:main" in entry_points
    assert "circuits/__init__.py" in names and "circuits/zoo/weights/induction.safetensors" in names
    assert not any(n.startswith("circuits/core/") for n in names)
