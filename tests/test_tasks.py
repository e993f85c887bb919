"""Tasks: shapes, reproducibility, and each trivial baseline measured on 10^5 samples."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gradscope.tasks import TASKS, make_task

N = 100_000


def _samples(task, n=N, seed=0, chunk=20_000):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n // chunk):
        yield task.sample(chunk, g)


def test_adding_baseline_is_one_sixth():
    task = make_task("adding", 30)
    losses = [task.loss(torch.ones_like(y), y).item() for _, y in _samples(task)]
    assert task.baseline_loss == pytest.approx(1 / 6)
    assert sum(losses) / len(losses) == pytest.approx(1 / 6, rel=0.02)


def test_adding_marks_one_value_in_each_half():
    x, y = make_task("adding", 20).sample(500, torch.Generator().manual_seed(1))
    mask = x[..., 1]
    assert torch.all(mask[:, :10].sum(1) == 1) and torch.all(mask[:, 10:].sum(1) == 1)
    torch.testing.assert_close(y[:, 0], (x[..., 0] * mask).sum(1))


@pytest.mark.parametrize("seq_len", [30, 100])
def test_copy_memoryless_baseline(seq_len):
    task = make_task("copy", seq_len)
    assert task.length == seq_len + 20 and task.input_size == 10 and task.output_size == 9
    assert task.baseline_loss == pytest.approx(10 * math.log(8) / (seq_len + 20))
    total = []
    for _, y in _samples(task, n=40_000):
        # memoryless: certain blank before the recall, uniform over the 8 symbols during it
        logits = torch.full((*y.shape, 9), -1e9)
        logits[:, :-10, 8] = 0.0
        logits[:, -10:, :8] = 0.0
        total.append(task.loss(logits, y).item())
    assert sum(total) / len(total) == pytest.approx(task.baseline_loss, rel=0.02)


def test_copy_layout():
    x, y = make_task("copy", 15).sample(4, torch.Generator().manual_seed(2))
    tokens = x.argmax(-1)
    assert torch.equal(y[:, -10:], tokens[:, :10])  # the symbols to recall are the first ten
    assert torch.all(tokens[:, 10:24] == 8) and torch.all(tokens[:, 24] == 9)  # blanks, delimiter
    assert torch.all(y[:, :-10] == 8)


def test_recall_baseline_is_log_k_and_classes_are_balanced():
    task = make_task("recall", 20, symbols=5)
    assert task.baseline_loss == pytest.approx(math.log(5))
    counts = torch.zeros(5)
    losses = []
    for x, y in _samples(task):
        counts += torch.bincount(y, minlength=5)
        losses.append(task.loss(torch.zeros(len(y), 5), y).item())
        assert torch.equal(x[:, 0].argmax(-1), y)
    assert sum(losses) / len(losses) == pytest.approx(math.log(5), rel=0.02)
    # the best constant guess does no better than chance
    assert (counts / counts.sum()).max().item() == pytest.approx(0.2, rel=0.02)


def test_sine_baseline_predicting_zero():
    task = make_task("sine", 40, noise=0.2)
    losses = [F.mse_loss(torch.zeros_like(y), y).item() for _, y in _samples(task)]
    assert task.baseline_loss == pytest.approx(0.5 + 0.04)
    assert sum(losses) / len(losses) == pytest.approx(task.baseline_loss, rel=0.02)
    x, y = task.sample(3, torch.Generator().manual_seed(0))
    assert x.shape == (3, 40, 1) and y.shape == (3, 1)


@pytest.mark.parametrize("name", TASKS)
def test_sampling_is_reproducible_for_a_seed(name):
    task = make_task(name, 12)
    a = task.sample(8, torch.Generator().manual_seed(5))
    b = task.sample(8, torch.Generator().manual_seed(5))
    c = task.sample(8, torch.Generator().manual_seed(6))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (8, task.length, task.input_size)


@pytest.mark.parametrize("name", TASKS)
def test_metric_of_a_perfect_prediction(name):
    task = make_task(name, 12)
    x, y = task.sample(16, torch.Generator().manual_seed(0))
    if task.metric_name == "mse":
        assert task.metric(y.clone(), y) == 0.0
    else:
        perfect = F.one_hot(y, task.output_size).float() * 10
        assert task.metric(perfect, y) == 1.0


def test_bad_task_arguments_are_named():
    with pytest.raises(
        ValueError, match=r"unknown task 'parity': choose one of \['adding', 'copy', 'recall', 'sine'\]"
    ):
        make_task("parity", 10)
    with pytest.raises(ValueError, match="seq_len must be an int >= 2, got: 1"):
        make_task("adding", 1)
    with pytest.raises(ValueError, match=r"task 'adding' has no option\(s\) \['symbols'\]"):
        make_task("adding", 10, symbols=3)
    with pytest.raises(ValueError, match="symbols must be an int >= 2"):
        make_task("recall", 10, symbols=1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        make_task("recall", 10).sample(0, torch.Generator())
