from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope

CELLS = {
    "rnn": (gradscope.RNN, nn.RNN),
    "gru": (gradscope.GRU, nn.GRU),
    "lstm": (gradscope.LSTM, nn.LSTM),
}
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def make_pair(kind: str, input_size: int = 3, hidden_size: int = 5, dtype=torch.float64, seed=0, **options):
    """A gradscope layer and the torch.nn layer with the same weights (same seed: same init)."""
    ours, theirs = CELLS[kind]
    torch_options = {k: v for k, v in options.items() if k not in ("reset", "cell_activation", "hidden_activation")}
    torch.manual_seed(seed)
    a = ours(input_size, hidden_size, dtype=dtype, **options)
    torch.manual_seed(seed)
    b = theirs(input_size, hidden_size, dtype=dtype, **torch_options)
    return a, b


def initial_state(module, batch: int | None, dtype, seed: int = 1, device="cpu"):
    """Random initial state(s) shaped for ``module`` ([L*K, B, M], or [L*K, M] when batch is None), on ``device``
    (drawn on the CPU: the same states on every device)."""
    g = torch.Generator().manual_seed(seed)
    count = module.num_layers * (2 if module.bidirectional else 1)
    shape = (count, module.hidden_size) if batch is None else (count, batch, module.hidden_size)
    h0 = torch.randn(shape, generator=g, dtype=dtype).to(device)
    if isinstance(module, nn.LSTM):
        return (h0, torch.randn(shape, generator=g, dtype=dtype).to(device))
    return h0


def weighted_loss(output, final, seed: int = 2):
    """A loss that reaches every output step and every final state with its own random weight."""
    g = torch.Generator().manual_seed(seed)
    finals = final if isinstance(final, tuple) else (final,)

    def weights(like):  # drawn on the CPU: the same weights on every device
        return torch.randn(like.shape, generator=g, dtype=like.dtype).to(like.device)

    loss = (output * weights(output)).sum()
    for state in finals:
        loss = loss + (state * weights(state)).sum()
    return loss


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory):
    """A folder of runs for the dashboard: two real runs, a failed one and a damaged one.

    ``alpha``: recall, T=6, rnn/gru/lstm with the last state and lstm with max pooling, 2 layers.
    ``beta``: adding, T=5, bidirectional gru and lstm. ``failed``: a run whose status is failed. ``broken``: a
    damaged run.json.
    """
    import json

    from gradscope.experiments import compare

    root = tmp_path_factory.mktemp("dashboard-runs")
    small = dict(hidden_size=8, batch_size=8, eval_size=32, probe_size=8, jacobian_samples=2)
    readouts = {"rnn": ["last"], "gru": ["last"], "lstm": ["last", "max"]}
    compare("recall", 6, readouts=readouts, num_layers=2, steps=4, record_every=2, out=root / "alpha", **small)
    compare("adding", 5, cells=("gru", "lstm"), bidirectional=True, steps=4, record_every=2, out=root / "beta", seed=1,
            **small)  # fmt: skip
    compare("adding", 5, cells=("rnn",), steps=2, record_every=2, out=root / "failed", **small)
    info = json.loads((root / "failed" / "run.json").read_text())
    info.update(status="failed", error="RuntimeError: simulated")
    (root / "failed" / "run.json").write_text(json.dumps(info))
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text("{not json")
    return root
