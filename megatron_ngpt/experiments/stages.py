"""A resumable pipeline: named stages, each skipped once it has finished, with timings.

A stage counts as finished when its marker file exists (written only after the stage succeeded)
and its outputs are still there, so a stage that crashed half-way is redone, not trusted.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class StageError(RuntimeError):
    """A stage failed; the message names the stage and the command."""


@dataclass
class Stage:
    name: str
    outputs: Sequence[Path]
    commands: Sequence[Sequence[str]] = ()  # run in order, output shown
    action: Callable[[], None] | None = None  # in-process work after the commands
    always: bool = False  # cheap stages (reports) are redone every time


@dataclass
class StageRunner:
    state_dir: Path
    force: bool = False
    log: Callable[[str], None] = print
    env: dict[str, str] = field(default_factory=dict)  # added to every command's environment
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, this run or the last
    start: float = field(default_factory=time.monotonic)

    def _marker(self, stage: Stage) -> Path:
        return self.state_dir / f"{stage.name}.done"

    def is_done(self, stage: Stage) -> bool:
        return self._marker(stage).is_file() and all(Path(p).exists() for p in stage.outputs)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.start:.0f}s"

    def run(self, stages: Sequence[Stage]) -> None:
        for i, stage in enumerate(stages, 1):
            head = f"[{i}/{len(stages)} {self.elapsed()}] {stage.name}"
            marker = self._marker(stage)
            if not (self.force or stage.always) and self.is_done(stage):
                self.seconds[stage.name] = json.loads(marker.read_text())["seconds"]
                self.log(f"{head}: done before, skipped (--force to redo)")
                continue
            marker.unlink(missing_ok=True)
            self.log(f"{head} ...")
            began = time.monotonic()
            for cmd in stage.commands:
                self.log(f"$ {shlex.join(cmd)}")
                result = subprocess.run(list(cmd), env={**os.environ, **self.env})
                if result.returncode != 0:
                    raise StageError(f"stage {stage.name!r} failed (exit {result.returncode}): "
                                     f"{shlex.join(cmd)}")
            if stage.action is not None:
                stage.action()
            seconds = time.monotonic() - began
            self.seconds[stage.name] = seconds
            self.state_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"seconds": seconds}))
            self.log(f"[{i}/{len(stages)} {self.elapsed()}] {stage.name}: done in {seconds:.0f}s")
