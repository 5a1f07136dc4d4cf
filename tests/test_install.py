"""A plain `pip install .` (not editable) runs from outside the checkout: the package carries the
configs, the SLURM launcher and the tools it needs, and its stages are `python -m` modules."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.distributed import REPO, clean_env

pytestmark = pytest.mark.slow


def _run(python: Path, *args: str, cwd: Path) -> str:
    proc = subprocess.run([str(python), *args], cwd=cwd, env=clean_env(), capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


_TOP_LEVEL_CLUTTER = {".git", ".venv", "build", "runs", "data", ".whl", "gpu_report"}


def _checkout_clutter(folder: str, names: list[str]) -> set[str]:
    """What a user's checkout may hold besides the source; `data` only at the top level, since
    megatron_ngpt/data is a package."""
    top = Path(folder) == REPO
    return {n for n in names if (top and n in _TOP_LEVEL_CLUTTER)
            or n.endswith(".egg-info") or n == "__pycache__"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with this project installed from a wheel; its dependencies are this
    environment's (a .pth line: .pth files there, such as the editable install's, stay inert)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=venv).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    source = venv / "source"  # setuptools builds in the source tree: keep the checkout clean
    shutil.copytree(REPO, source, symlinks=True, ignore=_checkout_clutter)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(source)],
                   check=True, timeout=600, capture_output=True)
    shutil.rmtree(source)
    return python


def test_the_installed_package_is_not_the_checkout(installed, tmp_path):
    where = _run(installed, "-c", "import megatron_ngpt; print(megatron_ngpt.__file__)",
                 cwd=tmp_path)
    assert "site-packages" in where and str(REPO) not in where


def test_summary_finds_packaged_configs(installed, tmp_path):
    out = _run(installed, "-m", "megatron_ngpt.summary", "configs/ngpt_0.5b_1k.yaml", cwd=tmp_path)
    assert "Total parameters: 468491520" in out.splitlines()


def test_demo_first_stages_and_sweep_plan_run_outside_the_checkout(installed, tmp_path):
    log = _run(installed, "-m", "megatron_ngpt.cli.demo", "--quick", "--out", "demo",
               "--until", "preprocess", cwd=tmp_path)
    for stage in ("corpus", "tokenizer", "preprocess"):
        assert f"] {stage}: done in" in log
    assert (tmp_path / "demo" / "data" / "train_text_document.bin").stat().st_size > 0
    plan = _run(installed, "-m", "megatron_ngpt.cli.sweep", "--models", "ngpt", "--budgets",
                "8K", "--base-config", "configs/tiny", "--out", "sweep", "--launcher", "slurm",
                "--dry-run", cwd=tmp_path)
    wrap = next(word for word in shlex.split(plan) if word.startswith("--wrap="))
    launcher = Path(shlex.split(wrap.removeprefix("--wrap="))[-1])
    assert "site-packages" in str(launcher) and launcher.is_file()
