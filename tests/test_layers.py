"""gradscope.RNN/GRU/LSTM against torch.nn: outputs, final states and every gradient."""

from __future__ import annotations

import pytest
import torch
from conftest import CELLS, TOL, initial_state, make_pair, weighted_loss
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gradscope

OPTIONS = [
    {},
    {"batch_first": True},
    {"num_layers": 2},
    {"bidirectional": True},
    {"num_layers": 3, "bidirectional": True, "batch_first": True},
    {"bias": False},
    {"bias": False, "num_layers": 2, "bidirectional": True},
]


def _forward_and_grads(module, x, hx):
    x = x.clone().requires_grad_(True)
    states = () if hx is None else (hx if isinstance(hx, tuple) else (hx,))
    states = tuple(s.clone().requires_grad_(True) for s in states)
    hx_in = None if hx is None else (states if isinstance(hx, tuple) else states[0])
    output, final = module(x, hx_in)
    loss = weighted_loss(output, final)
    inputs = [x, *states, *module.parameters()]
    grads = torch.autograd.grad(loss, inputs)
    finals = final if isinstance(final, tuple) else (final,)
    return [output, *finals], list(grads)


PATHS = ["unrolled", "auto"]  # auto: torch's fused kernel, unrecorded


def _assert_parity(ours, theirs, x, hx, dtype):
    values_a, grads_a = _forward_and_grads(ours, x, hx)
    values_b, grads_b = _forward_and_grads(theirs, x, hx)
    for a, b in zip(values_a, values_b, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL[dtype])
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("with_state", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("path", PATHS)
def test_parity_with_torch_batched(kind, options, dtype, with_state, path):
    ours, theirs = make_pair(kind, dtype=dtype, **options)
    ours.path = path
    x = torch.randn(4, 6, 3, dtype=dtype)  # [B, T, D] or [T, B, D]: both valid shapes
    batch = x.shape[0] if options.get("batch_first") else x.shape[1]
    hx = initial_state(ours, batch, dtype) if with_state else None
    _assert_parity(ours, theirs, x, hx, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True, "batch_first": True}])
@pytest.mark.parametrize("path", PATHS)
def test_parity_with_torch_unbatched(kind, options, dtype, path):
    ours, theirs = make_pair(kind, dtype=dtype, **options)
    ours.path = path
    x = torch.randn(7, 3, dtype=dtype)
    _assert_parity(ours, theirs, x, None, dtype)
    _assert_parity(ours, theirs, x, initial_state(ours, None, dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("path", PATHS)
def test_parity_relu_rnn(dtype, path):
    ours, theirs = make_pair("rnn", dtype=dtype, nonlinearity="relu", num_layers=2, bidirectional=True)
    ours.path = path
    assert ours.nonlinearity == "relu"
    _assert_parity(ours, theirs, torch.randn(5, 4, 3, dtype=dtype), None, dtype)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("path", PATHS)
def test_dropout_between_layers_matches_torch_for_the_same_seed(kind, bidirectional, path):
    ours, theirs = make_pair(kind, num_layers=3, dropout=0.5, bidirectional=bidirectional)
    ours.path = path
    assert ours.training and theirs.training
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.manual_seed(7)
    values_a, grads_a = _forward_and_grads(ours, x, None)
    torch.manual_seed(7)
    values_b, grads_b = _forward_and_grads(theirs, x, None)
    for a, b in zip(values_a + grads_a, values_b + grads_b, strict=True):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    # dropout is active in training and off in eval
    torch.manual_seed(8)
    train_out = ours(x)[0]
    ours.eval()
    eval_out = ours(x)[0]
    assert not torch.allclose(train_out, eval_out)
    torch.testing.assert_close(eval_out, ours(x)[0])


@pytest.mark.parametrize("kind", list(CELLS))
def test_same_seed_gives_same_parameters_names_and_shapes(kind):
    ours, theirs = make_pair(kind, num_layers=2, bidirectional=True)
    sd_a, sd_b = ours.state_dict(), theirs.state_dict()
    assert list(sd_a) == list(sd_b)
    for name in sd_a:
        torch.testing.assert_close(sd_a[name], sd_b[name], rtol=0, atol=0)
    assert isinstance(ours, type(theirs))  # a drop-in: isinstance(m, nn.LSTM) still holds


@pytest.mark.parametrize("kind", list(CELLS))
def test_load_state_dict_both_ways(kind):
    ours, theirs = make_pair(kind, num_layers=2, bidirectional=True, seed=0)
    other_ours, other_theirs = make_pair(kind, num_layers=2, bidirectional=True, seed=1)
    other_ours.load_state_dict(theirs.state_dict())
    other_theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(other_ours(x)[0], theirs(x)[0])
    torch.testing.assert_close(other_theirs(x)[0], ours(x)[0])


@pytest.mark.parametrize("kind", list(CELLS))
def test_from_torch_shares_parameters(kind):
    ours_cls, theirs_cls = CELLS[kind]
    theirs = theirs_cls(3, 4, num_layers=2, bidirectional=True, batch_first=True, dropout=0.25)
    theirs.eval()
    ours = ours_cls.from_torch(theirs)
    assert type(ours) is ours_cls and not ours.training
    assert ours.batch_first and ours.bidirectional and ours.num_layers == 2 and ours.dropout == 0.25
    for (name_a, p_a), (name_b, p_b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert name_a == name_b and p_a is p_b
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    # training one trains the other
    before = theirs.weight_hh_l0.detach().clone()
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    ours(x)[0].pow(2).sum().backward()
    optimizer.step()
    assert not torch.equal(theirs.weight_hh_l0.detach(), before)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


def test_from_torch_keeps_rnn_nonlinearity_and_gradscope_options():
    relu = gradscope.RNN.from_torch(nn.RNN(2, 3, nonlinearity="relu"))
    assert relu.nonlinearity == "relu"
    before = gradscope.GRU.from_torch(gradscope.GRU(2, 3, reset="before"))
    assert before.reset == "before"
    lstm = gradscope.LSTM.from_torch(gradscope.LSTM(2, 3, cell_activation="relu", hidden_activation="identity"))
    assert (lstm.cell_activation, lstm.hidden_activation) == ("relu", "identity")


def test_from_torch_rejects_other_kinds_and_projections():
    with pytest.raises(TypeError, match=r"LSTM.from_torch expects a torch.nn.LSTM, got: GRU"):
        gradscope.LSTM.from_torch(nn.GRU(2, 3))
    with pytest.raises(ValueError, match="proj_size=2 is not supported"):
        gradscope.LSTM.from_torch(nn.LSTM(3, 4, proj_size=2))


def test_proj_size_and_packed_sequence_are_rejected_with_advice():
    with pytest.raises(ValueError, match=r"proj_size=2 is not supported.*nn.Linear"):
        gradscope.LSTM(3, 4, proj_size=2)
    layer = gradscope.GRU(3, 4)
    packed = pack_padded_sequence(torch.randn(5, 2, 3), torch.tensor([5, 3]))
    with pytest.raises(TypeError, match="PackedSequence input is not supported.*pad_packed_sequence"):
        layer(packed)


def test_gru_reset_before_differs_from_after_with_the_same_parameters():
    after = gradscope.GRU(3, 4, dtype=torch.float64)
    before = gradscope.GRU(3, 4, dtype=torch.float64, reset="before")
    before.load_state_dict(after.state_dict())
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    assert not torch.allclose(after(x)[0], before(x)[0])
    assert "reset='before'" in repr(before) and "reset" not in repr(after)


def test_lstm_activations_appear_in_repr_and_change_the_output():
    plain = gradscope.LSTM(3, 4)
    custom = gradscope.LSTM(3, 4, cell_activation="relu", hidden_activation="sigmoid")
    custom.load_state_dict(plain.state_dict())
    assert "cell_activation='relu', hidden_activation='sigmoid'" in repr(custom)
    x = torch.randn(6, 2, 3)
    assert not torch.allclose(plain(x)[0], custom(x)[0])


VARIANTS = [
    ("rnn", {"nonlinearity": "tanh"}),
    ("rnn", {"nonlinearity": "relu"}),
    ("gru", {"reset": "after"}),
    ("gru", {"reset": "before"}),
    *[("lstm", {"cell_activation": a, "hidden_activation": b})
      for a, b in [("tanh", "tanh"), ("sigmoid", "relu"), ("identity", "softsign"), ("hardtanh", "identity")]],
]  # fmt: skip


@pytest.mark.parametrize("kind,options", VARIANTS, ids=lambda v: str(v))
def test_gradcheck_float64(kind, options):
    layer = CELLS[kind][0](2, 3, num_layers=2, bidirectional=True, dtype=torch.float64, **options)
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    hx = initial_state(layer, 2, torch.float64)
    states = hx if isinstance(hx, tuple) else (hx,)
    states = tuple(s.requires_grad_(True) for s in states)

    def f(x, *states):
        out, final = layer(x, states if len(states) == 2 else states[0])
        finals = final if isinstance(final, tuple) else (final,)
        return (out, *finals)

    assert torch.autograd.gradcheck(f, (x, *states))


# ---- errors: what was expected and what came ----


@pytest.mark.parametrize(
    "make_input,error,message",
    [
        (lambda: torch.randn(2, 3, 4, 3), ValueError, r"must have 3 dimensions .* got 4 with shape \(2, 3, 4, 3\)"),
        (lambda: torch.randn(3), ValueError, r"got 1 with shape \(3,\)"),
        (lambda: torch.randn(5, 2, 7), ValueError, r"input.shape\[-1\] must equal input_size=3, got 7"),
        (lambda: torch.ones(5, 2, 3, dtype=torch.long), TypeError, r"floating-point tensor, got dtype torch.int64"),
        (lambda: torch.randn(5, 2, 3, dtype=torch.float64), ValueError, r"float64 does not match .*torch.float32"),
        (lambda: torch.randn(0, 2, 3), ValueError, r"at least one time step"),
        (lambda: [[1.0, 2.0, 3.0]], TypeError, r"input must be a Tensor, got: list"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("kind", list(CELLS))
def test_bad_input_is_named(kind, make_input, error, message):
    layer = CELLS[kind][0](3, 4)
    with pytest.raises(error, match=message):
        layer(make_input())


@pytest.mark.parametrize("kind", list(CELLS))
def test_bad_initial_state_is_named(kind):
    layer = CELLS[kind][0](3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    wrong = torch.zeros(1, 2, 4)
    if kind == "lstm":
        with pytest.raises(ValueError, match=r"h_0 must have shape \(2, 2, 4\) \(\[L\*K, B, M\]\), got \(1, 2, 4\)"):
            layer(x, (wrong, torch.zeros(2, 2, 4)))
        with pytest.raises(ValueError, match=r"c_0 must have shape \(2, 2, 4\)"):
            layer(x, (torch.zeros(2, 2, 4), wrong))
        with pytest.raises(TypeError, match=r"LSTM hx must be a tuple \(h_0, c_0\), got: Tensor"):
            layer(x, torch.zeros(2, 2, 4))
    else:
        with pytest.raises(ValueError, match=r"hx must have shape \(2, 2, 4\) \(\[L\*K, B, M\]\), got \(1, 2, 4\)"):
            layer(x, wrong)
        with pytest.raises(ValueError, match=r"hx must have shape \(2, 4\) \(\[L\*K, M\] for unbatched input\)"):
            layer(torch.randn(5, 3), torch.zeros(2, 1, 4))
        with pytest.raises(ValueError, match=r"hx must have dtype torch.float32 like the input, got torch.float64"):
            layer(x, torch.zeros(2, 2, 4, dtype=torch.float64))


def test_unknown_variants_are_named():
    with pytest.raises(ValueError, match=r"reset must be 'after' or 'before', got: 'middle'"):
        gradscope.GRU(3, 4, reset="middle")
    with pytest.raises(ValueError, match=r"cell_activation must be one of \[.*'tanh'\], got: 'gelu'"):
        gradscope.LSTM(3, 4, cell_activation="gelu")
    with pytest.raises(ValueError, match=r"hidden_activation must be one of .* got: 'swish'"):
        gradscope.LSTM(3, 4, hidden_activation="swish")
    with pytest.raises(ValueError, match=r"Unknown nonlinearity 'sigmoid'"):
        gradscope.RNN(3, 4, nonlinearity="sigmoid")


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(list(CELLS)),
    batch=st.integers(1, 4),
    steps=st.integers(1, 9),
    input_size=st.integers(1, 5),
    hidden_size=st.integers(1, 6),
    num_layers=st.integers(1, 3),
    bidirectional=st.booleans(),
    batch_first=st.booleans(),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_parity_with_torch_over_random_shapes(
    kind, batch, steps, input_size, hidden_size, num_layers, bidirectional, batch_first, bias, seed
):
    options = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    ours, theirs = make_pair(kind, input_size, hidden_size, seed=seed, **options)
    ours.path = "unrolled"
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    _assert_parity(ours, theirs, x, initial_state(ours, batch, torch.float64, seed=seed), torch.float64)
