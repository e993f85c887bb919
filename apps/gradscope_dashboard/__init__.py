"""The gradscope dashboard: compare how RNN, GRU and LSTM forget, in the browser.

``create_app(runs_root)`` builds the Dash app over the run directories under ``runs_root``;
``gradscope dashboard RUNS_ROOT`` serves it.
"""

from gradscope_dashboard.app import create_app

__all__ = ["create_app"]
