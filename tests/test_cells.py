"""The step functions: torch's cells, and the identities the seed notes state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradscope
from gradscope import cells
from gradscope.trace import ACTIVATION_RANGES

F64 = dict(atol=1e-12, rtol=1e-12)


def _cell_inputs(cell: nn.Module, batch: int = 3):
    x = torch.randn(batch, cell.input_size, dtype=torch.float64)
    h = torch.randn(batch, cell.hidden_size, dtype=torch.float64)
    return x, h, cells.input_projection(x, cell.weight_ih, cell.bias_ih)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_cell_is_torch_rnncell(nonlinearity):
    ref = nn.RNNCell(4, 5, nonlinearity=nonlinearity, dtype=torch.float64)
    x, h, gi = _cell_inputs(ref)
    out = cells.rnn_cell(gi, h, ref.weight_hh, ref.bias_hh, nonlinearity)
    torch.testing.assert_close(out, ref(x, h), **F64)


def test_gru_cell_after_is_torch_grucell():
    ref = nn.GRUCell(4, 5, dtype=torch.float64)
    x, h, gi = _cell_inputs(ref)
    out, (r, z, n) = cells.gru_cell(gi, h, ref.weight_hh, ref.bias_hh, "after")
    torch.testing.assert_close(out, ref(x, h), **F64)
    torch.testing.assert_close(out, (1 - z) * n + z * h, **F64)


def test_lstm_cell_is_torch_lstmcell():
    ref = nn.LSTMCell(4, 5, dtype=torch.float64)
    x, h, gi = _cell_inputs(ref)
    c = torch.randn_like(h)
    h_new, c_new, (i, f, g, o) = cells.lstm_cell(gi, h, c, ref.weight_hh, ref.bias_hh)
    h_ref, c_ref = ref(x, (h, c))
    torch.testing.assert_close(h_new, h_ref, **F64)
    torch.testing.assert_close(c_new, c_ref, **F64)
    torch.testing.assert_close(c_new, f * c + i * g, **F64)


def test_gru_reset_before_with_saturated_gates_is_a_simple_rnn():
    # The seed: with z = 0 (its own z = 1) and r = 1 the GRU is a simple RNN built from its candidate weights.
    M, D = 5, 3
    gru = gradscope.GRU(D, M, reset="before", dtype=torch.float64)
    with torch.no_grad():
        gru.bias_ih_l0[:M] = 50.0  # reset gate r -> 1
        gru.bias_ih_l0[M : 2 * M] = -50.0  # update gate z -> 0: nothing of the old state is kept
    rnn = nn.RNN(D, M, dtype=torch.float64)
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(gru.weight_ih_l0[2 * M :])
        rnn.weight_hh_l0.copy_(gru.weight_hh_l0[2 * M :])
        rnn.bias_ih_l0.copy_(gru.bias_ih_l0[2 * M :])
        rnn.bias_hh_l0.copy_(gru.bias_hh_l0[2 * M :])
    x = torch.randn(8, 2, D, dtype=torch.float64)
    torch.testing.assert_close(gru(x)[0], rnn(x)[0], atol=1e-12, rtol=1e-12)
    # the identity needs the reset gate saturated: at r = 0.5 the GRU is no longer that RNN
    with torch.no_grad():
        gru.bias_ih_l0[:M] = 0.0
    assert not torch.allclose(gru(x)[0], rnn(x)[0])


def test_lstm_with_identity_hidden_activation_outputs_o_times_c():
    lstm = gradscope.LSTM(3, 4, hidden_activation="identity", dtype=torch.float64)
    with gradscope.record(lstm) as rec:
        out, (h_n, c_n) = lstm(torch.randn(6, 2, 3, dtype=torch.float64))
    lt = rec.trace.layer()
    torch.testing.assert_close(lt.h, lt.gates["output"] * lt.c, **F64)
    torch.testing.assert_close(h_n[0], lt.gates["output"][:, -1] * c_n[0], **F64)


@pytest.mark.parametrize("name", sorted(cells.ACTIVATIONS))
def test_activations_and_their_ranges(name):
    fn = cells.activation(name)
    v = torch.linspace(-20, 20, 401, dtype=torch.float64)
    expected = {
        "tanh": torch.tanh(v),
        "sigmoid": torch.sigmoid(v),
        "relu": v.clamp(min=0),
        "identity": v,
        "softsign": v / (1 + v.abs()),
        "hardtanh": v.clamp(-1, 1),
    }[name]
    torch.testing.assert_close(fn(v), expected, **F64)
    bounds = ACTIVATION_RANGES[name]
    if bounds is not None:
        assert fn(v).min() >= bounds[0] and fn(v).max() <= bounds[1]
    else:
        assert fn(v).max() == 20


def test_every_activation_has_a_range_entry():
    assert set(ACTIVATION_RANGES) == set(cells.ACTIVATIONS)


def test_gate_names_follow_torch_packing():
    assert cells.GATE_NAMES == {
        "rnn": (),
        "gru": ("reset", "update", "candidate"),
        "lstm": ("input", "forget", "cell", "output"),
    }
