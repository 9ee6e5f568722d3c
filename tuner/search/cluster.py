"""The Ray a search runs on: a local one of our own, every port bound to loopback, or a cluster joined at
``--address``; its dashboard, and keeping it up after the search (``--keep-dashboard``)."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from tuner.config import usable_cpus
from tuner.errors import TunerError, first_line

log = logging.getLogger(__name__)

AUTH_TOKEN = Path.home() / ".ray" / "auth_token"


@dataclass(frozen=True)
class ClusterInfo:
    dashboard_url: str
    cpus_per_node: int
    gpus_per_node: float
    token_file: Path | None


def dashboard_port(host: str, preferred: int = 8265) -> int:
    """Ray's usual dashboard port when free, else one the OS picks: a second search on the same machine still
    gets a dashboard instead of none."""
    for port in (preferred, 0):
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
            try:
                probe.bind((host if host not in ("", "0.0.0.0") else "127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    return preferred


def start_ray(address: str | None, dashboard_host: str, quiet: bool) -> ClusterInfo:
    """Start a local Ray (every port on ``dashboard_host``'s side bound to loopback) or join ``address``."""
    if ray.is_initialized():
        ray.shutdown()
    # --quiet: errors only, which silences the token-authentication notice Ray logs when it starts
    missing = dashboard_missing()
    if missing:
        log.warning("Ray's dashboard is off: ray is installed without its [default] extras (%s)", missing)
    kwargs = dict(include_dashboard=not missing, dashboard_host=dashboard_host, log_to_driver=not quiet,
                  logging_level=logging.ERROR if quiet else logging.WARNING, configure_logging=True)
    if address:
        check_reachable(address)
        try:
            context = ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise TunerError(f"--address {address}: cannot join a Ray cluster ({first_line(exc)})") from None
    else:
        # "local": a new Ray of our own, even when a cluster started by `ray start` is running here
        context = ray.init(address="local", num_cpus=usable_cpus(), num_gpus=torch.cuda.device_count(),
                           _node_ip_address="127.0.0.1",
                           dashboard_port=dashboard_port(dashboard_host), **kwargs)
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    url = context.dashboard_url or ""
    return ClusterInfo(f"http://{url}" if url and "://" not in url else url,
                       max(int(n.get("CPU", 0)) for n in nodes), max(n.get("GPU", 0.0) for n in nodes),
                       AUTH_TOKEN if AUTH_TOKEN.is_file() else None)


def dashboard_missing() -> str | None:
    """Why Ray's dashboard cannot start here (ray without its [default] extras, as in the offline GPU bundle),
    or None. Ray's own check; tests/test_search_method.py pins that it exists."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return str(error) if error else None


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` address (or ``ray://host:port``) nothing answers at, before ``ray.init`` retries it
    for minutes; ``auto`` and other forms are left to Ray."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise TunerError(f"--address {address}: nothing answers there ({exc.strerror or type(exc).__name__}); "
                         "give the head node's GCS address (host:port, as `ray start --head` prints it) or auto") from None


def stop_ray() -> None:
    ray.shutdown()


def wait_for_interrupt(echo) -> None:
    """Keep Ray (and its dashboard) up until Ctrl-C, so finished trials can be browsed."""
    echo("Ray dashboard kept up; press Ctrl-C to stop it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        ray.shutdown()
