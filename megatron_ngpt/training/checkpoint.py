"""Checkpoints: atomic, verified, resumable, and readable without the original process layout.

Layout of a run directory::

    RUN_DIR/checkpoints/step_0000100/   DeepSpeed's sharded files (model, ZeRO optimizer,
                                        scheduler), model_fp32_pp{k}.pt (full fp32 weights of
                                        pipeline stage k with `LanguageModel` names at TP=1),
                                        optim_fp32_pp{k}.pt (its Adam moments and step count),
                                        trainer_state.json (step, data position, layout),
                                        config.yaml, rng/rank_{r}.pt,
                                        COMPLETE (manifest of files and sizes, written last)

The same layout (TP, PP, DP, ZeRO stage) resumes through DeepSpeed's own loader; any other
layout resumes from the layout-independent fp32 files (see `reshard.py`).
    RUN_DIR/checkpoints/latest          name of the newest complete checkpoint

Every rank writes into ``checkpoints/.tmp-step_XXXXXXX``; after a barrier, rank 0 writes the
manifest, renames the directory into place, then swaps the `latest` pointer (write + rename), and
prunes old checkpoints. A crash at any point leaves either the previous state or a complete new
one. Loading verifies the manifest; when `latest` points at a missing or damaged checkpoint, the
newest complete one is used instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state as ps

from megatron_ngpt.config import Config, config_from_dict
from megatron_ngpt.log import get_logger
from megatron_ngpt.training.reshard import gather_master_state, scatter_master_state

if TYPE_CHECKING:  # the engine imports DeepSpeed, which exporting a checkpoint does not need
    from megatron_ngpt.training.engine import Engine

STEP_DIR = re.compile(r"^step_(\d{7,})$")
MANIFEST = "COMPLETE"
log = get_logger()


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or unreadable."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _manifest(directory: Path) -> dict[str, int]:
    return {
        str(path.relative_to(directory)): path.stat().st_size
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def verify(directory: Path) -> None:
    """Raise `CheckpointError` unless `directory` is a complete checkpoint."""
    marker = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    if not marker.is_file():
        raise CheckpointError(f"{directory}: incomplete checkpoint (no {MANIFEST} marker)")
    try:
        expected = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{marker}: unreadable manifest ({err})") from err
    for name, size in expected.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: file {name} listed in the manifest is missing")
        if path.stat().st_size != size:
            raise CheckpointError(f"{path}: size {path.stat().st_size} differs from the "
                                  f"manifest's {size} (truncated or corrupted)")


def complete_steps(checkpoint_root: Path) -> list[int]:
    """Steps of all complete checkpoints, oldest first."""
    steps = []
    if checkpoint_root.is_dir():
        for child in checkpoint_root.iterdir():
            match = STEP_DIR.match(child.name)
            if match and (child / MANIFEST).is_file():
                steps.append(int(match.group(1)))
    return sorted(steps)


def resolve_step(run_dir: str | Path, step: int | None = None) -> tuple[Path, int] | None:
    """The checkpoint to load from a run directory: `step`, or the latest complete one.

    Returns None when the run has no checkpoint at all; raises `CheckpointError` for an explicit
    step that doesn't exist or is damaged.
    """
    root = Path(run_dir) / "checkpoints"
    if step is not None:
        directory = root / step_dir_name(step)
        if not directory.exists():
            available = ", ".join(map(str, complete_steps(root))) or "none"
            raise CheckpointError(f"{run_dir}: no checkpoint for step {step} "
                                  f"(available: {available})")
        verify(directory)
        return directory, step
    pointer = root / "latest"
    if pointer.is_file():
        name = pointer.read_text().strip()
        directory = root / name
        try:
            verify(directory)
            return directory, int(STEP_DIR.match(name).group(1))
        except (CheckpointError, AttributeError) as err:
            log.warning("latest checkpoint %s is unusable (%s); looking for an older one",
                        name, err)
    for candidate in reversed(complete_steps(root)):
        directory = root / step_dir_name(candidate)
        try:
            verify(directory)
            return directory, candidate
        except CheckpointError as err:
            log.warning("skipping damaged checkpoint: %s", err)
    return None


# ----------------------------------------------------------------------------- save / load


class Checkpointer:
    """Saves and restores DeepSpeed engines in a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path, keep_last: int) -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep_last = keep_last

    def save(self, eng: Engine, step: int, trainer_state: dict[str, Any], cfg: Config,
             named_params) -> Path:
        """Collective: every rank calls it with the same step."""
        engine = eng.engine
        rank = dist.get_rank()
        name = step_dir_name(step)
        tmp_parent = self.root / ".tmp"
        tmp = tmp_parent / name
        if rank == 0:  # leftovers of an interrupted save are never reused
            shutil.rmtree(tmp_parent, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        engine.save_checkpoint(str(tmp_parent), tag=name, save_latest=False)
        master = gather_master_state(eng.masters, named_params)
        if master is not None:
            weights, moments, optimizer_step = master
            stage = ps.get_pipeline_model_parallel_rank()
            torch.save(weights, tmp / f"model_fp32_pp{stage}.pt")
            torch.save({"moments": moments, "step": optimizer_step},
                       tmp / f"optim_fp32_pp{stage}.pt")
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save({"cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                   tmp / "rng" / f"rank_{rank}.pt")
        dist.barrier()
        final = self.root / name
        if rank == 0:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
            (tmp / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": _manifest(tmp)}))
            _fsync_dir(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_atomic(self.root / "latest", name)
            self._prune()
        dist.barrier()
        return final

    def _prune(self) -> None:
        steps = complete_steps(self.root)
        for old in steps[: max(0, len(steps) - self.keep_last)]:
            shutil.rmtree(self.root / step_dir_name(old), ignore_errors=True)

    def load(self, eng: Engine, directory: Path, layout: dict[str, int], named_params
             ) -> dict[str, Any]:
        """Collective: restore the engine from `directory`; returns the trainer state."""
        engine = eng.engine
        verify(directory)
        saved = json.loads((directory / "trainer_state.json").read_text())
        if saved.get("layout") == layout:
            path, _ = engine.load_checkpoint(str(directory.parent), tag=directory.name,
                                             load_optimizer_states=True,
                                             load_lr_scheduler_states=True)
            if path is None:
                raise CheckpointError(f"{directory}: DeepSpeed could not load this checkpoint")
        else:
            log.info("checkpoint layout %s differs from this run's %s: loading the "
                     "layout-independent fp32 state", saved.get("layout"), layout)
            self._load_resharded(eng, directory, named_params, saved["step"])
        rng_file = directory / "rng" / f"rank_{dist.get_rank()}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=False)
            torch.set_rng_state(rng["cpu"])
            if torch.cuda.is_available() and rng["cuda"]:
                torch.cuda.set_rng_state_all(rng["cuda"])
        return saved

    @staticmethod
    def _load_resharded(eng: Engine, directory: Path, named_params, step: int) -> None:
        weights, optim = {}, {"moments": {}, "step": step}
        for path in sorted(directory.glob("model_fp32_pp*.pt")):
            weights.update(_load_file(path))
        for path in sorted(directory.glob("optim_fp32_pp*.pt")):
            part = _load_file(path)
            optim["moments"].update(part["moments"])
            optim["step"] = part["step"]
        scatter_master_state(eng.masters, named_params, weights, optim["moments"], optim["step"])
        scheduler = eng.engine.lr_scheduler
        scheduler.last_epoch = step - 1
        scheduler.step()


def _load_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(f"{path}: unreadable ({err})") from err


def load_consolidated(run_dir: str | Path, step: int | None = None
                      ) -> tuple[Config, dict[str, torch.Tensor], int]:
    """The resolved config and full fp32 `LanguageModel` (TP=1) weights of a checkpoint.

    Works for any layout it was saved with (TP, PP, DP, ZeRO stage) and needs no processes.
    """
    found = resolve_step(run_dir, step)
    if found is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint found under checkpoints/")
    directory, step = found
    cfg = config_from_dict(yaml.safe_load((directory / "config.yaml").read_text()),
                           str(directory / "config.yaml"))
    stages = sorted(directory.glob("model_fp32_pp*.pt"))
    if len(stages) != cfg.parallel.pipeline_model_parallel_size:
        raise CheckpointError(f"{directory}: expected {cfg.parallel.pipeline_model_parallel_size} "
                              f"model_fp32_pp*.pt files, found {len(stages)}")
    state: dict[str, torch.Tensor] = {}
    for path in stages:
        state.update(_load_file(path))
    return cfg, state, step


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
