"""The trainer: builds tokenizer, model, DeepSpeed engine, data and checkpointer from a
:class:`Config`, then runs the loop (steps, validation, logging, checkpoints, preemption).

`Trainer.build` needs only a started process group (`parallel.state.init_distributed`), so a
one-process run works in-process, e.g. in a test; `python -m megatron_ngpt.train` parses the
command line and hands over to it.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from megatron.core import parallel_state as ps

from megatron_ngpt.config import Config, ConfigError
from megatron_ngpt.data.datasets import build_datasets
from megatron_ngpt.data.sampler import MicroBatchLoader
from megatron_ngpt.data.tokenizer import load_tokenizer
from megatron_ngpt.log import get_logger
from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.models.transformer_config import LMTransformerConfig, build_transformer_config
from megatron_ngpt.parallel.pipeline import build_pipeline_module, language_model_name
from megatron_ngpt.parallel.state import ParallelDims
from megatron_ngpt.training.checkpoint import Checkpointer, resolve_step
from megatron_ngpt.training.engine import Engine, build_engine
from megatron_ngpt.training.metrics import MetricsLogger, Throughput, flops_per_token, memory_gb

PREEMPTED_EXIT_CODE = 3  # "checkpoint saved, please requeue" for the SLURM launcher
log = get_logger()


class PreemptionFlag:
    """Set by SIGUSR1/SIGTERM; all ranks agree on it at step boundaries (one tiny all-reduce)."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


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


def eval_sample_counts(cfg: Config, steps: int) -> tuple[int, int, int]:
    """Samples the train, valid and test splits must provide for a run of `steps` steps."""
    t = cfg.training
    evals = steps // t.eval_interval + 1 if t.eval_interval else 1
    return (steps * t.global_batch_size, evals * t.eval_iters * t.global_batch_size,
            t.eval_iters * t.global_batch_size)


class Trainer:
    """Drives a DeepSpeed engine over the data for `total_steps` optimizer steps."""

    def __init__(self, cfg: Config, dims: ParallelDims, engine: Engine, datasets,
                 total_steps: int, run_dir: Path, flops_per_token: float) -> None:
        self.cfg, self.dims, self.eng = cfg, dims, engine
        self.train_set, self.valid_set, _ = datasets
        self.total_steps = total_steps
        self.run_dir = run_dir
        self.state = TrainState()
        self.checkpointer = Checkpointer(run_dir, cfg.training.keep_last)
        self.flops_per_token = flops_per_token
        self.tokens_per_step = cfg.tokens_per_step
        self.preemption = PreemptionFlag()

    @classmethod
    def build(cls, cfg: Config, dims: ParallelDims) -> Trainer:
        """Everything a run needs, on the process groups of `dims`; resumes from the run's
        latest complete checkpoint (or `training.load`) when there is one."""
        t, p = cfg.training, cfg.parallel
        steps = cfg.validate_for_training(dims.world_size).total_steps()
        torch.manual_seed(t.seed)
        tokenizer = load_tokenizer(cfg.data.tokenizer_model)
        vocab = cfg.model_vocab_size(tokenizer.vocab_size, dims.tp)
        cfg.model.vocab_size = vocab
        run_dir = Path(t.save)
        if dims.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        model_config = build_transformer_config(
            cfg.model, vocab, dims.tp, dims.pp,
            torch.bfloat16 if t.precision == "bf16" else torch.float32,
            p.activation_checkpointing, init_seed=t.seed)
        engine = build_engine(cfg, build_model(model_config, dims), dims, steps)
        datasets = build_datasets(cfg.data, tokenizer, cfg.data.seq_length,
                                  eval_sample_counts(cfg, steps), t.seed,
                                  cfg.data.cache_dir or str(run_dir / "data_cache"))
        trainer = cls(cfg, dims, engine, datasets, steps, run_dir, flops_per_token(cfg, vocab))
        found = resolve_step(t.load or run_dir)
        if found is not None:
            trainer.resume(found[0])
        elif t.load:
            raise ConfigError(f"training.load: no complete checkpoint under {t.load}")
        log.info("training %s: %d steps, TP=%d PP=%d DP=%d ZeRO-%d, %s, renormalization: %s",
                 cfg.model.arch, steps, dims.tp, dims.pp, dims.dp, p.zero_stage, t.precision,
                 engine.renormalization)
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

    def save(self) -> None:
        state = {**self.state.to_dict(), "layout": self.layout()}
        path = self.checkpointer.save(self.eng, self.state.step, state, self.cfg,
                                      self.named_parameters())
        log.info("saved checkpoint %s", path)

    def resume(self, directory: Path) -> None:
        saved = self.checkpointer.load(self.eng, directory, self.layout(),
                                       self.named_parameters())
        self.state = TrainState(saved["step"], saved["consumed_samples"], saved["tokens"])
        log.info("resumed from %s (step %d, %d samples consumed)", directory, self.state.step,
                 self.state.consumed_samples)

    # ------------------------------------------------------------------ steps

    def _loader(self, dataset, consumed: int) -> MicroBatchLoader:
        t = self.cfg.training
        return MicroBatchLoader(dataset, t.micro_batch_size, t.global_batch_size,
                                ps.get_data_parallel_rank(), self.dims.dp, consumed)

    def _pipeline_iter(self, loader: MicroBatchLoader):
        for batch in loader:
            batch = _to_device(batch, self.dims.device)
            yield batch["tokens"], (batch["labels"], batch["loss_mask"])

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
            loss = engine(batch["tokens"], labels=batch["labels"], loss_mask=batch["loss_mask"])
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
                losses.append(self._dp_mean(engine(batch["tokens"], labels=batch["labels"],
                                                   loss_mask=batch["loss_mask"])))
        engine.train()
        return sum(losses) / len(losses)

    # ------------------------------------------------------------------ the loop

    def train(self) -> int:
        """Run to `total_steps`; returns 0, or PREEMPTED_EXIT_CODE after a preemption save."""
        t, lg = self.cfg.training, self.cfg.logging
        rank0 = self.dims.rank == 0
        metrics = MetricsLogger(self.cfg, self.run_dir, self.total_steps, self.state.step, rank0)
        throughput = Throughput(self.flops_per_token, lg.peak_tflops, self.dims.world_size)
        loader = self._loader(self.train_set, self.state.consumed_samples)
        pipe_iter = self._pipeline_iter(loader) if self.eng.is_pipeline else None
        exit_code = 0
        try:
            while self.state.step < self.total_steps:
                lr = self.eng.engine.get_lr()[0]
                loss = self.train_step(loader, pipe_iter)
                self.state.step += 1
                self.state.consumed_samples += t.global_batch_size
                self.state.tokens += self.tokens_per_step
                throughput.add(self.tokens_per_step)
                metrics.advance()
                step = self.state.step
                if step % lg.log_interval == 0 or step == self.total_steps:
                    grad_norm = self.eng.engine.get_global_grad_norm()
                    metrics.write({
                        "step": step, "tokens": self.state.tokens, "loss": loss,
                        "lr": lr,
                        "grad_norm": None if grad_norm is None else float(grad_norm),
                        **throughput.report(), "memory_gb": memory_gb(self.dims.device),
                    })
                if (t.eval_interval and step % t.eval_interval == 0) or step == self.total_steps:
                    val_loss = self.evaluate()
                    if val_loss is not None:
                        metrics.write({"step": step, "tokens": self.state.tokens,
                                       "val_loss": val_loss})
                preempted = self.preemption.agreed(self.dims.device)
                stop_now = preempted or (t.exit_interval and step % t.exit_interval == 0)
                if (t.save_interval and step % t.save_interval == 0) or stop_now or \
                        step == self.total_steps:
                    self.save()
                if stop_now and step < self.total_steps:
                    log.info("stopping at step %d (%s)", step,
                             "preempted" if preempted else "exit interval")
                    exit_code = PREEMPTED_EXIT_CODE if preempted else 0
                    break
        finally:
            metrics.close()
        return exit_code
