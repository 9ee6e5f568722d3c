"""optuna-dashboard served from the driver for a search's length (``--optuna-dashboard``): the study's trials,
their curves and a front search's Pareto front, live, beside Ray's dashboard (which shows actors and jobs, not
trial metrics). It reads the results folder's ``optuna.db`` as the search writes it."""

from __future__ import annotations

import threading
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from tuner.search.cluster import dashboard_port
from tuner.search.study import open_storage

PREFERRED_PORT = 8080  # optuna-dashboard's own default


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per request would drown the search's own output
        pass


class LiveDashboard:
    """optuna-dashboard on ``host`` (a free port, 8080 when free) in a daemon thread of this process."""

    def __init__(self, results_dir: Path, host: str):
        from optuna_dashboard import wsgi  # the [live] extra; tuner.pipeline.check_inputs refuses a run without it

        port = dashboard_port(host, PREFERRED_PORT)
        self._server = make_server(host, port, wsgi(open_storage(results_dir)), handler_class=_Quiet)
        self.url = f"http://{host}:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="optuna-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
