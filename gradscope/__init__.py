"""gradscope: see, step by step, how gradients flow back through RNN, GRU and LSTM layers."""

from gradscope import analysis, experiments, tasks
from gradscope.layers import GRU, LSTM, RNN
from gradscope.recording import Recorder, instrument, record
from gradscope.storage import Run, load_run, load_runs
from gradscope.trace import LayerSummary, LayerTrace, Trace

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "LayerSummary",
    "LayerTrace",
    "Recorder",
    "Run",
    "Trace",
    "__version__",
    "analysis",
    "experiments",
    "instrument",
    "load_run",
    "load_runs",
    "record",
    "tasks",
]
