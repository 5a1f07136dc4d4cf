"""The in-loop lm-eval adapter on a one-rank DeepSpeed engine.

Its scores are the model's own (log-softmax of the `LanguageModel`'s logits, computed here), and
they are what lm-eval's `hf` backend reports for the exported model on the same text requests:
tokenization, the context/continuation split (trailing spaces, empty contexts), left
truncation, rolling windows and greedy generation with stop sequences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy
import pytest
import torch
from lm_eval.api.instance import Instance

from megatron_ngpt.config import Config, ConfigError
from megatron_ngpt.eval.harness import evaluate_hf
from megatron_ngpt.eval.in_loop import DownstreamEvaluator, TrainingModelLM, downstream_scores
from megatron_ngpt.hf.export import export_to_hf
from megatron_ngpt.hf.tokenizer_export import exported_tokenizer
from megatron_ngpt.models.language_model import LanguageModel
from megatron_ngpt.training.engine import Engine, build_engine
from tests.hf.conftest import build_model, hf_config, sample_text

CONTEXT = 64  # hf_config's data.seq_length: what both sides take as the maximum length
ENGINE = ["training.precision=fp32", "parallel.zero_stage=0", "training.micro_batch_size=3",
          "training.global_batch_size=3"]
TASKS = ["tiny_choice", "tiny_cloze", "tiny_greedy", "tiny_perplexity"]


@dataclass
class Trained:
    config: Config
    model: LanguageModel  # the model inside the engine
    engine: Engine
    lm: TrainingModelLM
    export: Path  # its fp32 export


@pytest.fixture(scope="module", params=["ngpt", "gpt2"])
def trained(request, single_rank, sp_model, tmp_path_factory) -> Trained:
    config = hf_config(request.param, sp_model, *ENGINE)
    model = build_model(config)
    folder = export_to_hf(config, model.state_dict(), sp_model,
                          tmp_path_factory.mktemp("export") / request.param, "fp32")
    engine = build_engine(config, model, single_rank)
    engine.engine.eval()
    lm = TrainingModelLM(engine, single_rank, exported_tokenizer(sp_model), CONTEXT, batch_size=3)
    return Trained(config, model, engine, lm, folder)


@torch.no_grad()
def direct_loglikelihood(model, context: list[int], continuation: list[int]
                         ) -> tuple[float, bool]:
    """log P(continuation | context) and whether it is the greedy continuation, from the
    model's logits of the last CONTEXT + 1 tokens, one request at a time."""
    window = (context + continuation)[-(CONTEXT + 1):]
    logits = model(torch.tensor([window[:-1]]))[0, -len(continuation):].double()
    targets = torch.tensor(continuation)
    logprob = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum().item()
    return logprob, bool(torch.equal(logits.argmax(-1), targets))


def test_loglikelihood_is_the_models_own(trained):
    lm, model = trained.lm, trained.model
    rng = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=rng).tolist()

    requests = [(None, ids(5), ids(1)), (None, ids(12), ids(4)), (None, ids(1), ids(7)),
                (None, ids(90), ids(3)),  # longer than the context: cut on the left
                (None, ids(20), ids(CONTEXT))]  # the continuation fills the context
    context, continuation = ids(6), []
    for _ in range(3):  # a greedy continuation, so that is-greedy is true somewhere
        continuation.append(int(model(torch.tensor([context + continuation]))[0, -1].argmax()))
    requests.append((None, context, continuation))
    got = lm._loglikelihood_tokens(requests)
    for (_, ctx, cont), (logprob, greedy) in zip(requests, got, strict=True):
        want_logprob, want_greedy = direct_loglikelihood(model, ctx, cont)
        assert logprob == pytest.approx(want_logprob, rel=1e-5, abs=1e-4)
        assert greedy == want_greedy
    assert got[-1][1]


def _instances(kind: str, arguments: list[tuple]) -> list[Instance]:
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


LOGLIKELIHOOD = [
    ("The cat sat on the", " mat"),
    ("Question: what ran to the house?\nAnswer:", " the red dog"),
    ("the dog ran ", "to the river"),  # a trailing space moves to the continuation
    ("", "the quick bird flew over"),  # an empty context: scored after bos
    (sample_text(3, 12), " and then the"),  # longer than the context: cut on the left
    ("Café naïve 42", " 1999"),
]
GENERATE = [
    ("The cat sat on the", {"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False}),
    ("one two", {"until": ["."], "max_gen_toks": 6}),
    ("the happy dog", {"until": ["\n", "."], "max_gen_toks": 8, "do_sample": False}),
    ("a", {"until": "the", "max_gen_toks": 5, "temperature": 0.0}),
    (sample_text(5, 12), {"until": ["\n"], "max_gen_toks": 4}),  # left-truncated context
]


def test_adapter_scores_like_lm_evals_hf_backend_on_the_export(trained):
    from lm_eval.models.huggingface import HFLM

    lm = trained.lm
    hf = HFLM(pretrained=str(trained.export), trust_remote_code=True, dtype="float32",
              device="cpu", batch_size=2)
    assert hf.max_length == lm.max_length == CONTEXT
    ours = lm.loglikelihood(_instances("loglikelihood", LOGLIKELIHOOD))
    theirs = hf.loglikelihood(_instances("loglikelihood", LOGLIKELIHOOD))
    for (ours_lp, ours_greedy), (their_lp, their_greedy) in zip(ours, theirs, strict=True):
        assert ours_lp == pytest.approx(their_lp, rel=1e-5, abs=1e-4)
        assert ours_greedy == their_greedy

    texts = [(sample_text(7, 12),), ("the cat",)]  # the first needs several windows
    assert len(lm.tok_encode(texts[0][0])) > 2 * CONTEXT
    assert lm.loglikelihood_rolling(_instances("loglikelihood_rolling", texts)) == \
        pytest.approx(hf.loglikelihood_rolling(_instances("loglikelihood_rolling", texts)),
                      rel=1e-5, abs=1e-4)

    ours = lm.generate_until(_instances("generate_until", GENERATE))
    assert ours == hf.generate_until(_instances("generate_until", GENERATE))
    # Stop sequences taken from what was generated (not U+FFFD, which a byte-fallback token
    # shows until the rest of its character comes): both stop there.
    stops = {i: next(c for c in text if c != "\ufffd")
             for i, text in enumerate(ours) if text.strip("\ufffd")}
    assert len(stops) >= 2, ours
    stopped = [(GENERATE[i][0], {**GENERATE[i][1], "until": [stop]}) for i, stop in stops.items()]
    cut = lm.generate_until(_instances("generate_until", stopped))
    assert cut == hf.generate_until(_instances("generate_until", stopped))
    assert cut == [ours[i].split(stop)[0] for i, stop in stops.items()]


def test_sampling_is_refused(trained):
    with pytest.raises(ValueError, match="greedily"):
        trained.lm.generate_until(_instances("generate_until", [("a", {"do_sample": True})]))


def _rng_states():
    return (torch.get_rng_state(), random.getstate(), numpy.random.get_state()[1].copy())


def test_evaluator_scores_are_tools_eval_scores_of_the_export(trained, single_rank, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)  # the packaged tasks' data is found from anywhere
    trained.config.training.downstream_tasks = TASKS
    trained.config.training.downstream_limit = 4
    evaluator = DownstreamEvaluator(trained.config, single_rank, trained.engine)
    torch.manual_seed(7)
    random.seed(7)
    numpy.random.seed(7)
    before = _rng_states()
    record = evaluator.evaluate()
    after = _rng_states()  # lm-eval seeds all three: training must get its own back
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    assert numpy.array_equal(before[2], after[2])
    assert trained.engine.engine.training  # back in training mode
    trained.engine.engine.eval()

    exported = downstream_scores(evaluate_hf(trained.export, TASKS, limit=4, device="cpu"))
    assert record["downstream"].keys() == exported.keys() == set(TASKS)
    for task, scores in record["downstream"].items():
        assert scores == pytest.approx(exported[task], rel=1e-5), task
    assert record["downstream_seconds"] > 0


def test_unreadable_tasks_stop_the_run_at_once(single_rank, sp_model, tmp_path):
    (tmp_path / "broken.yaml").write_text(
        "task: broken_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        "    test: missing.jsonl\noutput_type: loglikelihood\ntest_split: test\n"
        "doc_to_text: '{{text}}'\ndoc_to_target: '{{text}}'\n")
    config = hf_config("gpt2", sp_model, "training.downstream_eval_interval=10",
                       "training.downstream_tasks=tiny_choice broken_task",
                       f"training.downstream_include_path={tmp_path}")
    with pytest.raises(ConfigError, match=r"^training.downstream_tasks: .*missing\.jsonl"):
        DownstreamEvaluator(config, single_rank, None)
    with pytest.raises(ConfigError, match="training.downstream_tasks: no tasks"):
        hf_config("gpt2", sp_model, "training.downstream_eval_interval=10",
                  "training.downstream_tasks=[]")
    with pytest.raises(ConfigError, match="training.downstream_limit: must not be negative"):
        hf_config("gpt2", sp_model, "training.downstream_limit=-1")
