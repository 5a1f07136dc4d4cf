"""lm-eval on an exported tiny model, through tools/eval.py and through the lm_eval CLI: the scores
must be the ones computed here, from the task definitions, with the exported model.

The tasks in megatron_ngpt/eval/tasks are one multiple-choice task (arc_easy style) and one
last-word loglikelihood task (lambada style) over local jsonl files; their paths are relative to
the repository root, so lm-eval runs from there.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from megatron_ngpt.cli import eval as eval_cli
from megatron_ngpt.eval.harness import TASK_GROUPS, expand_tasks
from tests.distributed import REPO, clean_env
from tests.hf.parity import load_hf_model

TASKS = "tiny_choice,tiny_cloze"
INCLUDE = "megatron_ngpt/eval/tasks"


def test_seed_expands_to_the_five_paper_tasks():
    assert expand_tasks("seed") == list(TASK_GROUPS["seed"])
    assert expand_tasks("arc_easy, seed") == ["arc_easy", "hellaswag", "winogrande", "wsc273",
                                              "lambada_openai"]
    with pytest.raises(ValueError, match="no tasks"):
        expand_tasks(" , ")


def _loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) and whether it is the greedy continuation, split into
    tokens as lm-eval splits them (a context's trailing spaces move to the continuation)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
    context_ids = encode(context)
    target = encode(context + continuation)[len(context_ids):]
    ids = torch.tensor([context_ids + target])
    with torch.no_grad():
        logprobs = model(ids[:, :-1]).logits[0, len(context_ids) - 1:].float().log_softmax(-1)
    targets = torch.tensor(target)
    picked = logprobs.gather(-1, targets[:, None]).sum().item()
    return picked, bool((logprobs.argmax(-1) == targets).all())


def _expected_scores(folder: Path, limit: int) -> dict[str, dict[str, float]]:
    """The local tasks' metrics computed here from their definitions (the task YAMLs), with the
    exported model: what lm-eval must report."""
    model, tokenizer = load_hf_model(folder), AutoTokenizer.from_pretrained(folder)
    tasks = REPO / INCLUDE
    choice_docs = [json.loads(line) for line in
                   (tasks / "tiny_choice.jsonl").read_text().splitlines()[:limit]]
    acc, acc_norm = [], []
    for doc in choice_docs:
        context = f"Question: {doc['question']}\nAnswer:"
        lls = [_loglikelihood(model, tokenizer, context, f" {choice}")[0]
               for choice in doc["choices"]]
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == doc["label"]))
        normed = [ll / len(choice) for ll, choice in zip(lls, doc["choices"], strict=True)]
        acc_norm.append(float(max(range(len(normed)), key=normed.__getitem__) == doc["label"]))
    cloze = [_loglikelihood(model, tokenizer, " ".join(words[:-1]), f" {words[-1]}")
             for words in (json.loads(line)["text"].split(" ") for line in
                           (tasks / "tiny_cloze.jsonl").read_text().splitlines()[:limit])]
    return {"tiny_choice": {"acc,none": sum(acc) / limit, "acc_norm,none": sum(acc_norm) / limit},
            "tiny_cloze": {"perplexity,none": math.exp(-sum(ll for ll, _ in cloze) / limit),
                           "acc,none": sum(greedy for _, greedy in cloze) / limit}}


def _check_results(results: dict, folder: Path, limit: int) -> None:
    for task, metrics in _expected_scores(folder, limit).items():
        for name, value in metrics.items():
            assert results[task][name] == pytest.approx(value, rel=1e-5), (task, name)


def test_eval_tool_writes_results(exported, tmp_path, monkeypatch, capsys):
    _, folder = exported("gpt2")
    monkeypatch.chdir(REPO)
    out = tmp_path / "results"
    code = eval_cli.main(["--model", str(folder), "--tasks", TASKS, "--include-path", INCLUDE,
                          "--limit", "4", "--output", str(out)])
    assert code == 0
    _check_results(json.loads((out / "results.json").read_text())["results"], folder, 4)
    table = (out / "results.md").read_text()
    assert all(word in table for word in ("tiny_choice", "tiny_cloze", "acc_norm", "perplexity"))
    assert "Limited to 4 documents" in table
    assert eval_cli.main(["--model", str(folder), "--tasks", "no_such_task",
                          "--output", str(out)]) == 1
    assert "unknown lm-eval tasks: no_such_task" in capsys.readouterr().err


def test_a_dataset_out_of_reach_fails_in_one_line_naming_it(exported, tmp_path, capsys):
    """Offline (tests/hf/conftest.py), a task whose dataset lives on the Hub: one line that
    names the dataset and says how to use a local copy, no traceback."""
    _, folder = exported("gpt2")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "hub_choice.yaml").write_text(
        "task: hub_choice\ndataset_path: megatron-ngpt/not-on-this-machine\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{label}}'\n")
    code = eval_cli.main(["--model", str(folder), "--tasks", "hub_choice", "--include-path",
                          str(tasks), "--limit", "1", "--output", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1, err
    assert "'megatron-ngpt/not-on-this-machine'" in error[0]
    assert "HF_DATASETS_OFFLINE=1" in error[0] and "--include-path" in error[0]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_lm_eval_cli_runs_exported_ngpt(exported, tmp_path):
    _, folder = exported("ngpt")
    # Without this process's rank variables (single_rank sets them), which would make the
    # subprocess's accelerate join a process group of its own.
    env = clean_env(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    lm_eval = Path(sys.executable).with_name("lm_eval")
    proc = subprocess.run(
        [str(lm_eval), "--model", "hf", "--model_args",
         f"pretrained={folder},trust_remote_code=True,dtype=float32", "--tasks", TASKS,
         "--include_path", INCLUDE, "--limit", "4", "--device", "cpu", "--batch_size", "4",
         "--output_path", str(tmp_path / "cli")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (results_file,) = (tmp_path / "cli").rglob("results*.json")
    _check_results(json.loads(results_file.read_text())["results"], folder, 4)
