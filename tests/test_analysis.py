"""gradscope.analysis against closed forms (REFERENCES.md), autograd and explicit backward passes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CELLS
from reference import _step as reference_step
from torch import nn

import gradscope
from gradscope import analysis

F64 = torch.float64


def _record(layer, x, loss_fn=lambda out: out[-1].sum(), detail="full"):
    with gradscope.record(layer, detail=detail) as rec:
        out, _ = layer(x)
        loss_fn(out).backward()
    return rec.trace


def _orthogonal(m: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(m, m, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    return q


def _linear_rnn(rho: float, m: int = 16, d: int = 3, seed: int = 0) -> gradscope.RNN:
    """A tanh RNN with W_hh = rho * Q and no bias: linear for tiny inputs."""
    rnn = gradscope.RNN(d, m, dtype=F64)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(rho * _orthogonal(m, seed))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def _tiny_input(steps: int, batch: int = 4, d: int = 3) -> torch.Tensor:
    return 1e-6 * torch.randn(steps, batch, d, dtype=F64, generator=torch.Generator().manual_seed(1))


# ---- closed forms ----


@pytest.mark.parametrize("rho", [0.5, 0.9, 0.97])
def test_linear_tanh_rnn_decays_at_minus_log_rho(rho):
    trace = _record(_linear_rnn(rho), _tiny_input(60))
    curve = analysis.forgetting_curve(trace, "grad_h")
    # dL/dh_t = (W_hh^T)^(T-1-t) g  =>  ||dL/dh_t|| = rho^lag ||g||
    np.testing.assert_allclose(curve["relative"], rho ** curve["lag"], rtol=1e-6)
    fit = analysis.fit_forgetting(curve)
    assert fit.rate == pytest.approx(-math.log(rho), rel=0.01)
    assert fit.half_life == pytest.approx(math.log(2) / -math.log(rho), rel=0.01)
    assert fit.r2 > 0.9999 and fit.regime == "vanishing"
    expected_horizon = math.ceil(math.log(analysis.HORIZON_LEVEL) / math.log(rho) - 1e-9)
    assert fit.horizon == (expected_horizon if expected_horizon < 60 else None)


@pytest.mark.parametrize("rho", [0.8, 0.95])
def test_linear_tanh_rnn_lyapunov_exponents_are_log_rho(rho):
    trace = _record(_linear_rnn(rho), _tiny_input(30))
    exponents = analysis.lyapunov_exponents(trace, samples=[0, 1])
    np.testing.assert_allclose(exponents["exponent"], math.log(rho), rtol=0.01)


def _constant_forget_lstm(forget_bias_ih: float, forget_bias_hh: float, m: int = 8, d: int = 3):
    """An LSTM whose forget gate is the constant sigma(b_ih,f + b_hh,f): no recurrent weights, no input to f."""
    lstm = gradscope.LSTM(d, m, dtype=F64)
    with torch.no_grad():
        lstm.weight_hh_l0.zero_()
        lstm.weight_ih_l0[m : 2 * m].zero_()
        lstm.bias_ih_l0[m : 2 * m] = forget_bias_ih
        lstm.bias_hh_l0[m : 2 * m] = forget_bias_hh
    return lstm


@pytest.mark.parametrize(
    "bias_ih,bias_hh,expected_tau",
    [
        (0.0, 0.0, 2.0),  # torch's default region: f = 0.5
        (1.0, 0.0, 1 / (1 - 1 / (1 + math.exp(-1)))),  # Jozefowicz et al.: f = 0.7311, tau = 3.72
        (math.log(49) / 2, math.log(49) / 2, 50.0),  # chrono, T_max = 50, split over the two biases
    ],
    ids=["bias0", "bias1", "chrono50"],
)
def test_lstm_with_constant_forget_gate(bias_ih, bias_hh, expected_tau):
    f = 1 / (1 + math.exp(-(bias_ih + bias_hh)))
    lstm = _constant_forget_lstm(bias_ih, bias_hh)
    trace = _record(lstm, torch.randn(80, 4, 3, dtype=F64))
    # dc_{t+k}/dc_t = f^k: the cell-state gradient decays at -ln f
    fit = analysis.fit_forgetting(analysis.forgetting_curve(trace, "grad_c"))
    assert fit.rate == pytest.approx(-math.log(f), rel=0.01)
    taus = analysis.gate_time_constants(trace)
    assert list(taus.columns) == ["unit", "keep", "tau"] and len(taus) == 8
    np.testing.assert_allclose(taus["keep"], f, rtol=1e-12)
    np.testing.assert_allclose(taus["tau"], expected_tau, rtol=0.01)
    summary = analysis.summarize_time_constants(taus)
    assert summary.median == pytest.approx(expected_tau, rel=0.01)
    # the joint (h, c) Jacobian is [[0, A], [0, f I]]: the largest Lyapunov exponent is ln f
    exponents = analysis.lyapunov_exponents(trace, samples=[0])
    assert exponents["exponent"].max() == pytest.approx(math.log(f), rel=0.01)


@pytest.mark.parametrize("reset", ["after", "before"])
@pytest.mark.parametrize("bias", [-1.0, 0.5, 2.0])
def test_gru_with_constant_update_gate_decays_at_minus_log_z(reset, bias):
    m = 6
    gru = gradscope.GRU(3, m, reset=reset, dtype=F64)
    with torch.no_grad():
        gru.weight_hh_l0.zero_()
        gru.weight_ih_l0[m : 2 * m].zero_()
        gru.bias_ih_l0[m : 2 * m] = bias
        gru.bias_hh_l0[m : 2 * m] = 0.0
    z = 1 / (1 + math.exp(-bias))
    trace = _record(gru, torch.randn(50, 4, 3, dtype=F64))
    curve = analysis.forgetting_curve(trace, "grad_h")
    np.testing.assert_allclose(curve["relative"], z ** curve["lag"], rtol=1e-9)
    assert analysis.fit_forgetting(curve).rate == pytest.approx(-math.log(z), rel=0.01)
    np.testing.assert_allclose(analysis.gate_time_constants(trace)["tau"], 1 / (1 - z), rtol=1e-9)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_pascanu_bound_holds_on_random_rnns(nonlinearity, scale):
    torch.manual_seed(3)
    rnn = gradscope.RNN(2, 10, nonlinearity=nonlinearity, dtype=F64)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(scale * 3)
    trace = _record(rnn, torch.randn(25, 6, 2, dtype=F64))
    check = analysis.pascanu_bound(trace)
    assert list(check.columns) == ["lag", "measured", "bound", "holds"]
    assert check["holds"].all()
    sigma = torch.linalg.matrix_norm(rnn.weight_hh_l0, ord=2).item()
    np.testing.assert_allclose(check["bound"], sigma ** check["lag"], rtol=1e-12)
    assert check.loc[0, "measured"] == 1.0


def test_pascanu_bound_is_tight_in_the_linear_regime():
    check = analysis.pascanu_bound(_record(_linear_rnn(0.9), _tiny_input(20)))
    np.testing.assert_allclose(check["measured"], check["bound"], rtol=1e-6)


# ---- parameter counts ----


@pytest.mark.parametrize("d,m", [(1, 64), (8, 128), (5, 3)])
def test_parameter_counts_follow_the_formulas(d, m):
    frame = analysis.parameter_counts(d, m, [10, 100, 1000])
    assert list(frame.columns) == ["model", "seq_len", "input_size", "hidden_size", "num_layers", "parameters"]
    one = m * d + m * m + 2 * m
    for _, row in frame.iterrows():
        expected = {"rnn": one, "gru": 3 * one, "lstm": 4 * one, "dense": row.seq_len * d * m + m}[row.model]
        assert row.parameters == expected
    recurrent = frame[frame["model"] != "dense"].groupby("model")["parameters"].nunique()
    assert (recurrent == 1).all()  # weights are shared across time: no dependence on T


def test_parameter_counts_of_stacked_layers_match_torch():
    frame = analysis.parameter_counts(4, 6, 7, num_layers=3).set_index("model")["parameters"]
    for cell, (_, torch_cls) in CELLS.items():
        assert frame[cell] == sum(p.numel() for p in torch_cls(4, 6, num_layers=3).parameters())
    assert frame["dense"] == (7 * 4 * 6 + 6) + 2 * (6 * 6 + 6)


@pytest.mark.parametrize("bad", [dict(input_size=0), dict(hidden_size=2.5), dict(seq_len=[]), dict(seq_len=-3)])
def test_parameter_counts_reject_bad_sizes(bad):
    args = dict(input_size=2, hidden_size=3, seq_len=5) | bad
    with pytest.raises(ValueError, match="must be a positive int"):
        analysis.parameter_counts(**args)


# ---- Jacobians against torch.autograd.functional.jacobian ----

JACOBIAN_CASES = [
    ("rnn", {"nonlinearity": "tanh"}),
    ("rnn", {"nonlinearity": "relu"}),
    ("gru", {"reset": "after"}),
    ("gru", {"reset": "before"}),
    ("lstm", {}),
    ("lstm", {"cell_activation": "softsign", "hidden_activation": "sigmoid"}),
]


@pytest.mark.parametrize("kind,options", JACOBIAN_CASES, ids=str)
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_jacobian_spectrum_matches_autograd(kind, options, direction):
    torch.manual_seed(5)
    layer = CELLS[kind][0](3, 4, bidirectional=True, dtype=F64, **options)
    x = torch.randn(6, 3, 3, dtype=F64)
    trace = _record(layer, x, lambda out: out.pow(2).sum())
    spectrum = analysis.jacobian_spectrum(trace, direction=direction, samples=[0, 2])
    assert list(spectrum.columns) == ["sample", "t", "k", "singular_value"]
    lt = trace.layer(direction=direction)
    sfx = "_reverse" if direction == "backward" else ""
    params = tuple(getattr(layer, f"{n}_l0{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    m = 4
    for sample in (0, 2):
        for t in range(6):
            prev = t - 1 if direction == "forward" else t + 1
            inside = 0 <= prev < 6
            h_prev = lt.h[sample, prev] if inside else lt.h0[sample]
            if kind == "lstm":
                c_prev = lt.c[sample, prev] if inside else lt.c0[sample]

                def f(state, sample=sample, t=t):
                    h, c, _ = reference_step(kind, params, x[t, sample], state[:m], state[m:], options)
                    return torch.cat([h, c])

                jac = torch.autograd.functional.jacobian(f, torch.cat([h_prev, c_prev]))
            else:

                def f(state, sample=sample, t=t):
                    return reference_step(kind, params, x[t, sample], state, None, options)[0]

                jac = torch.autograd.functional.jacobian(f, h_prev)
            expected = torch.linalg.svdvals(jac).numpy()
            got = spectrum[(spectrum["sample"] == sample) & (spectrum["t"] == t)].sort_values("k")
            np.testing.assert_allclose(got["singular_value"].to_numpy(), expected, rtol=1e-9, atol=1e-12)


# ---- connectivity against explicit per-output backward passes ----


class SequenceModel(nn.Module):
    def __init__(self, cell_cls, bidirectional=False):
        super().__init__()
        self.rnn = cell_cls(3, 5, batch_first=True, bidirectional=bidirectional, dtype=F64)
        self.head = nn.Linear(5 * (2 if bidirectional else 1), 2, dtype=F64)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _explicit_connectivity(model, x):
    batch, steps, _ = x.shape
    x = x.detach().requires_grad_(True)
    y = model(x)
    out = torch.zeros(steps, steps, dtype=F64)
    for t in range(steps):
        per_sample = torch.zeros(batch, steps, dtype=F64)
        for k in range(y.shape[2]):
            (g,) = torch.autograd.grad(y[:, t, k].sum(), x, retain_graph=True)  # samples are independent
            per_sample += g.pow(2).sum(-1)
        out[t] = per_sample.sqrt().mean(0)
    return out


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
def test_connectivity_matches_explicit_backward_passes(kind, bidirectional):
    torch.manual_seed(2)
    model = SequenceModel(CELLS[kind][0], bidirectional)
    x = torch.randn(3, 7, 3, dtype=F64)
    frame = analysis.connectivity(model, x, chunk_size=5)
    assert list(frame.columns) == ["t", "s", "lag", "norm"] and len(frame) == 49
    matrix = torch.tensor(frame.pivot(index="t", columns="s", values="norm").to_numpy())
    torch.testing.assert_close(matrix, _explicit_connectivity(model, x), rtol=1e-10, atol=1e-12)
    if not bidirectional:  # causal: an output never depends on a later input
        assert (frame.loc[frame["lag"] < 0, "norm"] == 0).all()
        assert (frame.loc[frame["lag"] >= 0, "norm"] > 0).all()


def test_connectivity_of_a_torch_layer_with_time_major_input():
    torch.manual_seed(4)
    lstm = nn.LSTM(2, 3, dtype=F64)  # returns a tuple; time-major
    x = torch.randn(5, 2, 2, dtype=F64)
    frame = analysis.connectivity(lstm, x, batch_first=False)
    expected = _explicit_connectivity(lambda xb: lstm(xb.transpose(0, 1))[0].transpose(0, 1), x.transpose(0, 1))
    matrix = torch.tensor(frame.pivot(index="t", columns="s", values="norm").to_numpy())
    torch.testing.assert_close(matrix, expected, rtol=1e-10, atol=1e-12)


def test_connectivity_rejects_bad_input():
    with pytest.raises(ValueError, match="x must be a 3-d floating-point tensor"):
        analysis.connectivity(nn.GRU(2, 3), torch.ones(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="sequence output shaped like x"):
        analysis.connectivity(lambda x: x.sum(1), torch.randn(2, 4, 3))


# ---- fit_forgetting on synthetic curves ----


def _curve(norm):
    norm = np.asarray(norm, dtype=float)
    lag = np.arange(len(norm))
    return pd.DataFrame({"t": lag[::-1], "lag": lag, "norm": norm, "relative": norm / norm.max()})


def test_fit_of_an_exact_exponential():
    fit = analysis.fit_forgetting(_curve(3.0 * 0.8 ** np.arange(40)))
    assert fit.rate == pytest.approx(-math.log(0.8), rel=1e-12)
    assert fit.r2 == pytest.approx(1.0) and fit.points == 40 and fit.regime == "vanishing"
    assert fit.horizon == 31  # 0.8^31 = 9.9e-4 is the first relative value below 1e-3


def test_fit_regimes_stable_and_exploding():
    flat = analysis.fit_forgetting(_curve(np.ones(20)))
    assert flat.rate == pytest.approx(0.0, abs=1e-12) and flat.half_life == math.inf
    assert flat.regime == "stable" and flat.horizon is None and flat.r2 == 1.0
    growing = analysis.fit_forgetting(_curve(1.1 ** np.arange(30)))
    assert growing.rate == pytest.approx(-math.log(1.1)) and growing.regime == "exploding"
    assert growing.half_life == math.inf


def test_fit_leaves_out_points_below_the_floor():
    norm = 0.5 ** np.arange(60)  # reaches 1e-18: below the floor from lag 20
    fit = analysis.fit_forgetting(_curve(norm), floor=1e-6)
    assert fit.points == 20 and fit.rate == pytest.approx(math.log(2))


def test_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="cannot fit a decay: 1 of 1 points"):
        analysis.fit_forgetting(_curve([1.0]))
    with pytest.raises(ValueError, match="at least two distinct lags"):
        analysis.fit_forgetting(_curve([1.0, 1e-9, 1e-10]))
    with pytest.raises(ValueError, match="missing"):
        analysis.fit_forgetting(pd.DataFrame({"lag": [0, 1]}))
    with pytest.raises(ValueError, match=r"floor must be in \[0, 1\)"):
        analysis.fit_forgetting(_curve([1.0, 0.5]), floor=1.5)


# ---- traces: summaries, bad input ----


def test_forgetting_curve_on_a_summary_trace_equals_the_full_one():
    layer = gradscope.GRU(3, 4, dtype=F64)
    x = torch.randn(12, 5, 3, dtype=F64)
    full = analysis.forgetting_curve(_record(layer, x), "grad_x")
    summary = analysis.forgetting_curve(_record(layer, x, detail="summary"), "grad_x")
    pd.testing.assert_frame_equal(full, summary, rtol=1e-12)
    assert list(full.columns) == ["t", "lag", "norm", "relative"]
    assert full["lag"].tolist() == list(range(12)) and full["t"].tolist() == list(range(11, -1, -1))


def test_backward_direction_lag_counts_from_the_start():
    layer = gradscope.LSTM(2, 3, bidirectional=True, dtype=F64)
    trace = _record(layer, torch.randn(9, 2, 2, dtype=F64), lambda out: out[0].sum())
    curve = analysis.forgetting_curve(trace, "grad_h", direction="backward")
    assert (curve["lag"] == curve["t"]).all()
    assert curve.loc[curve["lag"] == 0, "relative"].item() == pytest.approx(1.0)


def test_all_zero_gradient_gives_a_zero_curve_that_cannot_be_fitted():
    layer = gradscope.RNN(2, 3)
    trace = _record(layer, torch.randn(6, 2, 2), lambda out: 0.0 * out.sum())
    curve = analysis.forgetting_curve(trace, "grad_h")
    assert (curve["norm"] == 0).all() and (curve["relative"] == 0).all()
    with pytest.raises(ValueError, match="an all-zero gradient"):
        analysis.fit_forgetting(curve)


def test_bad_requests_are_named():
    layer = gradscope.GRU(2, 3)
    with gradscope.record(layer) as rec:
        layer(torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match=r"has no grad_x: call loss.backward\(\) inside the record\(\) block"):
        analysis.forgetting_curve(rec.trace)
    trace = _record(layer, torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match=r"quantity must be one of \('grad_x', 'grad_h', 'grad_c'\), got: 'h'"):
        analysis.forgetting_curve(trace, "h")
    with pytest.raises(ValueError, match="grad_c exists for the LSTM only; this layer is a GRU"):
        analysis.forgetting_curve(trace, "grad_c")
    with pytest.raises(KeyError, match="no trace for module 'rnn'"):
        analysis.forgetting_curve(trace, name="rnn")
    with pytest.raises(KeyError, match="layer 1"):
        analysis.forgetting_curve(trace, layer=1)
    with pytest.raises(ValueError, match="direction must be 'forward' or 'backward', got: 'up'"):
        analysis.forgetting_curve(trace, direction="up")
    with pytest.raises(TypeError, match="expected a Trace, LayerTrace or LayerSummary, got: dict"):
        analysis.forgetting_curve({})
    with pytest.raises(ValueError, match="samples must index the batch of 2"):
        analysis.jacobian_spectrum(trace, samples=[5])
    summary = _record(layer, torch.randn(5, 2, 2), detail="summary")
    for fn in (analysis.gate_time_constants, analysis.jacobian_spectrum, analysis.lyapunov_exponents):
        with pytest.raises(ValueError, match="record with detail='full'"):
            fn(summary)
    rnn_trace = _record(gradscope.RNN(2, 3), torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match="a simple RNN has no gate"):
        analysis.gate_time_constants(rnn_trace)
    with pytest.raises(ValueError, match="applies to the simple RNN; this layer is a GRU"):
        analysis.pascanu_bound(trace)


def test_summarize_the_three_cells():
    torch.manual_seed(0)
    x = torch.randn(30, 8, 3)
    traces = {cell.upper(): _record(cls(3, 16), x) for cell, (cls, _) in CELLS.items()}
    table = analysis.summarize(traces, samples=[0, 1])
    assert list(table.index) == ["RNN", "GRU", "LSTM"]
    assert list(table.columns) == [
        "cell", "rate", "half_life", "horizon", "regime", "r2", "median_tau", "lyapunov_max", "parameters",
    ]  # fmt: skip
    counts = analysis.parameter_counts(3, 16, 30).set_index("model")["parameters"]
    for label, row in table.iterrows():
        assert row["cell"] == label.lower()
        assert row["parameters"] == counts[label.lower()]
        fit = analysis.fit_forgetting(analysis.forgetting_curve(traces[label], "grad_x"))
        assert row["rate"] == pytest.approx(fit.rate) and row["regime"] == fit.regime
        assert row["lyapunov_max"] < 0  # default-initialised small layers contract
    assert math.isnan(table.loc["RNN", "median_tau"])
    assert table.loc["LSTM", "median_tau"] == pytest.approx(
        analysis.summarize_time_constants(analysis.gate_time_constants(traces["LSTM"])).median
    )
    with pytest.raises(ValueError, match="at least one labelled trace"):
        analysis.summarize({})
