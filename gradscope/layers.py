"""RNN, GRU and LSTM layers: drop-in replacements for torch.nn's, unrolled over time so they can be recorded.

Each class subclasses its torch.nn counterpart, so constructor arguments, parameter names and shapes
(``weight_ih_l{k}[_reverse]``, ...), initialisation, ``state_dict`` and the forward signature are
torch's own; only ``forward`` is replaced by a loop over :mod:`gradscope.cells`. They add what torch
cannot do: ``RNN`` as torch, ``GRU(reset="before")`` and ``LSTM(cell_activation=, hidden_activation=)``.

Two paths compute a layer. The *fused* path calls torch's own kernel (oneDNN or the native loop on CPU,
cuDNN on GPU), one call per layer and direction; it exists for the options torch supports (tanh or relu
RNN, ``reset="after"`` GRU, tanh/tanh LSTM). The *unrolled* path is a Python loop over
:mod:`gradscope.cells`, for every option, and is the reference the fused path is tested against.
``path="auto"`` (the default) takes the fused path wherever it exists; see :attr:`RecurrentLayer.path`.
Recorded on the CPU (autograd on), ``"auto"`` runs those layers through gradscope's own sequence ops
instead (:mod:`gradscope.kernels`): they hand every value and gradient to the recording, and cost less
than recording through torch's ops (``benchmarks/RESULTS.md``); ``"fused"`` forces torch's.

Shapes: ``B`` batch, ``T`` steps, ``D`` input features, ``M`` hidden units, ``L`` layers,
``K`` directions (1 or 2).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradscope.cells import activation, gru_cell, input_projection, lstm_cell, rnn_cell
from gradscope.kernels import run_sequence
from gradscope.trace import ACTIVATION_RANGES

__all__ = ["GRU", "LSTM", "PATHS", "RNN", "RecurrentLayer"]

_DIRECTIONS = ("forward", "backward")
PATHS = ("auto", "fused", "unrolled")
State = tuple[Tensor, Tensor | None]
Step = Callable[..., tuple[Tensor, "Tensor | None", tuple[Tensor, ...]]]
"""``step(gi, h, c, w_hh, b_hh) -> (h_t, c_t, gates)``: one cell step in a uniform signature
(``c`` and ``c_t`` are None except for the LSTM; gates in torch's order)."""


def _rnn_step(gi, h, c, w_hh, b_hh, *, nonlinearity):  # type: ignore[no-untyped-def]
    return rnn_cell(gi, h, w_hh, b_hh, nonlinearity), None, ()


def _gru_step(gi, h, c, w_hh, b_hh, *, reset):  # type: ignore[no-untyped-def]
    h_new, gates = gru_cell(gi, h, w_hh, b_hh, reset)
    return h_new, None, gates


def _lstm_step(gi, h, c, w_hh, b_hh, *, cell_activation, hidden_activation):  # type: ignore[no-untyped-def]
    return lstm_cell(gi, h, c, w_hh, b_hh, cell_activation, hidden_activation)


class RecurrentLayer:
    """What the three gradscope layers share: the unrolled forward pass and the recording hook-in.

    Not used on its own; ``isinstance(m, RecurrentLayer)`` tells a gradscope layer.
    """

    cell: ClassVar[str]
    _torch_class: ClassVar[type[nn.RNNBase]]
    _gradscope_sink: Any = None  # set on the instance by gradscope.record while recording
    path: str = "auto"
    """Which path computes this layer: ``"auto"`` (fused where torch supports the options, recorded on the
    CPU through gradscope's own ops; else unrolled), ``"fused"`` (torch's op; an error where torch does not
    support the options) or ``"unrolled"``. Set it on an instance; ``gradscope.record(model, path=...)``
    overrides it for the recorded block."""

    # Attributes provided by torch.nn.RNNBase.
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool
    batch_first: bool
    dropout: float
    bidirectional: bool
    training: bool

    def step_function(self) -> Step:
        """This layer's cell as a :data:`Step` with its options (nonlinearity, reset, activations) fixed."""
        raise NotImplementedError

    def gate_ranges(self) -> dict[str, tuple[float, float] | None]:
        """The value range of each gate (for saturation statistics); None where unbounded."""
        raise NotImplementedError

    def fused_op(self) -> tuple[Callable[..., Any] | None, str]:
        """torch's fused sequence op for this layer's options (``torch.lstm``, ...), or None with the reason."""
        raise NotImplementedError

    def _fused(self, path: str | None) -> bool:
        """Whether the fused path computes this pass, for ``path`` (the record's) or else ``self.path``.

        ``"auto"`` takes it wherever torch has the kernel (``benchmarks/RESULTS-paths.md`` compares the paths).
        """
        path = self.path if path is None else path
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got: {path!r}")
        op, reason = self.fused_op()
        if path == "fused" and op is None:
            raise ValueError(f"path='fused' is not available for this {type(self).__name__}: {reason}")
        return op is not None and path != "unrolled"

    @classmethod
    def _options(cls, module: nn.Module) -> dict[str, Any]:
        """Constructor arguments beyond torch.nn.RNNBase's, read from ``module``."""
        return {}

    @classmethod
    def from_torch(cls, module: nn.RNNBase) -> Any:
        """A layer of this class that shares ``module``'s Parameter objects (no copy).

        Training either one trains both. ``module`` may be a torch.nn or a gradscope layer of the
        same kind; its train/eval mode is copied.
        """
        if not isinstance(module, cls._torch_class):
            raise TypeError(
                f"{cls.__name__}.from_torch expects a torch.nn.{cls._torch_class.__name__}, "
                f"got: {type(module).__name__}"
            )
        if module.proj_size:
            raise ValueError(
                f"proj_size={module.proj_size} is not supported by gradscope; use proj_size=0 followed "
                "by an nn.Linear on the outputs"
            )
        with warnings.catch_warnings():  # torch already warned about dropout on one layer, if it applies
            warnings.simplefilter("ignore", UserWarning)
            layer = cls(  # type: ignore[call-arg]
                module.input_size,
                module.hidden_size,
                num_layers=module.num_layers,
                bias=module.bias,
                batch_first=module.batch_first,
                dropout=module.dropout,
                bidirectional=module.bidirectional,
                device="meta",
                dtype=module.weight_ih_l0.dtype,
                **cls._options(module),
            )
        for name in module._flat_weights_names:
            setattr(layer, name, getattr(module, name))
        layer.train(module.training)
        return layer

    def _weights(self, layer: int, direction: str) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        suffix = f"l{layer}" + ("_reverse" if direction == "backward" else "")
        w_ih, w_hh = getattr(self, "weight_ih_" + suffix), getattr(self, "weight_hh_" + suffix)
        if not self.bias:
            return w_ih, w_hh, None, None
        return w_ih, w_hh, getattr(self, "bias_ih_" + suffix), getattr(self, "bias_hh_" + suffix)

    def _check_input(self, input: Any) -> tuple[Tensor, bool]:
        """Validate ``input`` and return it time-major ``[T, B, D]`` with whether it was batched."""
        if isinstance(input, PackedSequence):
            raise TypeError(
                "PackedSequence input is not supported by gradscope layers: unpack it with "
                "torch.nn.utils.rnn.pad_packed_sequence and pass the padded tensor (padding steps are "
                "then computed and recorded too; mask them in the loss)"
            )
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor, got: {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(
                "input must have 3 dimensions ([B, T, D] with batch_first, else [T, B, D]) or 2 "
                f"(unbatched [T, D]), got {input.dim()} with shape {tuple(input.shape)}"
            )
        if not input.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
        weight_dtype = self.weight_ih_l0.dtype  # type: ignore[attr-defined]
        if input.dtype != weight_dtype:
            raise ValueError(
                f"input dtype {input.dtype} does not match the layer's parameters ({weight_dtype}): "
                f"convert the input with .to({weight_dtype}) or the layer with .to({input.dtype})"
            )
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"input.shape[-1] must equal input_size={self.input_size}, got {input.shape[-1]} "
                f"(input shape {tuple(input.shape)})"
            )
        batched = input.dim() == 3
        x = input.transpose(0, 1) if batched and self.batch_first else input
        if not batched:
            x = x.unsqueeze(1)
        if x.shape[0] == 0:
            raise ValueError(f"input must have at least one time step, got shape {tuple(input.shape)}")
        return x, batched

    def _check_state(self, state: Any, what: str, x: Tensor, batched: bool) -> Tensor:
        count = self.num_layers * (2 if self.bidirectional else 1)
        expected = (count, x.shape[1], self.hidden_size) if batched else (count, self.hidden_size)
        if not isinstance(state, Tensor):
            raise TypeError(f"{what} must be a Tensor, got: {type(state).__name__}")
        if tuple(state.shape) != expected:
            layout = "[L*K, B, M]" if batched else "[L*K, M] for unbatched input"
            raise ValueError(f"{what} must have shape {expected} ({layout}), got {tuple(state.shape)}")
        if state.dtype != x.dtype:
            raise ValueError(f"{what} must have dtype {x.dtype} like the input, got {state.dtype}")
        return state if batched else state.unsqueeze(1)

    def _initial_state(self, hx: Any, x: Tensor, batched: bool) -> State:
        count = self.num_layers * (2 if self.bidirectional else 1)
        lstm = self.cell == "lstm"
        if hx is None:
            zeros = x.new_zeros(count, x.shape[1], self.hidden_size)
            return zeros, (zeros if lstm else None)
        if lstm:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"LSTM hx must be a tuple (h_0, c_0), got: {type(hx).__name__}")
            return (
                self._check_state(hx[0], "h_0", x, batched),
                self._check_state(hx[1], "c_0", x, batched),
            )
        return self._check_state(hx, "hx", x, batched), None

    def _run_fused(
        self, x: Tensor, layer: int, direction: str, h0: Tensor, c0: Tensor | None, record: Any, auto: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One layer in one direction through torch's op (one call; a backward direction on the reversed input).

        Recorded, torch's RNN and GRU on the CPU (a loop of autograd operations) run on the probed input
        and the recording hooks their graph (each step's state, or a small RNN's split input projection).
        With ``auto``, recorded on the CPU, :func:`~gradscope.kernels.run_sequence` runs instead: one
        autograd node that hands the recording every value and gradient, cheaper than hooking torch's loop
        and than the probe below, which costs about twice oneDNN's LSTM.
        Otherwise (oneDNN's LSTM, cuDNN, or a loop whose graph is not as expected) the op runs on
        ``[x_t, p_t]`` with ``p ≡ 0`` of width M and ``weight_ih`` extended by (a detached) ``W_hh``:
        outputs are unchanged and ``p``'s gradient is :math:`W_{hh}^T \\partial L / \\partial
        \\text{gates}_t`, from which the recording reassembles every per-step gradient. See
        :mod:`gradscope.recording`.
        """
        op, _ = self.fused_op()
        weights = self._weights(layer, direction)
        recording = record is not None and torch.is_grad_enabled()
        # not under autocast: they compute in the input's dtype
        if recording and auto and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
            relu = getattr(self, "nonlinearity", "tanh") == "relu"
            out, h_n, c_n = run_sequence(self.cell, x, h0, c0, weights, direction == "backward", record, relu)
            record.store(x, out, h0, c0, weights, self.step_function(), direction)
            return out, h_n, c_n
        result = None
        if recording and self.cell != "lstm" and x.device.type == "cpu":
            probed = record.probe_x(x)
            result = self._call(op, probed if direction == "forward" else probed.flip(0), h0, c0, weights)
            if not record.watch_steps(result[0], result[1], direction):
                result = None
        if result is None:
            run_x = x if direction == "forward" else x.flip(0)
            if recording:
                w_ih, w_hh, b_ih, b_hh = weights
                run_x = record.probe_input(run_x, self.hidden_size)
                result = self._call(op, run_x, h0, c0, (torch.cat([w_ih, w_hh.detach()], dim=1), w_hh, b_ih, b_hh))
                record.watch_outputs(*result)
            else:
                result = self._call(op, run_x, h0, c0, weights)
        out, h_n, c_n = result
        out = out if direction == "forward" else out.flip(0)
        if record is not None:
            record.store(x, out, h0, c0, weights, self.step_function(), direction)
        return out, h_n[0], None if c_n is None else c_n[0]

    @staticmethod
    def _call(
        op: Callable[..., Any],
        x: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        weights: tuple[Tensor, Tensor, Tensor | None, Tensor | None],
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """torch's op on ``x`` ``[T, B, D]``, one layer and direction: ``(out, h_n, c_n)``, states ``[1, B, M]``."""
        w_ih, w_hh, b_ih, b_hh = weights
        params = [w_ih, w_hh] if b_ih is None else [w_ih, w_hh, b_ih, b_hh]
        hx = (h0[None], c0[None]) if c0 is not None else h0[None]
        grad = torch.is_grad_enabled()  # cuDNN's backward needs train=True; dropout is 0 either way
        with warnings.catch_warnings():  # cuDNN: these weights are not one flat buffer; it copies them
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous")
            result = op(x, hx, params, b_ih is not None, 1, 0.0, grad, False, False)
        return result[0], result[1], result[2] if c0 is not None else None

    def _run_direction(
        self, x: Tensor, layer: int, direction: str, h: Tensor, c: Tensor | None, record: Any
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """One layer in one direction over the whole sequence, unrolled: ``[T, B, D]`` → ``[T, B, M]``."""
        weights = self._weights(layer, direction)
        w_ih, w_hh, b_ih, b_hh = weights
        step = self.step_function()
        steps = x.shape[0]
        h0, c0 = h, c
        watch = None
        if record is not None:
            x = record.probe_x(x)
            watch = record.state_hooks(steps, direction, c is not None)
        if self.cell != "gru" and b_ih is not None:  # b_hh only adds to gi: one add for all steps
            b_ih, b_hh = b_ih + b_hh, None
        # unbind once: slicing a tensor that requires grad step by step costs O(T^2) in backward
        gi = input_projection(x, w_ih, b_ih).unbind(0)
        hs: list[Tensor] = [x] * steps  # placeholders, every index is overwritten
        order = range(steps) if direction == "forward" else range(steps - 1, -1, -1)
        for t in order:
            h, c, _ = step(gi[t], h, c, w_hh, b_hh)
            if watch is not None:
                watch(t, h, c)
            hs[t] = h
        out = torch.stack(hs)
        if record is not None:
            record.store(x, out, h0, c0, weights, step, direction)
        return out, h, c

    def forward(self, input: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        """Same inputs and outputs as the torch.nn module.

        Args:
            input: ``[B, T, D]`` if batch_first else ``[T, B, D]``; or unbatched ``[T, D]``.
            hx: initial state ``[L*K, B, M]`` (``[L*K, M]`` unbatched); for the LSTM a tuple
                ``(h_0, c_0)``. Zeros when None.

        Returns:
            ``(output, h_n)``, or ``(output, (h_n, c_n))`` for the LSTM: output ``[B, T, K*M]`` if
            batch_first else ``[T, B, K*M]`` (``[T, K*M]`` unbatched), final states like ``hx``.
        """
        x, batched = self._check_input(input)
        h0, c0 = self._initial_state(hx, x, batched)
        sink = self._gradscope_sink
        if sink is not None and x.shape[1] == 0:
            raise ValueError(
                f"recording needs a batch of at least one sequence, got input of shape {tuple(input.shape)}"
            )
        if sink is None and self._fused(None):
            return self._torch_class.forward(self, input, hx)  # type: ignore[arg-type]
        path, new_record = sink(self) if sink is not None else (None, None)
        auto = (self.path if path is None else path) == "auto"
        run = partial(self._run_fused, auto=auto) if self._fused(path) else self._run_direction
        directions = _DIRECTIONS[: 2 if self.bidirectional else 1]
        h_n: list[Tensor] = []
        c_n: list[Tensor | None] = []
        for layer in range(self.num_layers):
            outputs = []
            for d, direction in enumerate(directions):
                i = layer * len(directions) + d
                record = new_record(layer, direction) if new_record is not None else None
                c_init = c0[i] if c0 is not None else None
                out, h_last, c_last = run(x, layer, direction, h0[i], c_init, record)
                outputs.append(out)
                h_n.append(h_last)
                c_n.append(c_last)
            x = torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        h_final = torch.stack(h_n)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if not batched:
            x, h_final = x.squeeze(1), h_final.squeeze(1)
        if self.cell != "lstm":
            return x, h_final
        c_final = torch.stack(c_n)  # type: ignore[arg-type]
        return x, (h_final, c_final if batched else c_final.squeeze(1))


class RNN(RecurrentLayer, nn.RNN):
    r"""Elman RNN, a drop-in for :class:`torch.nn.RNN` that can be recorded.

    .. math::
        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \quad \phi = \tanh \text{ or relu}

    Same arguments as torch.nn.RNN: ``RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh",
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)``.
    """

    cell = "rnn"
    _torch_class = nn.RNN
    nonlinearity: str

    @classmethod
    def _options(cls, module: nn.Module) -> dict[str, Any]:
        return {"nonlinearity": module.nonlinearity}

    def gate_ranges(self) -> dict[str, tuple[float, float] | None]:
        return {}

    def step_function(self) -> Step:
        return partial(_rnn_step, nonlinearity=self.nonlinearity)

    def fused_op(self) -> tuple[Callable[..., Any] | None, str]:
        return (torch.rnn_tanh if self.nonlinearity == "tanh" else torch.rnn_relu), ""


class GRU(RecurrentLayer, nn.GRU):
    r"""GRU, a drop-in for :class:`torch.nn.GRU` that can be recorded, with the reset gate after or before.

    .. math::
        r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t &= \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn}))
            \quad \text{reset="after": torch, cuDNN, Keras reset\_after=True} \\
        n_t &= \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t \odot h_{t-1}) + b_{hn})
            \quad \text{reset="before": Cho et al. 2014, the seed notes, Keras reset\_after=False} \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Both variants have the same parameters (torch's layout, gate blocks r, z, n). Note that the seed
    notes write the update the other way round, :math:`h_t = (1 - z_t) \odot h_{t-1} + z_t \odot
    \tilde h_t`: the seed's :math:`z` is torch's :math:`1 - z`. Here, as in torch, :math:`z_t` is the
    fraction of the old state kept.

    Arguments: those of torch.nn.GRU, plus the keyword ``reset="after" | "before"``.
    """

    cell = "gru"
    _torch_class = nn.GRU
    reset = "after"

    def __init__(self, *args: Any, reset: str = "after", **kwargs: Any) -> None:
        if reset not in ("after", "before"):
            raise ValueError(f"reset must be 'after' or 'before', got: {reset!r}")
        super().__init__(*args, **kwargs)
        self.reset = reset

    @classmethod
    def _options(cls, module: nn.Module) -> dict[str, Any]:
        return {"reset": getattr(module, "reset", "after")}

    def gate_ranges(self) -> dict[str, tuple[float, float] | None]:
        return {"reset": (0.0, 1.0), "update": (0.0, 1.0), "candidate": (-1.0, 1.0)}

    def step_function(self) -> Step:
        return partial(_gru_step, reset=self.reset)

    def fused_op(self) -> tuple[Callable[..., Any] | None, str]:
        if self.reset != "after":
            return None, f"torch's GRU applies the reset gate after the matmul, this one has reset={self.reset!r}"
        return torch.gru, ""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s if self.reset == "after" else f"{s}, reset={self.reset!r}"


class LSTM(RecurrentLayer, nn.LSTM):
    r"""LSTM, a drop-in for :class:`torch.nn.LSTM` that can be recorded, with the seed's two activations.

    .. math::
        i_t &= \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t &= \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t &= f_c(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t &= \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t &= o_t \odot f_h(c_t)

    Arguments: those of torch.nn.LSTM, plus the keywords ``cell_activation`` (:math:`f_c`) and
    ``hidden_activation`` (:math:`f_h`), each one of ``tanh, sigmoid, relu, identity, softsign,
    hardtanh``, chosen independently (Keras cannot). ``tanh``/``tanh`` is torch's LSTM. ``proj_size``
    must be 0: put an ``nn.Linear`` after the layer instead.
    """

    cell = "lstm"
    _torch_class = nn.LSTM
    cell_activation = "tanh"
    hidden_activation = "tanh"

    def __init__(
        self,
        *args: Any,
        cell_activation: str = "tanh",
        hidden_activation: str = "tanh",
        **kwargs: Any,
    ) -> None:
        activation(cell_activation, what="cell_activation")
        activation(hidden_activation, what="hidden_activation")
        proj_size = kwargs.get("proj_size", args[7] if len(args) > 7 else 0)
        if proj_size:
            raise ValueError(
                f"proj_size={proj_size} is not supported by gradscope; use proj_size=0 followed by an "
                "nn.Linear on the outputs"
            )
        super().__init__(*args, **kwargs)
        self.cell_activation = cell_activation
        self.hidden_activation = hidden_activation

    @classmethod
    def _options(cls, module: nn.Module) -> dict[str, Any]:
        return {
            "cell_activation": getattr(module, "cell_activation", "tanh"),
            "hidden_activation": getattr(module, "hidden_activation", "tanh"),
        }

    def gate_ranges(self) -> dict[str, tuple[float, float] | None]:
        sigmoid = (0.0, 1.0)
        cell = ACTIVATION_RANGES[self.cell_activation]
        return {"input": sigmoid, "forget": sigmoid, "cell": cell, "output": sigmoid}

    def step_function(self) -> Step:
        return partial(_lstm_step, cell_activation=self.cell_activation, hidden_activation=self.hidden_activation)

    def fused_op(self) -> tuple[Callable[..., Any] | None, str]:
        if (self.cell_activation, self.hidden_activation) != ("tanh", "tanh"):
            return None, (
                "torch's LSTM has tanh/tanh activations, this one has "
                f"cell_activation={self.cell_activation!r}, hidden_activation={self.hidden_activation!r}"
            )
        return torch.lstm, ""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.cell_activation != "tanh" or self.hidden_activation != "tanh":
            s += f", cell_activation={self.cell_activation!r}, hidden_activation={self.hidden_activation!r}"
        return s
