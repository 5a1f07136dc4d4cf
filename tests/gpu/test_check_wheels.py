"""bench/device/check_wheels.py finds what would break an offline install on the GPU machine."""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from pathlib import Path

import pytest

CHECKER = Path(__file__).resolve().parents[2] / "bench" / "device" / "check_wheels.py"


@pytest.fixture
def checker(monkeypatch):
    spec = importlib.util.spec_from_file_location("check_wheels", CHECKER)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "check_wheels", module)
    spec.loader.exec_module(module)
    return module


def _wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any",
           requires: tuple[str, ...] = ()) -> None:
    """A minimal wheel: just the METADATA that the checker reads."""
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-{tag}.whl", "w") as archive:
        archive.writestr(f"{dist}.dist-info/METADATA", "\n".join(lines) + "\n")


def _problems(checker, folder: Path, image: str, python=(3, 12)) -> list[str]:
    image_file = folder / "image.txt"
    image_file.write_text(image)
    wheels = [checker.read_wheel(p) for p in sorted(folder.glob("*.whl"))]
    return checker.check(wheels, checker.read_image(image_file), python)[0]


def _kit(folder: Path) -> None:
    """The shape of the real kit: megatron-core, DeepSpeed and DeepSpeed's pydantic."""
    _wheel(folder, "megatron-core", "0.16.1", "cp312-cp312-manylinux_2_28_x86_64",
           ("torch>=2.6.0", "numpy", "packaging>=24.2", 'tiktoken; extra == "mlm"'))
    _wheel(folder, "deepspeed", "0.19.8", requires=("pydantic>=2.0.0", "hjson", "torch"))
    _wheel(folder, "pydantic", "2.11.10", requires=("typing-extensions>=4.12.2",))
    _wheel(folder, "hjson", "3.1.0", requires=('importlib-metadata; python_version < "3.8"',))


IMAGE = "torch==2.11.0\nnumpy==2.5.2\npackaging\ntyping-extensions\n"


def test_a_complete_kit_passes(checker, tmp_path):
    _kit(tmp_path)
    assert _problems(checker, tmp_path, IMAGE) == []


def test_a_missing_requirement_is_found(checker, tmp_path):
    _kit(tmp_path)
    (tmp_path / "hjson-3.1.0-py3-none-any.whl").unlink()
    assert _problems(checker, tmp_path, IMAGE) == [
        "deepspeed 0.19.8 needs hjson: neither carried nor in the image"]


def test_two_versions_of_a_project_are_refused(checker, tmp_path):
    _kit(tmp_path)
    _wheel(tmp_path, "pydantic", "2.14.4", requires=("typing-extensions>=4.16.0",))
    assert _problems(checker, tmp_path, IMAGE) == [
        "pydantic: 2 versions (2.11.10, 2.14.4); pip refuses to install two"]


def test_versions_are_checked_against_the_image(checker, tmp_path):
    _kit(tmp_path)
    assert _problems(checker, tmp_path, IMAGE.replace("torch==2.11.0", "torch==2.5.1")) == [
        "megatron-core 0.16.1 needs torch>=2.6.0: the image has 2.5.1"]


def test_wheels_for_another_python_or_platform_are_refused(checker, tmp_path):
    _kit(tmp_path)
    _wheel(tmp_path, "pydantic-core", "2.33.2", "cp311-cp311-manylinux_2_17_x86_64")
    _wheel(tmp_path, "msgpack", "1.1.0", "cp312-cp312-manylinux_2_41_x86_64")  # newer glibc
    _wheel(tmp_path, "regex", "2025.1.1", "cp312-cp312-macosx_11_0_arm64")
    problems = _problems(checker, tmp_path, IMAGE)
    assert sorted(p.split(":")[0] for p in problems) == [
        "msgpack-1.1.0-cp312-cp312-manylinux_2_41_x86_64.whl",
        "pydantic_core-2.33.2-cp311-cp311-manylinux_2_17_x86_64.whl",
        "regex-2025.1.1-cp312-cp312-macosx_11_0_arm64.whl"]
    assert _problems(checker, tmp_path, IMAGE, python=(3, 11))[0].startswith("megatron_core")


def test_the_trainers_packages_must_be_carried(checker, tmp_path):
    _wheel(tmp_path, "hjson", "3.1.0")
    assert _problems(checker, tmp_path, IMAGE) == [
        "megatron-core: no wheel (the trainer imports it)",
        "deepspeed: no wheel (the trainer imports it)"]
