"""The trainer: builds tokenizer, model, DeepSpeed engine, data and checkpointer from a
:class:`Config`, then runs the loop (steps, validation, logging, checkpoints, stopping).

`Trainer.build` needs only a started process group (`parallel.state.init_distributed`), so a
one-process run works in-process, e.g. in a test; `python -m megatron_ngpt.train` parses the
command line and hands over to it.

A run stops early, after saving a checkpoint, on SIGUSR1/SIGTERM (preemption: exit status 3, and
``RUN_DIR/PREEMPTED`` for launchers that lose the status), on the first Ctrl-C (SIGINT: status
130) or at `training.exit_interval`. It stops without saving, with status 4, when the loss or the
gradient norm is not finite or when DeepSpeed skipped `training.max_skipped_steps` steps in a row:
the checkpoints already written stay the newest ones.
"""

from __future__ import annotations

import json
import math
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state as ps

from megatron_ngpt.config import Config, ConfigError, TrainingConfig
from megatron_ngpt.data.datasets import build_datasets
from megatron_ngpt.data.sampler import MicroBatchLoader
from megatron_ngpt.data.tokenizer import load_tokenizer
from megatron_ngpt.log import get_logger
from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.transformer_config import LMTransformerConfig, build_transformer_config
from megatron_ngpt.parallel.pipeline import build_pipeline_module, language_model_name
from megatron_ngpt.parallel.state import ParallelDims
from megatron_ngpt.training.checkpoint import (
    TRAINER_STATE,
    Checkpointer,
    CheckpointError,
    Found,
    NonFiniteError,
    check_architecture,
    complete_steps,
    find_checkpoint,
    has_checkpoints,
    read_checkpoint_config,
)
from megatron_ngpt.training.engine import Engine, build_engine
from megatron_ngpt.training.metrics import (
    MetricsLogger,
    Throughput,
    device_peak_tflops,
    flops_per_token,
    memory_gb,
)
from megatron_ngpt.training.run_lock import RunDirectoryBusy, RunLock
from megatron_ngpt.training.schedule import RunPlan, set_lr

PREEMPTED_EXIT_CODE = 3  # "checkpoint saved, please requeue" for the launchers
DIVERGED_EXIT_CODE = 4  # non-finite loss or gradients, or too many skipped steps: do not requeue
INTERRUPTED_EXIT_CODE = 130  # Ctrl-C: checkpoint saved, stopped on request
PREEMPTED_MARKER = "PREEMPTED"
KEPT_DIR = "kept"  # RUN_DIR/kept/checkpoints/: the checkpoints of `training.keep_steps`
log = get_logger()


class TrainingDiverged(RuntimeError):
    """The run cannot go on (non-finite values, or DeepSpeed skipped too many steps)."""


class StopSignals:
    """SIGUSR1/SIGTERM ask for a preemption stop, SIGINT for an interruption; all ranks agree on
    them at step boundaries. A second Ctrl-C interrupts at once."""

    _SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.preempted = False
        self.interrupted = False
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self._SIGNALS}

    def _handler(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            log.warning("Ctrl-C: saving a checkpoint at the end of this step, then stopping "
                        "(press it again to stop at once)")
        else:
            self.preempted = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class TrainState:
    step: int = 0
    consumed_samples: int = 0
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "consumed_samples": self.consumed_samples,
                "tokens": self.tokens}


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def build_model(config: LMTransformerConfig, dims: ParallelDims) -> torch.nn.Module:
    """The whole `LanguageModel`, or this rank's pipeline stages of it."""
    if dims.pp > 1:
        return build_pipeline_module(config, dims.tp, dims.pp, dims.dp)
    return LanguageModel(config)


def sample_counts(cfg: Config, state: TrainState, plan: RunPlan) -> tuple[int, int, int]:
    """Samples the train, valid and test splits are built for. Every validation reads the same
    first `eval_iters` batches, so runs of any length are validated on the same samples; the
    training split has `data.train_dataset_samples` when set, so that related runs share one
    order (megatron-core shuffles differently for a different number of epochs)."""
    t = cfg.training
    train = state.consumed_samples + (plan.total_steps - state.step) * t.global_batch_size
    wanted = cfg.data.train_dataset_samples
    if wanted and wanted < train:
        raise ConfigError(f"data.train_dataset_samples: {wanted} is fewer than the {train} "
                          "samples this run trains on")
    evaluated = t.eval_iters * t.global_batch_size
    return max(train, wanted), evaluated, evaluated


def _agree(dims: ParallelDims, *flags: bool) -> list[bool]:
    """Flags that any rank raised, on every rank (one small all-reduce)."""
    values = torch.tensor([1.0 if f else 0.0 for f in flags], device=dims.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def _load_source(t: TrainingConfig) -> Found:
    """The checkpoint `training.load` names: its newest, or that of step `load_step` among its
    kept and its rolling checkpoints."""
    source, step = Path(t.load), t.load_step or None
    kept = source / KEPT_DIR
    try:
        if step is not None and step in complete_steps(kept / "checkpoints"):
            return find_checkpoint(kept, step)
        found = find_checkpoint(source, step)
    except CheckpointError as err:
        kept_steps = ", ".join(map(str, complete_steps(kept / "checkpoints"))) or "none"
        raise ConfigError(f"training.load_step: {err}; kept: {kept_steps}") from None
    if found is None:
        raise ConfigError(f"training.load: no usable checkpoint under {t.load}")
    return found


def _locate_checkpoint(cfg: Config, dims: ParallelDims, run_dir: Path) -> Found | None:
    """Rank 0 checks the checkpoint to resume from (reading every file once) and tells the
    others: the run directory's own newest one (rolling or kept), or else `training.load`'s. A
    run directory with checkpoints but none usable is an error unless
    `training.ignore_checkpoints` says to start over."""
    t = cfg.training
    decision: list[Any] = [None]
    if dims.rank == 0:
        try:
            if t.ignore_checkpoints:
                found = None
            elif has_checkpoints(run_dir) or has_checkpoints(run_dir / KEPT_DIR):
                usable = [f for f in (find_checkpoint(run_dir),
                                      find_checkpoint(run_dir / KEPT_DIR)) if f is not None]
                if not usable:
                    raise ConfigError(f"training.save: {run_dir} has checkpoints but none is "
                                      "usable (see the warnings above); set training."
                                      "ignore_checkpoints=true to start from scratch")
                found = max(usable, key=lambda f: f.step)
            else:
                found = _load_source(t) if t.load else None
            decision = [found]
        except ConfigError as err:
            decision = [err]
    dist.broadcast_object_list(decision, src=0)
    if isinstance(decision[0], Exception):
        raise decision[0]
    return decision[0]


class Trainer:
    """Drives a DeepSpeed engine over the data until the run's plan is done."""

    def __init__(self, cfg: Config, dims: ParallelDims, engine: Engine, datasets, plan: RunPlan,
                 run_dir: Path, flops_per_token: float, lock: RunLock) -> None:
        self.cfg, self.dims, self.eng = cfg, dims, engine
        self.train_set, self.valid_set, _ = datasets
        self.plan = plan
        self.run_dir = run_dir
        self.state = TrainState()
        self.checkpointer = Checkpointer(run_dir, cfg.training.keep_last)
        self.keep_steps = set(cfg.training.keep_steps)  # saved by `kept`, which never prunes
        self.kept = Checkpointer(run_dir / KEPT_DIR, max(1, len(self.keep_steps)))
        self.flops_per_token = flops_per_token
        self.lock = lock
        self.resumed_from: Found | None = None

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @classmethod
    def build(cls, cfg: Config, dims: ParallelDims) -> Trainer:
        """Everything a run needs, on the process groups of `dims`; resumes from the run's
        newest usable checkpoint (or `training.load`) when there is one."""
        t = cfg.training
        cfg.validate_for_training(dims.world_size)
        torch.manual_seed(t.seed)
        tokenizer = load_tokenizer(cfg.data.tokenizer_model)
        cfg.model.vocab_size = cfg.model_vocab_size(tokenizer.vocab_size, dims.tp)
        run_dir = Path(t.save)
        lock = RunLock(run_dir)
        busy: Exception | None = None
        if dims.rank == 0:
            try:
                lock.acquire()
            except RunDirectoryBusy as err:
                busy = err
        if _agree(dims, busy is not None)[0]:
            raise busy or RunDirectoryBusy(f"{run_dir}: another run trains into this directory")
        try:
            return cls._build_locked(cfg, dims, tokenizer, run_dir, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _build_locked(cls, cfg: Config, dims: ParallelDims, tokenizer, run_dir: Path,
                      lock: RunLock) -> Trainer:
        t, p = cfg.training, cfg.parallel
        found = _locate_checkpoint(cfg, dims, run_dir)
        state = TrainState()
        if found is not None:
            check_architecture(read_checkpoint_config(found.directory), cfg, found.directory)
            saved = json.loads((found.directory / TRAINER_STATE).read_text())
            state = TrainState(saved["step"], saved["consumed_samples"], saved["tokens"])
        plan = RunPlan.for_run(cfg, state.step, state.tokens)
        counts = sample_counts(cfg, state, plan)
        model_config = build_transformer_config(
            cfg.model, cfg.model.vocab_size, dims.tp, dims.pp,
            torch.float32 if t.precision == "fp32" else torch.bfloat16,
            p.activation_checkpointing, init_seed=t.seed)
        engine = build_engine(cfg, build_model(model_config, dims), dims)
        datasets = build_datasets(cfg.data, tokenizer, cfg.data.seq_length, counts, t.seed,
                                  cfg.data.cache_dir or str(run_dir / "data_cache"))
        trainer = cls(cfg, dims, engine, datasets, plan, run_dir,
                      flops_per_token(cfg, cfg.model.vocab_size), lock)
        if found is not None:
            trainer.resume(found)
        if dims.rank == 0:  # only now: a failed resume leaves the run directory as it was
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            (run_dir / PREEMPTED_MARKER).unlink(missing_ok=True)
        log.info("training %s: %d steps, TP=%d PP=%d DP=%d ZeRO-%d, %s, renormalization: %s",
                 cfg.model.arch, plan.total_steps, dims.tp, dims.pp, dims.dp, p.zero_stage,
                 t.precision, engine.renormalization)
        return trainer

    # ------------------------------------------------------------------ checkpoints

    def named_parameters(self):
        """Local parameters with their `LanguageModel` names (for the consolidated weights)."""
        if self.eng.is_pipeline:
            layers = self.cfg.model.num_layers
            return [(language_model_name(n, layers), p)
                    for n, p in self.eng.module.named_parameters()]
        return list(self.eng.module.named_parameters())

    def layout(self) -> dict[str, Any]:
        """What DeepSpeed's own checkpoint files depend on."""
        return {"tp": self.dims.tp, "pp": self.dims.pp, "dp": self.dims.dp,
                "zero_stage": self.cfg.parallel.zero_stage,
                "precision": self.cfg.training.precision}

    def save(self, checkpointer: Checkpointer | None = None) -> None:
        state = {**self.state.to_dict(), "layout": self.layout()}
        path = (checkpointer or self.checkpointer).save(self.eng, self.state.step, state,
                                                       self.cfg, self.named_parameters())
        log.info("saved checkpoint %s", path)

    def resume(self, found: Found) -> None:
        saved = self.checkpointer.load(self.eng, found, self.layout(), self.named_parameters(),
                                       self.cfg.training.load_fp32_only)
        self.state = TrainState(saved["step"], saved["consumed_samples"], saved["tokens"])
        self.resumed_from = found
        log.info("resumed from %s (step %d, %d samples consumed)", found.directory,
                 self.state.step, self.state.consumed_samples)

    # ------------------------------------------------------------------ steps

    def _loader(self, dataset, consumed: int) -> MicroBatchLoader:
        t = self.cfg.training
        return MicroBatchLoader(dataset, t.micro_batch_size, t.global_batch_size,
                                ps.get_data_parallel_rank(), self.dims.dp, consumed)

    def _model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's keyword arguments of `LanguageModel.forward`: the positions, which
        restart at each document, only with document attention."""
        inputs = {"labels": batch["labels"], "loss_mask": batch["loss_mask"]}
        if self.cfg.data.document_attention:
            inputs["position_ids"] = batch["position_ids"]
        return inputs

    def _pipeline_iter(self, loader: MicroBatchLoader):
        for batch in loader:
            batch = _to_device(batch, self.dims.device)
            inputs = batch["tokens"]
            if self.cfg.data.document_attention:
                inputs = (inputs, batch["position_ids"])
            yield inputs, (batch["labels"], batch["loss_mask"])

    def _dp_mean(self, value: torch.Tensor) -> float:
        value = value.detach().float().reshape(1).to(self.dims.device)
        dist.all_reduce(value, group=ps.get_data_parallel_group())
        return value.item() / self.dims.dp

    def train_step(self, loader: MicroBatchLoader, pipe_iter) -> float:
        engine = self.eng.engine
        if self.eng.is_pipeline:
            return float(engine.train_batch(data_iter=pipe_iter))
        total = torch.zeros((), device=self.dims.device)
        for _ in range(self.eng.grad_accumulation):
            batch = _to_device(next(loader), self.dims.device)
            loss = engine(batch["tokens"], **self._model_inputs(batch))
            engine.backward(loss)
            engine.step()
            total += loss.detach()
        return self._dp_mean(total / self.eng.grad_accumulation)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over `eval_iters` global batches from the start of the validation split."""
        if self.valid_set is None or self.cfg.training.eval_iters <= 0:
            return None
        engine = self.eng.engine
        loader = self._loader(self.valid_set, 0)
        engine.eval()
        losses = []
        if self.eng.is_pipeline:
            pipe_iter = self._pipeline_iter(loader)
            for _ in range(self.cfg.training.eval_iters):
                losses.append(float(engine.eval_batch(data_iter=pipe_iter)))
        else:
            for _ in range(self.cfg.training.eval_iters * self.eng.grad_accumulation):
                batch = _to_device(next(loader), self.dims.device)
                losses.append(self._dp_mean(engine(batch["tokens"],
                                                   **self._model_inputs(batch))))
        engine.train()
        return sum(losses) / len(losses)

    def downstream_evaluator(self):
        """lm-eval on the in-memory model (`training.downstream_*`), or None when it is off.
        Built before the first step, so that bad tasks stop the run at once."""
        if not self.cfg.training.downstream_eval_interval:
            return None
        from megatron_ngpt.eval.in_loop import DownstreamEvaluator

        return DownstreamEvaluator(self.cfg, self.dims, self.eng)

    # ------------------------------------------------------------------ the loop

    def _check_step(self, loss: float, grad_norm: float | None, skipped_in_a_row: int,
                    signals: StopSignals) -> tuple[bool, bool]:
        """Raise `TrainingDiverged` when this step's numbers say the run cannot go on; returns
        whether any rank was asked to stop (preempted, interrupted). One all-reduce for all."""
        t = self.cfg.training
        bad_loss, bad_norm, too_many_skips, preempted, interrupted = _agree(
            self.dims, not math.isfinite(loss),
            grad_norm is not None and not math.isfinite(grad_norm),
            t.max_skipped_steps > 0 and skipped_in_a_row >= t.max_skipped_steps,
            signals.preempted, signals.interrupted)
        if bad_loss or bad_norm:
            raise TrainingDiverged(
                f"step {self.state.step}: non-finite {'loss' if bad_loss else 'gradient norm'} "
                f"(loss {loss}, gradient norm {grad_norm}); stopped without saving, the newest "
                f"checkpoint in {self.run_dir / 'checkpoints'} is from before. Lower "
                "optimizer.lr or check the data.")
        if too_many_skips:
            raise TrainingDiverged(
                f"step {self.state.step}: DeepSpeed skipped the last {skipped_in_a_row} steps "
                "(gradient overflow); stopped without saving. Lower optimizer.lr, or raise "
                "training.max_skipped_steps (0: never stop).")
        return preempted, interrupted

    def train(self) -> int:
        """Run the plan; returns 0, PREEMPTED_EXIT_CODE or INTERRUPTED_EXIT_CODE after a save,
        DIVERGED_EXIT_CODE without one."""
        t, lg = self.cfg.training, self.cfg.logging
        rank0 = self.dims.rank == 0
        signals = StopSignals()
        metrics = MetricsLogger(self.cfg, self.run_dir, self.total_steps, self.state.step, rank0)
        if self.resumed_from is not None:
            metrics.write({"event": "resumed", "step": self.state.step,
                           "tokens": self.state.tokens,
                           "checkpoint": str(self.resumed_from.directory)})
        throughput = Throughput(self.flops_per_token,
                                device_peak_tflops(lg.peak_tflops, self.dims.device),
                                self.dims.world_size)
        loader = self._loader(self.train_set, self.state.consumed_samples)
        pipe_iter = self._pipeline_iter(loader) if self.eng.is_pipeline else None
        engine, opt = self.eng.engine, self.cfg.optimizer
        skipped_in_a_row = 0
        exit_code = 0
        try:
            downstream = self.downstream_evaluator()
            while self.state.step < self.total_steps:
                lr = self.plan.lr(opt, self.state.step, self.state.tokens)
                set_lr(engine.optimizer, opt, lr)
                skipped_before = engine.skipped_steps
                loss = self.train_step(loader, pipe_iter)
                skipped = engine.skipped_steps > skipped_before
                skipped_in_a_row = skipped_in_a_row + 1 if skipped else 0
                self.state.step += 1
                self.state.consumed_samples += t.global_batch_size
                self.state.tokens += self.plan.tokens_per_step
                throughput.add(self.plan.tokens_per_step)
                metrics.advance()
                step = self.state.step
                grad_norm = engine.get_global_grad_norm()
                grad_norm = None if grad_norm is None else float(grad_norm)
                if step % lg.log_interval == 0 or step == self.total_steps or \
                        not math.isfinite(loss) or skipped:
                    metrics.write({
                        "step": step, "tokens": self.state.tokens, "loss": loss, "lr": lr,
                        "grad_norm": grad_norm, **({"skipped": True} if skipped else {}),
                        **throughput.report(), "memory_gb": memory_gb(self.dims.device),
                    })
                preempted, interrupted = self._check_step(loss, grad_norm, skipped_in_a_row,
                                                          signals)
                if (t.eval_interval and step % t.eval_interval == 0) or step == self.total_steps:
                    val_loss = self.evaluate()
                    if val_loss is not None:
                        metrics.write({"step": step, "tokens": self.state.tokens,
                                       "val_loss": val_loss})
                if downstream is not None and (step % t.downstream_eval_interval == 0
                                               or step == self.total_steps):
                    scores = downstream.evaluate()
                    if scores is not None:
                        metrics.write({"step": step, "tokens": self.state.tokens, **scores})
                stop_now = preempted or interrupted or bool(
                    t.exit_interval and step % t.exit_interval == 0)
                if (t.save_interval and step % t.save_interval == 0) or stop_now or \
                        step == self.total_steps:
                    self.save()
                if step in self.keep_steps:
                    self.save(self.kept)
                if stop_now and step < self.total_steps:
                    reason = ("preempted" if preempted else "interrupted" if interrupted
                              else "exit interval")
                    log.info("stopping at step %d (%s)", step, reason)
                    exit_code = (PREEMPTED_EXIT_CODE if preempted else
                                 INTERRUPTED_EXIT_CODE if interrupted else 0)
                    if preempted and rank0:
                        (self.run_dir / PREEMPTED_MARKER).write_text(f"step {step}\n")
                    break
        except (TrainingDiverged, NonFiniteError) as err:
            log.error("%s", err)
            exit_code = DIVERGED_EXIT_CODE
        finally:
            metrics.close()
            signals.restore()
            self.lock.release()
        return exit_code
