"""lm-eval on the model being trained, without exporting it: an lm-eval `LM` over the DeepSpeed
engine as it is sharded, and the evaluator the trainer calls every
`training.downstream_eval_interval` steps.

The scores are the ones `tools/eval.py` reports for the exported model, within float rounding:
the adapter tokenizes with the export's own Hugging Face tokenizer (built in memory), splits
context and continuation, left-truncates and scores like lm-eval's ``hf`` backend (log-softmax
over the whole padded vocabulary, rolling windows after the bos token), and decodes greedily up to
eos or a stop sequence. What differs is only the order of floating-point operations (batching,
tensor-parallel sums, no KV cache).

Every rank runs lm-eval on the same documents, so each rank knows every batch's shape; then:

- TP: logits stay vocab-parallel. Log-probabilities come from megatron-core's
  `vocab_parallel_cross_entropy`, the greedy token from a max over the TP group.
- PP: DeepSpeed's `eval_batch` runs the pipeline; the last stage scores and broadcasts the scores
  over the pipeline group.
- DP (ZeRO 0-3): loglikelihood batches are dealt round-robin to the DP ranks, each rank running
  the same number of forwards (ZeRO-3 gathers parameters in every forward, with every DP rank),
  and the scores are all-gathered. Generation runs on every rank; each new token is DP rank 0's.
Rank 0 logs the results; the others return None.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

import numpy
import torch
import torch.distributed as dist
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel

from megatron_ngpt.config import Config, ConfigError
from megatron_ngpt.eval.harness import expand_tasks, load_tasks
from megatron_ngpt.parallel.state import ParallelDims
from megatron_ngpt.training.engine import Engine

Request = tuple[Any, list[int], list[int]]  # (strings, context ids, continuation ids)


def vocab_parallel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Index of the largest logit over the whole vocabulary, from vocab-parallel logits
    ``[..., V / TP]``; ties go to the lowest index, as `torch.argmax` does."""
    local = logits.argmax(-1)
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return local
    group = ps.get_tensor_model_parallel_group()
    best = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1).float()
    ids = local + ps.get_tensor_model_parallel_rank() * logits.shape[-1]
    all_best = [torch.empty_like(best) for _ in range(tp)]
    all_ids = [torch.empty_like(ids) for _ in range(tp)]
    dist.all_gather(all_best, best, group=group)
    dist.all_gather(all_ids, ids, group=group)
    winner = torch.stack(all_best).argmax(0, keepdim=True)  # the first (lowest-id) shard on ties
    return torch.stack(all_ids).gather(0, winner).squeeze(0)


class TrainingModelLM(TemplateLM):
    """lm-eval's `LM` interface over a training engine (any TP/PP/DP/ZeRO layout).

    `tokenizer` is the exported model's Hugging Face tokenizer
    (`hf.tokenizer_export.exported_tokenizer`); `max_length` is the training context, which the
    export declares as ``max_position_embeddings`` and lm-eval's ``hf`` backend reads from it."""

    def __init__(self, engine: Engine, dims: ParallelDims, tokenizer, max_length: int,
                 batch_size: int) -> None:
        super().__init__()
        self.eng, self.dims = engine, dims
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size

    # ------------------------------------------------------------------ tokens, as HFLM

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is scored after: bos, else eos (HFLM's choice)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   **kwargs) -> list[int]:
        if add_special_tokens is None and has_bos_prefix(
                string, self.tokenizer.decode(self.prefix_token_id)):
            add_special_tokens = False
        special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **special)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return super().loglikelihood(requests, disable_tqdm=True)  # tokenizing: no progress bar

    # ------------------------------------------------------------------ the model

    @torch.no_grad()
    def _score(self, tokens: torch.Tensor, targets: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probability of `targets`, greedy token) at every position of `tokens` ``[b, s]``,
        identical on every rank of this model replica."""
        device = self.dims.device
        tokens, targets = tokens.to(device), targets.to(device)
        logits = self._pipeline_logits(tokens) if self.eng.is_pipeline else self.eng.engine(tokens)
        if logits is not None:
            greedy = vocab_parallel_argmax(logits)
            # .float() copies bf16 logits; fp32 ones are overwritten in place, but no longer needed.
            logprobs = -tensor_parallel.vocab_parallel_cross_entropy(logits.float(), targets)
        else:
            greedy = torch.empty(tokens.shape, dtype=torch.long, device=device)
            logprobs = torch.empty(tokens.shape, dtype=torch.float32, device=device)
        if self.eng.is_pipeline:
            last, group = ps.get_pipeline_model_parallel_last_rank(), \
                ps.get_pipeline_model_parallel_group()
            dist.broadcast(greedy, last, group=group)
            dist.broadcast(logprobs, last, group=group)
        return logprobs.cpu(), greedy.cpu()

    def _pipeline_logits(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """The last stage's logits from DeepSpeed's pipeline (None on the other stages). The
        labels feed only the pipeline's loss, which eval_batch computes and which is ignored.
        Activation shapes are renegotiated before and after, as batches change shape."""
        engine = self.eng.engine
        batch = (tokens, (tokens, torch.ones_like(tokens, dtype=torch.float32)))
        engine.reset_activation_shape()
        _, logits = engine.eval_batch(iter([batch]), return_logits=True, compute_loss=True,
                                      reduce_output=None, bcast_loss=False, num_micro_batches=1)
        engine.reset_activation_shape()
        return logits if engine.is_last_stage() else None

    # ------------------------------------------------------------------ loglikelihood

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              **kwargs) -> list[tuple[float, bool]]:
        """(log-probability, is-greedy) of each continuation, as lm-eval's hf backend computes
        them: the last ``max_length + 1`` tokens of context + continuation, log-softmax over
        the whole vocabulary, summed in fp32."""
        self._check_same_requests(len(requests))
        windows = [(context + continuation)[-(self.max_length + 1):]
                   for _, context, continuation in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(windows[i]))
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        mine: dict[int, tuple[float, bool]] = {}
        for index in self._data_parallel_share(len(batches)):
            batch = batches[index if index is not None else -1]
            width = len(windows[batch[0]]) - 1
            tokens = torch.full((len(batch), width), self.eot_token_id, dtype=torch.long)
            targets = torch.zeros_like(tokens)
            for row, i in enumerate(batch):
                window = torch.tensor(windows[i])
                tokens[row, :len(window) - 1] = window[:-1]
                targets[row, :len(window) - 1] = window[1:]
            logprobs, greedy = self._score(tokens, targets)
            if index is None:  # padding: this rank had fewer batches than others
                continue
            for row, i in enumerate(batch):
                end, n = len(windows[i]) - 1, len(requests[i][2])
                mine[i] = (float(logprobs[row, end - n:end].sum()),
                           bool((greedy[row, end - n:end] == targets[row, end - n:end]).all()))
        results = self._gather_data_parallel(mine)
        return [results[i] for i in range(len(requests))]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihoods over lm-eval's rolling windows (HFLM's windows and sum)."""
        owners, windows = [], []
        for index, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                owners.append(index)
                windows.append((None, context, continuation))
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows), strict=True):
            totals[owner] += logprob
        return totals

    # ------------------------------------------------------------------ generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations up to eos, a stop sequence or ``max_gen_toks`` tokens, as HFLM
        decodes them. Requests with the same settings and context length share a batch; each
        step runs the whole sequence (the training model keeps no KV cache)."""
        self._check_same_requests(len(requests))
        eos = self.tokenizer.decode(self.eot_token_id, skip_special_tokens=False)
        prepared = []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = normalize_gen_kwargs(gen_kwargs, 256)
            if kwargs.get("do_sample"):
                raise ValueError(f"in-loop evaluation decodes greedily, but a task asks for "
                                 f"sampling ({gen_kwargs})")
            max_new = kwargs["max_gen_toks"]
            if max_new >= self.max_length:
                raise ValueError(f"max_gen_toks {max_new} must be less than the model's context "
                                 f"{self.max_length}")
            until = handle_stop_sequences(kwargs["until"], eos=eos)
            ids = self.tok_encode(context)[-(self.max_length - max_new):]
            prepared.append((ids, tuple(until), max_new))
        groups: dict[tuple, list[int]] = {}
        for i, (ids, until, max_new) in enumerate(prepared):
            groups.setdefault((len(ids), until, max_new), []).append(i)
        outputs = [""] * len(requests)
        for (_, until, max_new), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                batch = members[start:start + self.batch_size]
                texts = self._greedy([prepared[i][0] for i in batch], list(until), max_new)
                for i, text in zip(batch, texts, strict=True):
                    outputs[i] = text
        return outputs

    def _greedy(self, contexts: list[list[int]], until: list[str], max_new: int) -> list[str]:
        tokens = torch.tensor(contexts, dtype=torch.long)
        generated: list[list[int]] = [[] for _ in contexts]
        finished = [False] * len(contexts)
        for _ in range(max_new):
            _, greedy = self._score(tokens, torch.zeros_like(tokens))
            next_tokens = self._from_data_parallel_rank0(greedy[:, -1])
            for row, token in enumerate(next_tokens.tolist()):
                if finished[row]:
                    continue
                if token == self.eot_token_id:
                    finished[row] = True
                    continue
                generated[row].append(token)
                text = self.tokenizer.decode(generated[row], skip_special_tokens=True)
                finished[row] = any(stop and stop in text for stop in until)
            if all(finished):
                break
            tokens = torch.cat([tokens, next_tokens[:, None]], dim=1)
        return [postprocess_generated_text(
            self.tokenizer.decode(ids, skip_special_tokens=True), until, None)
            for ids in generated]

    # ------------------------------------------------------------------ ranks

    def _check_same_requests(self, count: int) -> None:
        """Every rank must run the same requests (or collectives would not match up)."""
        counts = torch.tensor([count, -count], device=self.dims.device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        if counts[0].item() != -counts[1].item():
            raise RuntimeError(f"ranks built different lm-eval requests ({count} on rank "
                               f"{self.dims.rank}): do all ranks see the same task data?")

    def _data_parallel_share(self, n_batches: int) -> list[int | None]:
        """This DP rank's batches, round-robin; None pads to the same count on every DP rank."""
        dp, rank = self.dims.dp, ps.get_data_parallel_rank()
        per_rank = -(-n_batches // dp)
        return [i if i < n_batches else None for i in range(rank, per_rank * dp, dp)]

    def _gather_data_parallel(self, mine: dict[int, Any]) -> dict[int, Any]:
        if self.dims.dp == 1:
            return mine
        everyone: list[dict[int, Any]] = [{} for _ in range(self.dims.dp)]
        dist.all_gather_object(everyone, mine, group=ps.get_data_parallel_group())
        return {i: value for part in everyone for i, value in part.items()}

    def _from_data_parallel_rank0(self, tokens: torch.Tensor) -> torch.Tensor:
        """DP rank 0's tokens on every DP rank, so that all replicas stop together."""
        if self.dims.dp == 1:
            return tokens
        tokens = tokens.to(self.dims.device)
        dist.broadcast(tokens, ps.get_data_parallel_src_rank(),
                       group=ps.get_data_parallel_group())
        return tokens.cpu()


def downstream_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` from lm-eval's results: ``acc,none`` becomes ``acc`` (other
    filters keep lm-eval's ``metric,filter`` name); standard errors and aliases are left out."""
    scores: dict[str, dict[str, float]] = {}
    for task, values in results["results"].items():
        metrics = {}
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or isinstance(value, bool) \
                    or not isinstance(value, (int, float)):
                continue
            metrics[metric if filter_name == "none" else key] = float(value)
        scores[task] = metrics
    return scores


@contextlib.contextmanager
def rng_state_kept(device: torch.device) -> Iterator[None]:
    """lm-eval seeds Python's, NumPy's and torch's generators: give training its own back."""
    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(python_state)
            numpy.random.set_state(numpy_state)


class DownstreamEvaluator:
    """`training.downstream_tasks` on the training engine, with rank 0's scores returned.

    Built when training starts, so that unknown tasks or unreadable datasets stop the run there,
    on every rank, rather than at the first evaluation."""

    def __init__(self, cfg: Config, dims: ParallelDims, engine: Engine) -> None:
        from megatron_ngpt.hf.tokenizer_export import exported_tokenizer

        t = cfg.training
        self.dims, self.eng = dims, engine
        self.limit = t.downstream_limit or None
        reason = None
        try:
            tasks = expand_tasks(",".join(t.downstream_tasks))
            self.manager, self.specs = load_tasks(tasks, t.downstream_include_path or None)
            self.manager.load(self.specs)  # reads every dataset once: fail now, not later
            tokenizer = exported_tokenizer(cfg.data.tokenizer_model)
        except Exception as err:  # lm-eval, datasets and transformers raise many kinds
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        failed = torch.tensor([0.0 if reason is None else 1.0], device=dims.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            raise ConfigError("training.downstream_tasks: "
                              f"{reason or 'loading the tasks failed on another rank'}")
        self.lm = TrainingModelLM(engine, dims, tokenizer, cfg.data.seq_length,
                                  t.micro_batch_size)

    def evaluate(self) -> dict[str, Any] | None:
        """``{"downstream": {task: {metric: value}}, "downstream_seconds": s}`` on rank 0."""
        from lm_eval import simple_evaluate

        start = time.perf_counter()
        self.eng.engine.eval()
        try:
            with rng_state_kept(self.dims.device):
                results = simple_evaluate(model=self.lm, tasks=self.specs,
                                          task_manager=self.manager, limit=self.limit,
                                          bootstrap_iters=0, log_samples=False)
        finally:
            self.eng.engine.train()
        if self.dims.rank != 0 or results is None:
            return None
        return {"downstream": downstream_scores(results),
                "downstream_seconds": time.perf_counter() - start}
