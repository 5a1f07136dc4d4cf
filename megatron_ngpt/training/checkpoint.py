"""Checkpoints: atomic, checksummed, resumable, and readable without the original process layout.

Layout of a run directory::

    RUN_DIR/checkpoints/step_0000100/   DeepSpeed's sharded files (model, ZeRO optimizer),
                                        model_fp32_pp{k}.pt (full fp32 weights of pipeline stage k
                                        with `LanguageModel` names at TP=1), optim_fp32_pp{k}.pt
                                        (its Adam moments and step count), trainer_state.json
                                        (step, data position, layout), config.yaml,
                                        rng/rank_{r}.pt, COMPLETE (manifest: size and xxh3-128
                                        checksum of every file, written last)
    RUN_DIR/checkpoints/latest          name of the newest complete checkpoint

Saving: every rank writes into ``checkpoints/.tmp/step_XXXXXXX``, each file's checksum computed
while it is written (`digest.py`; DeepSpeed's own writes too); after a barrier rank 0 writes the
manifest, renames the directory into place, swaps the `latest` pointer (write + rename) and prunes
older checkpoints. A crash at any point leaves either the previous state or a complete new one.
Nothing non-finite is saved: the fp32 weights are checked as they are gathered.

Loading verifies every file against the manifest first:

- a damaged or missing layout-independent file (fp32 weights or moments, trainer state, config)
  makes the checkpoint unusable: the previous complete one is used, with a warning naming the file;
- a damaged DeepSpeed shard rules out only DeepSpeed's own loader: the run resumes from the
  layout-independent fp32 files, with a warning naming the shard;
- a damaged RNG file is skipped with a warning.

The same layout (TP, PP, DP, ZeRO stage, precision) resumes through DeepSpeed's own loader; any
other layout, and every load with `training.load_fp32_only`, from the fp32 files (`reshard.py`).
This project's files are read with ``torch.load(weights_only=True)`` (tensors only, no code);
DeepSpeed's loader unpickles its shards, which can run code, so a checkpoint from elsewhere is
loaded with ``training.load_fp32_only=true`` (docs/training.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state as ps

from megatron_ngpt.config import Config, ConfigError, config_from_dict
from megatron_ngpt.log import get_logger
from megatron_ngpt.training.digest import ALGORITHM, file_digest, save_hashed, write_hashed
from megatron_ngpt.training.reshard import gather_master_state, scatter_master_state

if TYPE_CHECKING:  # the engine imports DeepSpeed, which exporting a checkpoint does not need
    from megatron_ngpt.training.engine import Engine

STEP_DIR = re.compile(r"^step_(\d{7,})$")
MANIFEST = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
CONFIG = "config.yaml"
# The layout-independent files: without them a checkpoint cannot be resumed or exported.
_ESSENTIAL = re.compile(r"^((model|optim)_fp32_pp\d+\.pt|trainer_state\.json|config\.yaml)$")
_RNG = re.compile(r"^rng/")
# What makes two models the same network: a checkpoint loads only into an equal model.
ARCHITECTURE_FIELDS = ("arch", "num_layers", "hidden_size", "num_attention_heads",
                       "ffn_hidden_size", "vocab_size", "normalization", "layernorm_epsilon",
                       "rotary_base", "ngpt_scale_u_by_sqrt_d")
log = get_logger()


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or unreadable."""


class NonFiniteError(RuntimeError):
    """A checkpoint would hold non-finite weights: it is not written."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """The manifest of a complete checkpoint: file name -> {"size": ..., "xxh3_128": ...}
    (manifests of older versions hold sizes only)."""
    marker = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    if not marker.is_file():
        raise CheckpointError(f"{directory}: incomplete checkpoint (no {MANIFEST} marker)")
    try:
        files = json.loads(marker.read_text())["files"]
        return {name: entry if isinstance(entry, dict) else {"size": int(entry)}
                for name, entry in files.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{marker}: unreadable manifest ({err})") from err


def damaged_files(directory: Path, manifest: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Files of `manifest` that are missing or differ from it (reads and hashes every file),
    with the reason."""
    damaged = {}
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            damaged[name] = "missing"
            continue
        size = path.stat().st_size
        if size != expected["size"]:
            damaged[name] = f"size {size} differs from the manifest's {expected['size']} " \
                            "(truncated or corrupted)"
        elif ALGORITHM in expected and file_digest(path)[ALGORITHM] != expected[ALGORITHM]:
            damaged[name] = "checksum differs from the manifest's (corrupted)"
    return damaged


def verify(directory: Path) -> None:
    """Raise `CheckpointError` unless every file of `directory` matches its manifest."""
    damaged = damaged_files(directory, read_manifest(directory))
    if damaged:
        name, reason = next(iter(damaged.items()))
        raise CheckpointError(f"{directory / name}: {reason}")


def complete_steps(checkpoint_root: Path) -> list[int]:
    """Steps of all checkpoints with a manifest, oldest first."""
    steps = []
    if checkpoint_root.is_dir():
        for child in checkpoint_root.iterdir():
            match = STEP_DIR.match(child.name)
            if match and (child / MANIFEST).is_file():
                steps.append(int(match.group(1)))
    return sorted(steps)


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether `run_dir` holds any checkpoint directory, usable or not."""
    root = Path(run_dir) / "checkpoints"
    return root.is_dir() and any(STEP_DIR.match(child.name) for child in root.iterdir())


@dataclass
class Found:
    """A checkpoint to load, checked file by file."""

    directory: Path
    step: int
    damaged: dict[str, str] = field(default_factory=dict)  # DeepSpeed shards and RNG files

    @property
    def deepspeed_usable(self) -> bool:
        return not any(not _RNG.match(name) for name in self.damaged)

    def rng_usable(self, name: str) -> bool:
        return name not in self.damaged


def _check(directory: Path, step: int) -> Found:
    """`Found` for a checkpoint whose essential files are intact, else CheckpointError."""
    damaged = damaged_files(directory, read_manifest(directory))
    essential = {n: r for n, r in damaged.items() if _ESSENTIAL.match(n)}
    if essential:
        name, reason = next(iter(essential.items()))
        raise CheckpointError(f"{directory / name}: {reason}")
    for name, reason in damaged.items():
        log.warning("%s: %s; %s", directory / name, reason,
                    "its RNG state is not restored" if _RNG.match(name) else
                    "resuming from the layout-independent fp32 files instead of DeepSpeed's")
    return Found(directory, step, damaged)


def find_checkpoint(run_dir: str | Path, step: int | None = None) -> Found | None:
    """The checkpoint to load from a run directory: `step`, or the newest usable one.

    Returns None when the run has no complete checkpoint; raises `CheckpointError` for an explicit
    step that doesn't exist or is damaged. Damaged newer checkpoints are skipped with a warning
    that names the file.
    """
    root = Path(run_dir) / "checkpoints"
    if step is not None:
        directory = root / step_dir_name(step)
        if not directory.exists():
            available = ", ".join(map(str, complete_steps(root))) or "none"
            raise CheckpointError(f"{run_dir}: no checkpoint for step {step} "
                                  f"(available: {available})")
        return _check(directory, step)
    candidates = list(reversed(complete_steps(root)))
    pointer = root / "latest"
    if pointer.is_file():
        match = STEP_DIR.match(pointer.read_text().strip())
        if match and int(match.group(1)) in candidates:
            candidates.remove(int(match.group(1)))
            candidates.insert(0, int(match.group(1)))
        elif match:
            log.warning("latest checkpoint %s is incomplete; looking for an older one",
                        match.group(0))
    for candidate in candidates:
        try:
            return _check(root / step_dir_name(candidate), candidate)
        except CheckpointError as err:
            log.warning("checkpoint step %d is unusable (%s); looking for an older one",
                        candidate, err)
    return None


def resolve_step(run_dir: str | Path, step: int | None = None) -> tuple[Path, int] | None:
    """(directory, step) of `find_checkpoint`, for callers that need only where it is."""
    found = find_checkpoint(run_dir, step)
    return None if found is None else (found.directory, found.step)


def read_checkpoint_config(directory: Path) -> Config:
    path = directory / CONFIG
    return config_from_dict(yaml.safe_load(path.read_text()), str(path))


def check_architecture(saved: Config, current: Config, directory: Path) -> None:
    """Refuse to load a checkpoint into a different network, naming the first differing field."""
    for name in ARCHITECTURE_FIELDS:
        theirs, ours = getattr(saved.model, name), getattr(current.model, name)
        if theirs != ours:
            raise ConfigError(f"model.{name}: the checkpoint {directory} was trained with "
                              f"{theirs!r}, this run asks for {ours!r}; a checkpoint resumes only "
                              "into the same model")


def _gathered_digests(local: dict[str, dict[str, Any]], root: Path) -> dict[str, dict] | None:
    """Every rank's file digests (paths relative to `root`) on rank 0, None elsewhere."""
    relative = {str(Path(path).relative_to(root)): digest for path, digest in local.items()}
    everyone: list[dict] | None = [{} for _ in range(dist.get_world_size())] \
        if dist.get_rank() == 0 else None
    dist.gather_object(relative, everyone, dst=0)
    if everyone is None:
        return None
    return {name: digest for part in everyone for name, digest in part.items()}


# ----------------------------------------------------------------------------- save / load


class Checkpointer:
    """Saves and restores DeepSpeed engines in a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | Path, keep_last: int) -> None:
        if keep_last < 1:
            raise ConfigError(f"training.keep_last: must be at least 1, got {keep_last}")
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep_last = keep_last

    def save(self, eng: Engine, step: int, trainer_state: dict[str, Any], cfg: Config,
             named_params) -> Path:
        """Collective: every rank calls it with the same step. Raises `NonFiniteError` (on
        every rank, before anything is renamed into place) when a weight is not finite."""
        rank = dist.get_rank()
        name = step_dir_name(step)
        tmp_parent = self.root / ".tmp"
        tmp = tmp_parent / name
        if rank == 0:  # leftovers of an interrupted save are never reused
            shutil.rmtree(tmp_parent, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        eng.engine.save_checkpoint(str(tmp_parent), tag=name, save_latest=False)
        digests = eng.checkpoint_writes.take()
        master = gather_master_state(eng.masters, named_params)
        finite = torch.tensor([1.0])
        if master is not None:
            weights, moments, optimizer_step = master
            bad = [n for n, w in weights.items() if not torch.isfinite(w).all()]
            if bad:
                finite.zero_()
                log.error("step %d: non-finite weights in %s", step, ", ".join(bad[:5]))
            else:
                stage = ps.get_pipeline_model_parallel_rank()
                path = tmp / f"model_fp32_pp{stage}.pt"
                digests[str(path)] = save_hashed(weights, path)
                path = tmp / f"optim_fp32_pp{stage}.pt"
                digests[str(path)] = save_hashed({"moments": moments, "step": optimizer_step},
                                                 path)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not finite.item():
            dist.barrier()
            if rank == 0:
                shutil.rmtree(tmp_parent, ignore_errors=True)
            raise NonFiniteError(f"step {step}: the weights are not finite; no checkpoint was "
                                 "written")
        (tmp / "rng").mkdir(exist_ok=True)
        path = tmp / "rng" / f"rank_{rank}.pt"
        digests[str(path)] = save_hashed(
            {"cpu": torch.get_rng_state(),
             "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, path)
        manifest = _gathered_digests(digests, tmp)
        final = self.root / name
        if rank == 0:
            for file_name, text in ((TRAINER_STATE, json.dumps(trainer_state, indent=1)),
                                    (CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))):
                manifest[file_name] = write_hashed(tmp / file_name, text.encode())
            write_hashed(tmp / MANIFEST, json.dumps({"step": step, "files": manifest}).encode())
            _fsync_dir(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_atomic(self.root / "latest", name)
            self._prune(keep=step)
        dist.barrier()
        return final

    def _prune(self, keep: int) -> None:
        """Remove checkpoints older than the newest `keep_last` (never `keep`, just written)."""
        steps = [s for s in complete_steps(self.root) if s != keep]
        for old in steps[: max(0, len(steps) + 1 - self.keep_last)]:
            shutil.rmtree(self.root / step_dir_name(old), ignore_errors=True)

    def load(self, eng: Engine, found: Found, layout: dict[str, Any], named_params,
             fp32_only: bool = False) -> dict[str, Any]:
        """Collective: restore the engine from a checked checkpoint; returns the trainer state."""
        directory = found.directory
        saved = json.loads((directory / TRAINER_STATE).read_text())
        if saved.get("layout") == layout and found.deepspeed_usable and not fp32_only:
            path, _ = eng.engine.load_checkpoint(str(directory.parent), tag=directory.name,
                                                 load_optimizer_states=True,
                                                 load_lr_scheduler_states=False)
            if path is None:
                raise CheckpointError(f"{directory}: DeepSpeed could not load this checkpoint")
        else:
            reason = ("training.load_fp32_only is set" if fp32_only else
                      "a DeepSpeed shard is damaged" if not found.deepspeed_usable else
                      f"checkpoint layout {saved.get('layout')} differs from this run's {layout}")
            log.info("%s: loading the layout-independent fp32 state", reason)
            self._load_resharded(eng, directory, named_params, saved["step"])
        rng_name = f"rng/rank_{dist.get_rank()}.pt"
        if (directory / rng_name).is_file() and found.rng_usable(rng_name):
            rng = _load_file(directory / rng_name)
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


def _load_file(path: Path) -> Any:
    """One of this project's checkpoint files: tensors only (``weights_only=True``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(f"{path}: unreadable ({err})") from err


def load_consolidated(run_dir: str | Path, step: int | None = None
                      ) -> tuple[Config, dict[str, torch.Tensor], int]:
    """The resolved config and full fp32 `LanguageModel` (TP=1) weights of a checkpoint.

    Works for any layout it was saved with (TP, PP, DP, ZeRO stage) and needs no processes; every
    file it reads is first checked against the manifest.
    """
    found = find_checkpoint(run_dir, step)
    if found is None:
        raise CheckpointError(f"{run_dir}: no complete checkpoint found under checkpoints/")
    directory = found.directory
    cfg = read_checkpoint_config(directory)
    stages = sorted(directory.glob("model_fp32_pp*.pt"))
    if len(stages) != cfg.parallel.pipeline_model_parallel_size:
        raise CheckpointError(f"{directory}: expected {cfg.parallel.pipeline_model_parallel_size} "
                              f"model_fp32_pp*.pt files, found {len(stages)}")
    state: dict[str, torch.Tensor] = {}
    for path in stages:
        state.update(_load_file(path))
    return cfg, state, found.step


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write_hashed(tmp, text.encode())
    os.replace(tmp, path)


def _fsync_dir(directory: Path) -> None:
    """Make the directory entries durable (the files were fsynced as they were written)."""
    for folder in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
