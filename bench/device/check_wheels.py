"""Check a folder of wheels against a target machine before carrying it there.

The GPU machines reach no package registry: `run.sh` installs the carried wheels with
``pip install --no-index --no-deps``, so nothing may be missing and nothing may clash. This checks,
for CPython 3.12 (the machine's; `--python` for another) on x86-64 Linux with glibc 2.39:

- every wheel installs there (its tags), and each project comes in one version only;
- every requirement of every wheel (markers evaluated for that Python, no extras) is met by a
  carried wheel or by a package the machine's image already has (`gpu_image_packages.txt`),
  with the version checked wherever one is known;
- the projects the trainer needs are among the wheels.

    python bench/device/check_wheels.py .whl [--python 3.12] [--image FILE]

Prints one line per wheel with its size, then the total; exits 1 with the problems otherwise.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
NEEDED = ("megatron-core", "deepspeed")
GLIBC = (2, 39)  # Ubuntu 24.04, whose Python is 3.12.3


def markers(python: tuple[int, int]) -> dict[str, str]:
    """Environment markers of CPython `python` on x86-64 Linux, no extras requested."""
    return {"python_version": f"{python[0]}.{python[1]}",
            "python_full_version": f"{python[0]}.{python[1]}.0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
            "extra": ""}


@dataclass
class Wheel:
    path: Path
    name: str
    version: Version
    tags: frozenset[Tag]
    requires: list[Requirement]


def read_wheel(path: Path) -> Wheel:
    name, version, _, tags = parse_wheel_filename(path.name)
    with zipfile.ZipFile(path) as archive:
        metadata = next(n for n in archive.namelist()
                        if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        message = Parser().parsestr(archive.read(metadata).decode())
    requires = [Requirement(line) for line in message.get_all("Requires-Dist") or []]
    return Wheel(path, canonicalize_name(name), version, tags, requires)


def installable(tag: Tag, python: tuple[int, int]) -> bool:
    """Whether CPython `python` on x86-64 Linux with glibc 2.39 takes a wheel with this tag."""
    py = f"{python[0]}{python[1]}"
    interpreter_ok = tag.interpreter in {"py3", f"py{py}", f"cp{py}"} or (
        tag.abi == "abi3" and tag.interpreter.startswith("cp3")
        and int(tag.interpreter[3:]) <= python[1])
    abi_ok = tag.abi in {"none", "abi3", f"cp{py}"}
    platform = tag.platform
    if platform == "any":
        platform_ok = True
    elif platform.startswith("manylinux") and platform.endswith("_x86_64"):
        legacy = {"manylinux1_x86_64": (2, 5), "manylinux2010_x86_64": (2, 12),
                  "manylinux2014_x86_64": (2, 17)}
        if platform in legacy:
            glibc = legacy[platform]
        else:
            major, minor = platform.removeprefix("manylinux_").removesuffix("_x86_64").split("_")
            glibc = (int(major), int(minor))
        platform_ok = glibc <= GLIBC
    else:
        platform_ok = False
    return interpreter_ok and abi_ok and platform_ok


def read_image(path: Path) -> dict[str, Version | None]:
    """Package name -> version (None where the list gives none)."""
    image = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            image[canonicalize_name(name)] = Version(version) if version else None
    return image


def check(wheels: list[Wheel], image: dict[str, Version | None],
          python: tuple[int, int]) -> tuple[list[str], list[str]]:
    """(problems, notes)."""
    environment = markers(python)
    problems, notes = [], []
    by_name: dict[str, list[Wheel]] = {}
    for wheel in wheels:
        by_name.setdefault(wheel.name, []).append(wheel)
        if not any(installable(tag, python) for tag in wheel.tags):
            problems.append(f"{wheel.path.name}: no tag that CPython {python[0]}.{python[1]} on "
                            "x86-64 Linux takes")
        if wheel.name in image:
            notes.append(f"{wheel.name} {wheel.version} shadows the image's "
                         f"{image[wheel.name] or 'copy'} (PYTHONPATH comes first)")
    for name, copies in by_name.items():
        if len(copies) > 1:
            versions = ", ".join(str(w.version) for w in copies)
            problems.append(f"{name}: {len(copies)} versions ({versions}); pip refuses to "
                            "install two")
    for name in NEEDED:
        if name not in by_name:
            problems.append(f"{name}: no wheel (the trainer imports it)")
    for wheel in wheels:
        for req in wheel.requires:
            if req.marker is not None and not req.marker.evaluate(environment):
                continue
            name = canonicalize_name(req.name)
            where = f"{wheel.name} {wheel.version} needs {req}"
            if name in by_name:
                version = by_name[name][0].version
                if not req.specifier.contains(version, prereleases=True):
                    problems.append(f"{where}: the carried wheel is {version}")
            elif name in image:
                version = image[name]
                if version is None:
                    if req.specifier:
                        notes.append(f"{where}: the image has {name}, version not listed")
                elif not req.specifier.contains(version, prereleases=True):
                    problems.append(f"{where}: the image has {version}")
            else:
                problems.append(f"{where}: neither carried nor in the image")
    return problems, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", type=Path)
    parser.add_argument("--image", type=Path, default=HERE / "gpu_image_packages.txt")
    parser.add_argument("--python", default="3.12", help="the target CPython, major.minor")
    args = parser.parse_args(argv)
    python = tuple(int(v) for v in args.python.split("."))
    paths = sorted(args.wheels.glob("*.whl"))
    wheels = [read_wheel(p) for p in paths]
    problems, notes = check(wheels, read_image(args.image), python)
    total = 0
    for wheel in wheels:
        size = wheel.path.stat().st_size
        total += size
        print(f"{wheel.path.name:90s} {size / 2**20:6.2f} MiB")
    print(f"{len(wheels)} wheels, {total / 2**20:.2f} MiB in {args.wheels}")
    for note in notes:
        print(f"note: {note}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
