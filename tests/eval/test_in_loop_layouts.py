"""In-loop downstream scores of real training runs are what tools/eval.py reports for the export.

The trainer runs two steps in each layout (TP=2, PP=2, DP=2 with ZeRO-3) with the in-loop
evaluation after each step, on the four local tasks (multiple choice, last word, greedy
generation, rolling perplexity). The checkpoint of the last step is exported (fp32) and
evaluated by tools/eval.py from another working directory. Discrete scores (accuracies, exact
match) are equal; continuous ones (perplexities, chrF) equal within float rounding, the
summation order of the sharded and batched forward differing from the Hugging Face model's.
Training after an evaluation goes on unchanged: the losses are the one-rank run's without it.

Three runs cover the sharded paths (the vocab-parallel scores of TP, the pipeline's last stage
and its broadcast, DP's shares with ZeRO-3 gathering parameters) and both models; both models
meet every layout in tests/training and tests/hf.
"""

from __future__ import annotations

import json

import pytest

from megatron_ngpt.cli import checkpoint_to_hf
from megatron_ngpt.cli import eval as eval_cli
from tests.training.trainer_runs import assert_close, losses, records, train

TASKS = ["tiny_choice", "tiny_cloze", "tiny_greedy", "tiny_perplexity"]
LIMIT = 4
DISCRETE = {"acc", "acc_norm", "exact_match"}
STEPS = 2
LAYOUTS = {
    "tp2": ["--tensor-model-parallel-size", "2", "--zero-stage", "1"],
    "pp2": ["--pipeline-model-parallel-size", "2", "--zero-stage", "1"],
    "dp2-zero3": ["--zero-stage", "3"],
}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, tiny_dataset_prefix, sp_tokenizer_path):
    """`reference_losses(arch)`: the losses of one rank without in-loop evaluation."""
    cache: dict[str, dict[int, float]] = {}

    def get(arch: str) -> dict[int, float]:
        if arch not in cache:
            run_dir = tmp_path_factory.mktemp(f"{arch}-1rank")
            train(1, run_dir, arch, tiny_dataset_prefix, sp_tokenizer_path,
                  "--train-iters", str(STEPS), "--zero-stage", "0")
            cache[arch] = losses(run_dir)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch, layout", [("ngpt", "tp2"), ("gpt2", "pp2"),
                                          ("ngpt", "dp2-zero3")])
def test_in_loop_scores_are_the_exported_models(arch, layout, reference_losses, tmp_path,
                                                monkeypatch, tiny_dataset_prefix,
                                                sp_tokenizer_path):
    run_dir, export_dir = tmp_path / "run", tmp_path / "hf"
    train(2, run_dir, arch, tiny_dataset_prefix, sp_tokenizer_path, "--train-iters", str(STEPS),
          *LAYOUTS[layout], "training.downstream_eval_interval=1",
          f"training.downstream_tasks={' '.join(TASKS)}", f"training.downstream_limit={LIMIT}")
    assert_close(losses(run_dir), reference_losses(arch), rel=1e-4)
    evaluations = {r["step"]: r["downstream"] for r in records(run_dir) if "downstream" in r}
    assert sorted(evaluations) == [1, 2]
    in_loop = evaluations[STEPS]

    assert checkpoint_to_hf.main(["--checkpoint", str(run_dir), "--output", str(export_dir),
                                  "--dtype", "fp32"]) == 0
    monkeypatch.chdir(tmp_path)  # not the repository: the tasks' data must be found anyway
    assert eval_cli.main(["--model", str(export_dir), "--tasks", ",".join(TASKS),
                          "--limit", str(LIMIT), "--output", str(tmp_path / "eval")]) == 0
    exported = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]

    assert sorted(in_loop) == TASKS
    for task in TASKS:
        want = {key.split(",")[0]: value for key, value in exported[task].items()
                if key.endswith(",none") and "_stderr" not in key}
        assert in_loop[task].keys() == want.keys(), task
        for metric, value in in_loop[task].items():
            if metric in DISCRETE:
                assert value == want[metric], (task, metric)
            else:
                assert value == pytest.approx(want[metric], rel=1e-5), (task, metric)
