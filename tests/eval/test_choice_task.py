"""The multiple-choice task made from held-out text: items cut from the documents as specified,
readable by lm-eval from any working folder, and bad input reported by file and line."""

from __future__ import annotations

import json

import pytest

from megatron_ngpt.data.files import DataError
from megatron_ngpt.eval.choice_task import CHOICES, ChoiceTaskShape, write_choice_task

SHAPE = ChoiceTaskShape(context_words=3, continuation_words=2, max_items=100)


def _corpus(path, documents: int = 4, words: int = 23) -> list[list[str]]:
    """Documents whose words name their place (d1w7), so every item can be traced back."""
    texts = [[f"d{d}w{w}" for w in range(words)] for d in range(documents)]
    path.write_text("".join(json.dumps({"text": " ".join(t)}) + "\n" for t in texts))
    return texts


def test_items_are_consecutive_windows_with_other_passages_as_wrong_choices(tmp_path):
    texts = _corpus(tmp_path / "held.jsonl")
    count = write_choice_task(tmp_path / "held.jsonl", tmp_path / "tasks", "cont", shape=SHAPE)
    items = [json.loads(line) for line in (tmp_path / "tasks" / "cont.jsonl").open()]
    # 23 words give 4 whole windows of 5 words per document (the last 3 words are left out)
    assert count == len(items) == 16
    expected = [(" ".join(t[s:s + 3]), " ".join(t[s + 3:s + 5])) for t in texts
                for s in range(0, 20, 5)]
    answers = [answer for _, answer in expected]
    for index, (item, (context, answer)) in enumerate(zip(items, expected, strict=True)):
        assert item["context"] == context
        assert item["label"] == index % CHOICES and item["choices"][item["label"]] == answer
        wrong = [c for i, c in enumerate(item["choices"]) if i != item["label"]]
        assert wrong == [answers[(index + k * 4) % 16] for k in (1, 2, 3)]


def test_long_inputs_are_sampled_evenly_and_the_same_input_gives_the_same_task(tmp_path):
    _corpus(tmp_path / "held.jsonl", documents=10, words=50)  # 100 windows
    shape = ChoiceTaskShape(3, 2, max_items=25)  # rounded down to 24, a multiple of four
    write_choice_task(tmp_path / "held.jsonl", tmp_path / "a", "cont", shape=shape)
    write_choice_task(tmp_path / "held.jsonl", tmp_path / "b", "cont", shape=shape)
    first = (tmp_path / "a" / "cont.jsonl").read_text()
    assert first == (tmp_path / "b" / "cont.jsonl").read_text()
    contexts = [json.loads(line)["context"] for line in first.splitlines()]
    # windows 0, 4, 8, ..., 95 of 100 (i * 100 // 24); ten windows of five words per document
    assert len(contexts) == 24
    assert contexts[:3] == ["d0w0 d0w1 d0w2", "d0w20 d0w21 d0w22", "d0w40 d0w41 d0w42"]
    assert contexts[-1] == "d9w25 d9w26 d9w27"


@pytest.mark.parametrize("documents, words", [(4, 23), (3, 28), (7, 13)])
def test_a_model_that_ignores_the_passage_scores_exactly_chance(tmp_path, documents, words):
    """(16, 15 and 14 windows.) Whatever a context-free model prefers, it picks the same text in
    the four items that share their choices, and that text is the answer of exactly one."""
    _corpus(tmp_path / "held.jsonl", documents, words)
    write_choice_task(tmp_path / "held.jsonl", tmp_path / "tasks", "cont", shape=SHAPE)
    items = [json.loads(line) for line in (tmp_path / "tasks" / "cont.jsonl").open()]
    assert len(items) % CHOICES == 0
    for preference in (hash, len, lambda text: text[::-1], lambda text: -hash(text)):
        correct = sum(item["choices"].index(max(item["choices"], key=preference))
                      == item["label"] for item in items)
        assert correct * CHOICES == len(items)


def test_lm_eval_reads_the_task_from_another_folder(tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager, get_task_dict

    _corpus(tmp_path / "held.jsonl")
    write_choice_task(tmp_path / "held.jsonl", tmp_path / "tasks", "cont", shape=SHAPE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the YAML names its data by absolute path
    task = get_task_dict(["cont"], TaskManager(include_path=str(tmp_path / "tasks")))["cont"]
    docs = list(task.test_docs())
    assert len(docs) == 16
    first = docs[1]
    assert task.doc_to_text(first) == "d0w5 d0w6 d0w7"
    assert task.doc_to_choice(first)[task.doc_to_target(first)] == "d0w8 d0w9"


def test_bad_line_names_file_and_line_and_writes_nothing(tmp_path):
    source = tmp_path / "held.jsonl"
    _corpus(source)
    source.write_text(source.read_text() + '{"text": 3}\n')
    with pytest.raises(DataError, match=r"held.jsonl:5: not a string"):
        write_choice_task(source, tmp_path / "tasks", "cont", shape=SHAPE)
    assert not (tmp_path / "tasks").exists() or not any((tmp_path / "tasks").iterdir())


def test_too_little_text_is_an_error(tmp_path, tool):
    _corpus(tmp_path / "held.jsonl", documents=2)
    code = tool("make_choice_task").main([
        "--input", str(tmp_path / "held.jsonl"), "--output-dir", str(tmp_path / "tasks"),
        "--name", "cont", "--context-words", "3", "--continuation-words", "2",
        "--min-items", "200"])
    assert code == 2 and not (tmp_path / "tasks" / "cont.yaml").exists()
