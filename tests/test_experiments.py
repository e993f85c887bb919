"""compare() end to end, forget-bias initialisation, and the demo's story."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from gradscope.cli import DEMO, _story
from gradscope.experiments import SequenceModel, compare, init_forget_bias, run_summary
from gradscope.storage import TABLES, load_run

SMALL = dict(hidden_size=8, batch_size=8, eval_size=32, probe_size=8, jacobian_samples=2)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "recall"
    readouts = {"rnn": ["last"], "gru": ["last", "mean"], "lstm": ["max"]}
    return compare("recall", 6, readouts=readouts, steps=7, record_every=3, out=out, **SMALL)


def test_every_table_is_present_with_its_columns(small_run):
    assert small_run.status == "completed" and small_run.info["error"] is None
    for name, columns in TABLES.items():
        frame = getattr(small_run, name)
        assert list(frame.columns) == list(columns), name
        assert len(frame) > 0, name
    configs = {("rnn", "last"), ("gru", "last"), ("gru", "mean"), ("lstm", "max")}
    assert set(zip(small_run.metrics["cell"], small_run.metrics["readout"], strict=True)) == configs


def test_record_steps_are_as_configured(small_run):
    assert small_run.steps == [0, 3, 6, 7]  # 0, every 3, and after the last step
    for name in ("metrics", "curves", "fits", "gates", "jacobians"):
        frame = getattr(small_run, name)
        per_config = frame.groupby(["cell", "readout"])["step"].unique()
        assert all(sorted(steps) == [0, 3, 6, 7] for steps in per_config), name
    completed = {(r["cell"], r["readout"], r["step"]) for r in small_run.info["completed"]}
    assert len(completed) == 4 * 4


def test_dtypes_and_values(small_run):
    m = small_run.metrics
    assert m["step"].dtype == "int64" and m["loss"].dtype == "float64"
    assert set(m["split"]) == {"train", "test", "gap"}
    for _, at in m.groupby(["cell", "readout", "step"]):
        s = at.set_index("split")
        assert s.loc["gap", "loss"] == pytest.approx(s.loc["test", "loss"] - s.loc["train", "loss"])
    c = small_run.curves
    assert set(c["batch"]) == {"train", "probe"}
    assert set(c.loc[c["cell"] == "lstm", "quantity"]) == {"grad_x", "grad_h", "grad_c"}
    assert set(c.loc[c["cell"] == "rnn", "quantity"]) == {"grad_x", "grad_h"}
    assert c["t"].between(0, 5).all() and (c["lag"] == 5 - c["t"]).all()
    assert c["relative"].between(0, 1).all()
    f = small_run.fits
    assert str(f["horizon"].dtype) == "Int64" and f["regime"].isin(["vanishing", "stable", "exploding"]).all()
    g = small_run.gates
    assert set(g.loc[g["cell"] == "gru", "gate"]) == {"reset", "update", "candidate", "keep"}
    assert "rnn" not in set(g["cell"])
    tc = small_run.time_constants
    assert set(tc["cell"]) == {"gru", "lstm"} and (tc["tau"] >= 1).all()
    p = small_run.params.set_index(["cell", "readout", "module"])["parameters"]
    assert p[("rnn", "last", "recurrent")] == 8 * 8 + 8 * 8 + 16
    assert p[("gru", "mean", "recurrent")] == 3 * (8 * 8 + 8 * 8 + 16)
    assert small_run.info["task"] == {"name": "recall", "length": 6, "metric": "accuracy",
                                      "baseline_loss": pytest.approx(math.log(8))}  # fmt: skip


def test_connectivity_of_the_trained_layer_at_the_last_step(small_run):
    conn = small_run.connectivity
    assert set(conn["step"]) == {7}
    assert conn.groupby(["cell", "readout"]).size().tolist() == [36] * 4  # T x T per configuration
    assert (conn.loc[conn["lag"] < 0, "norm"] == 0).all()  # h_t never depends on a later input
    assert (conn.loc[conn["lag"] >= 0, "norm"] > 0).all()


def test_run_summary(small_run):
    table = run_summary(small_run)
    assert list(table[["cell", "readout"]].itertuples(index=False, name=None)) == [
        ("rnn", "last"), ("gru", "last"), ("gru", "mean"), ("lstm", "max"),
    ]  # fmt: skip
    assert (table["step"] == 7).all()
    assert table["loss_ratio"].tolist() == pytest.approx((table["test_loss"] / math.log(8)).tolist())
    assert math.isnan(table.loc[0, "median_tau"]) and not math.isnan(table.loc[1, "median_tau"])


def test_compare_is_deterministic_for_a_seed(tmp_path):
    runs = [
        compare("adding", 5, cells=("gru",), steps=4, record_every=2, out=tmp_path / name, seed=3, **SMALL)
        for name in ("a", "b")
    ]
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(runs[0], name), getattr(runs[1], name))
    other = compare("adding", 5, cells=("gru",), steps=4, record_every=2, out=tmp_path / "c", seed=4, **SMALL)
    assert not runs[0].metrics["loss"].equals(other.metrics["loss"])


def test_every_configuration_sees_the_same_data_and_initialisation(tmp_path):
    run = compare("sine", 5, cells=("lstm",), readouts=("last", "mean"), steps=1, record_every=1,
                  out=tmp_path / "r", **SMALL)  # fmt: skip
    params = run.params[run.params["module"] == "recurrent"]
    assert params["parameters"].nunique() == 1
    # same seed, same init: the recurrent layer's time constants agree before any update
    tc = run.time_constants[run.time_constants["step"] == 0]
    pd.testing.assert_series_equal(
        tc[tc["readout"] == "last"]["tau"].reset_index(drop=True),
        tc[tc["readout"] == "mean"]["tau"].reset_index(drop=True),
    )


def test_every_layer_is_measured(tmp_path):
    run = compare("adding", 5, cells=("lstm",), num_layers=2, steps=2, record_every=2, out=tmp_path / "r", **SMALL)
    for name in ("curves", "fits", "gates", "time_constants", "jacobians"):
        frame = getattr(run, name)
        assert set(frame["layer"]) == {0, 1} and set(frame["direction"]) == {"forward"}, name
    table = run_summary(run)  # reports layer 0, whose grad_x is the gradient with respect to the inputs
    fits = run.fits[(run.fits["layer"] == 0) & (run.fits["batch"] == "probe") & (run.fits["quantity"] == "grad_x")]
    assert table.loc[0, "half_life"] == fits[fits["step"] == 2]["half_life"].item()


def test_both_directions_are_measured(tmp_path):
    run = compare("recall", 6, cells=("gru",), readouts=("mean",), bidirectional=True, forget_bias="chrono", steps=2,
                  record_every=2, out=tmp_path / "r", **SMALL)  # fmt: skip
    assert set(run.fits["direction"]) == {"forward", "backward"}
    backward = run.curves[run.curves["direction"] == "backward"]
    assert (backward["lag"] == backward["t"]).all()  # the backward direction ends at t = 0
    params = run.params.set_index("module")["parameters"]
    assert params["recurrent"] == 2 * 3 * (8 * 8 + 8 * 8 + 16) and params["head"] == 2 * 8 * 8 + 8
    assert (run.connectivity.groupby(["t"]).size() == 6).all()


def test_clipping_and_finite_training_sets_run(tmp_path):
    run = compare("copy", 4, cells=("rnn",), steps=3, record_every=3, clip=0.5, train_size=16,
                  out=tmp_path / "copy", **SMALL)  # fmt: skip
    assert run.config["clip"] == 0.5 and run.config["train_size"] == 16
    assert set(run.metrics["readout"]) == {"sequence"}


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "never"
    cases = [
        (dict(cells=("rnn", "transformer")), r"cells must be a non-empty subset of \['rnn', 'gru', 'lstm'\]"),
        (dict(readouts=("sequence",)), r"task 'recall' takes readouts from \['last', 'max', 'mean'\]"),
        (
            dict(readouts={"lstm": ["last"]}, cells=("rnn",)),
            r"readouts are given for \['lstm'\], which are not among cells",
        ),
        (dict(readouts="last"), "got the string 'last'"),
        (dict(steps=0), "steps must be a positive int, got: 0"),
        (dict(record_every=-1), "record_every must be a positive int"),
        (dict(lr=0), "lr must be > 0"),
        (dict(clip=-1.0), "clip must be > 0 or None"),
        (dict(forget_bias="two"), r"forget_bias must be one of \('default', 'one', 'chrono'\)"),
        (dict(jacobian_samples=99), r"jacobian_samples must be an int in \[1, probe_size\]"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            compare("recall", 5, out=out, **(SMALL | options))
    with pytest.raises(ValueError, match="seq_len must be an int >= 2"):
        compare("recall", 1, out=out, **SMALL)
    assert not out.exists()


def test_an_existing_run_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "run"
    compare("adding", 4, cells=("rnn",), steps=1, out=out, **SMALL)
    with pytest.raises(FileExistsError, match="already holds a run; pass overwrite=True"):
        compare("adding", 4, cells=("rnn",), steps=1, out=out, **SMALL)
    run = compare("adding", 4, cells=("gru",), steps=1, out=out, overwrite=True, **SMALL)
    assert set(run.metrics["cell"]) == {"gru"}


def test_a_failing_run_says_so(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr("gradscope.experiments._record_metrics", broken)
    with pytest.raises(RuntimeError, match="simulated failure"):
        compare("adding", 4, cells=("rnn",), steps=2, out=tmp_path / "r", **SMALL)
    run = load_run(tmp_path / "r")
    assert run.status == "failed" and run.info["error"] == "RuntimeError: simulated failure"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forget_bias_schemes_set_the_effective_bias(cell):
    layer = SequenceModel(cell, 2, 6, 1, "last").rnn
    keep = slice(6, 12)
    init_forget_bias(layer, "one", 50, torch.Generator().manual_seed(0))
    torch.testing.assert_close((layer.bias_ih_l0 + layer.bias_hh_l0)[keep], torch.ones(6))
    init_forget_bias(layer, "chrono", 50, torch.Generator().manual_seed(0))
    effective = (layer.bias_ih_l0 + layer.bias_hh_l0)[keep]
    assert torch.all(effective >= 0) and torch.all(effective <= math.log(49) + 1e-6)
    # the forgetting time 1 / (1 - sigmoid(b)) of every unit lies in [2, T_max]: not doubled
    tau = 1 / (1 - torch.sigmoid(effective))
    assert torch.all(tau >= 2 - 1e-5) and torch.all(tau <= 50 + 1e-3)
    if cell == "lstm":
        torch.testing.assert_close((layer.bias_ih_l0 + layer.bias_hh_l0)[:6], -effective)
    both = SequenceModel(cell, 2, 6, 1, "last", bidirectional=True).rnn
    init_forget_bias(both, "one", 50, torch.Generator())
    torch.testing.assert_close((both.bias_ih_l0_reverse + both.bias_hh_l0_reverse)[keep], torch.ones(6))


def test_forget_bias_leaves_the_rnn_and_the_default_alone():
    rnn = nn.RNN(2, 3)
    before = rnn.bias_ih_l0.detach().clone()
    init_forget_bias(rnn, "chrono", 10, torch.Generator())
    assert torch.equal(rnn.bias_ih_l0.detach(), before)
    lstm = nn.LSTM(2, 3)
    state = {k: v.clone() for k, v in lstm.state_dict().items()}
    init_forget_bias(lstm, "default", 10, torch.Generator())
    assert all(torch.equal(v, state[k]) for k, v in lstm.state_dict().items())


def test_readouts():
    x = torch.randn(2, 5, 3)
    for readout, shape in [("last", (2, 4)), ("max", (2, 4)), ("mean", (2, 4)), ("sequence", (2, 5, 4))]:
        model = SequenceModel("gru", 3, 6, 4, readout)
        assert model(x).shape == shape
    model = SequenceModel("lstm", 3, 6, 4, "max")
    out, _ = model.rnn(x)
    torch.testing.assert_close(model(x), model.head(out.max(dim=1).values))
    with pytest.raises(ValueError, match="unknown readout 'attention'"):
        SequenceModel("gru", 3, 6, 4, "attention")


def test_the_demo_shows_the_seed_story(tmp_path):
    """The demo's own configuration, run in full: every claim it prints must hold."""
    run = compare(**DEMO, seed=0, out=tmp_path / "demo")
    claims = _story(run)
    assert len(claims) == 3
    for holds, claim in claims:
        assert holds, claim
