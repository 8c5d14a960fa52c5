"""The one place where aop starts or joins Ray, and checks a request against the cluster.

Every command and library function that needs Ray (``aop search``, ``resume``, ``predict``,
``segment``, ``classify``, ``cluster``) calls :func:`connect`, and nothing else in aop calls
``ray.init``, so the token handling and the one-line errors below hold for all of them.

:func:`connect` starts a local Ray or joins an existing cluster. Clusters started with
``ray start`` use token authentication; Ray looks for the token in ``RAY_AUTH_TOKEN``, the file
named by ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, but sends it only when
``RAY_AUTH_MODE=token`` is set. When a token is available and ``RAY_AUTH_MODE`` is not set,
:func:`connect` switches token mode on for this process (and the workers it starts): a cluster
that asks for a token gets it from the first request, one without authentication ignores it.
It then probes the cluster's GCS (a TCP connect, then one request), so that an address where
nothing listens, a missing or wrong token, or a cluster that refuses the connection is one
:class:`~aop.errors.AopError` line within seconds that names the address and says what to set,
instead of Ray's 20 s of retries, its log lines and a traceback.

:func:`check_resources` refuses a per-trial request that no node of the cluster can ever hold
(nor any node type the autoscaler may add, read from the cluster launcher's
``~/ray_bootstrap_config.yaml`` on the head node or a given launcher file), so that a study does
not hang with every trial pending. :func:`node_name` says where a task ran.

Example
-------
>>> from aop.ray_cluster import check_resources, connect
>>> connect("10.0.0.5:6379")                              # doctest: +SKIP
>>> check_resources({"CPU": 1, "GPU": 0.5}, concurrency=4)  # doctest: +SKIP
4
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import re
import socket
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

from aop.errors import AopError

__all__ = [
    "TOKEN_HINT",
    "check_address",
    "check_resources",
    "connect",
    "largest_nodes",
    "node_types_from_launcher",
    "node_name",
    "parse_address",
]

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
TOKEN_HINT = (
    "set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it, or "
    "put it in ~/.ray/auth_token (print it on the head node with `ray get-auth-token`)"
)
_RESOURCE_NAMES = {"CPU": "CPUs", "GPU": "GPUs", "memory": "bytes of memory"}


_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def _valid_host(host: str) -> bool:
    """An IP address, or a host name of DNS labels (letters, digits, ``-``, ``_``)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``ray://host:port``) as ``(host, port)``.

    The host must be an IP address (IPv6 in brackets) or a host name, and the port a number in
    1..65535; anything else is one :class:`~aop.errors.AopError` line naming the address.

    >>> parse_address("ray://10.0.0.5:10001")
    ('10.0.0.5', 10001)
    >>> parse_address("[::1]:6379")
    ('::1', 6379)
    """
    text = address.removeprefix("ray://").strip().rstrip("/")
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not _valid_host(host):
        raise AopError(
            f"Ray address {address!r}: expected HOST:PORT (the head's GCS port, 6379 by default), "
            "ray://HOST:PORT (Ray Client) or 'auto'"
        )
    return host, int(port)


def check_address(address: str | None) -> None:
    """Refuse a malformed Ray address before any work (``None`` and ``auto`` are fine).

    :func:`connect` checks it again when it joins; a caller that does expensive work first (a
    model to load) calls this at its start.
    """
    if address and address != "auto":
        parse_address(address)


def _reachable(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _check_token_text(text: str, source: str) -> None:
    """A token travels as a gRPC header: one line of printable ASCII (else gRPC aborts)."""
    token = text.strip()
    if not token or not all(33 <= ord(c) < 127 for c in token):
        raise AopError(
            f"{source}: not an authentication token (expected one line of printable "
            "characters; `ray get-auth-token` on the head node prints the cluster's token)"
        )


def _token_available() -> bool:
    from ray._raylet import AuthenticationTokenLoader

    if os.environ.get("RAY_AUTH_TOKEN"):
        _check_token_text(os.environ["RAY_AUTH_TOKEN"], "RAY_AUTH_TOKEN")
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        named = os.environ["RAY_AUTH_TOKEN_PATH"]
        path = Path(named).expanduser()
        if not path.is_file() or not path.read_text(errors="replace").strip():
            raise AopError(
                f"RAY_AUTH_TOKEN_PATH={named}: the token file is missing or empty (copy the "
                "cluster's token there; `ray get-auth-token` on the head node prints it)"
            )
        _check_token_text(path.read_text(errors="replace"), f"RAY_AUTH_TOKEN_PATH={named}")
    return bool(AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True))


def _enable_token_mode() -> None:
    """Send the token from now on (this process and the processes it starts)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to the process's stderr (file descriptor 2) to /dev/null."""
    if sys.stderr is not None:  # None when the process started without a stderr
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _probe_gcs(gcs_address: str) -> Exception | None:
    """One GCS request with the current auth settings; the exception, or None when it worked.

    Ray's C++ client logs a refused request to stderr itself ("InvalidAuthToken ..."); the caller
    reports the exception in one line of its own, so that log is silenced.
    """
    from ray._raylet import GcsClient

    with _native_stderr_silenced():
        try:
            client = GcsClient(address=gcs_address)
            client.internal_kv_get(b"__aop_probe__", None, timeout=5)
        except Exception as exc:  # noqa: BLE001  (classified by the caller)
            return exc
    return None


def _is_auth_error(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}"
    return "Authentication" in text or "InvalidAuthToken" in text or "Unauthenticated" in text


def _resolve_auto() -> str:
    from ray._private import services

    try:
        found = services.canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise AopError(
            "Ray address auto: no Ray cluster runs on this machine (start one with "
            "`ray start --head`, or give HOST:PORT of the head node)"
        )
    return str(found)


def _join_gcs(address: str, timeout_s: float) -> str:
    """Check reachability and authentication of a GCS address; switch token mode on if needed."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # RAY_AUTH_MODE and the token as the environment says now
    AuthenticationTokenLoader.instance().reset_cache()
    if address == "auto":
        address = _resolve_auto()
    host, port = parse_address(address)
    if not _reachable(host, port, timeout_s):
        raise AopError(
            f"Ray address {address}: no Ray cluster answers at {host}:{port} (start one with "
            "`ray start --head --port PORT`, or check the host, port and firewall)"
        )
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        _token_available()  # a malformed token is one line here, not a gRPC abort
    error = _probe_gcs(address)  # without a token first (the probe's own log is silenced)
    if error is not None and _is_auth_error(error) and "RAY_AUTH_MODE" not in os.environ:
        # the cluster asks for a token: send the one found where Ray keeps it from now on. A
        # cluster without authentication never gets token mode, whose workers would expect one
        if not _token_available():
            raise AopError(
                f"Ray address {address}: the Ray cluster requires an authentication token and "
                f"none was found: {TOKEN_HINT}"
            )
        _enable_token_mode()
        error = _probe_gcs(address)
    if error is not None:
        if _is_auth_error(error):
            raise AopError(
                f"Ray address {address}: the Ray cluster rejected the authentication token: "
                f"{TOKEN_HINT}"
            )
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise AopError(f"Ray address {address}: cannot join the Ray cluster: {first[:300]}")
    return address


def connect(
    address: str | None,
    *,
    num_cpus: int | None = None,
    timeout_s: float = 3.0,
) -> None:
    """Start a local Ray (``address=None``) or join an existing cluster.

    Parameters
    ----------
    address : str or None
        ``HOST:PORT`` of a head node started with ``ray start --head`` (GCS port), ``auto`` (the
        cluster running on this machine), or ``ray://HOST:PORT`` (Ray Client). ``None`` starts a
        local Ray.
    num_cpus : int, optional
        CPUs of a local Ray (ignored when joining a cluster).
    timeout_s : float
        How long to wait for the head's port to accept a connection.

    Raises
    ------
    AopError
        Nothing listens at the address, the cluster wants a token that is missing or wrong, or
        it refuses the connection (one line naming the address and saying what to set).

    Examples
    --------
    >>> connect(None, num_cpus=2)          # doctest: +SKIP
    >>> connect("10.0.0.5:6379")           # token from ~/.ray/auth_token  # doctest: +SKIP
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not address:
        # "local": a new Ray, never a cluster that happens to run on this machine
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        return
    if address.startswith("ray://"):
        host, port = parse_address(address)
        if not _reachable(host, port, timeout_s):
            raise AopError(
                f"Ray address {address}: no Ray Client server answers at {host}:{port} (start "
                "the head with `ray start --head --ray-client-server-port PORT`, or forward the "
                "port)"
            )
        if "RAY_AUTH_MODE" not in os.environ and _token_available():
            _enable_token_mode()
        target = address
    else:
        target = _join_gcs(address, timeout_s)
    from ray.exceptions import RayError  # AuthenticationError, RaySystemError

    # a ConnectionError is an OSError: raised on, the CLI would report it as a disk error
    try:
        ray.init(address=target, log_to_driver=False)
    except (ConnectionError, RuntimeError, RayError) as exc:
        cause = exc.__cause__ or exc
        if _is_auth_error(exc) or _is_auth_error(cause):
            hint = f": {TOKEN_HINT}"
        else:
            text = str(cause).strip().splitlines()
            hint = f": {type(cause).__name__}: {text[0][:300]}" if text else ""
        raise AopError(f"Ray address {address}: cannot join the Ray cluster{hint}") from None


def node_name() -> str:
    """``hostname/node-id-prefix`` of the Ray node running the caller, for the records of where a
    trial or a volume task ran; ``hostname/local`` outside Ray (without starting one, which
    ``ray.get_runtime_context`` would do).

    >>> node_name().endswith("/local")
    True
    """
    import ray

    node = ray.get_runtime_context().get_node_id()[:8] if ray.is_initialized() else "local"
    return f"{socket.gethostname()}/{node}"


# ------------------------------------------------------------------------------------------------
# Resources
# ------------------------------------------------------------------------------------------------


def node_types_from_launcher(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """The node types a cluster launcher file declares: ``{type: resources}``.

    Types whose ``resources`` are empty (detected from the instance type when the node starts)
    are left out: their size is not known before they run.
    """
    from aop.config import read_yaml

    path = Path(path).expanduser()
    data = read_yaml(path) or {}
    types = data.get("available_node_types") if isinstance(data, dict) else None
    if not isinstance(types, dict):
        raise AopError(f"{path}: available_node_types: missing (not a Ray cluster launcher file)")
    out: dict[str, dict[str, float]] = {}
    for name, spec in types.items():
        resources = (spec or {}).get("resources") or {}
        if resources and (spec or {}).get("max_workers", 1) != 0:
            out[str(name)] = {str(k): float(v) for k, v in resources.items()}
    return out


def largest_nodes() -> list[dict[str, float]]:
    """The total resources of every alive node of the connected cluster."""
    import ray

    return [
        {k: float(v) for k, v in node.get("Resources", {}).items()}
        for node in ray.nodes()
        if node.get("Alive")
    ]


def _describe(name: str, amount: float) -> str:
    value = f"{amount:g}"
    return f"{value} {_RESOURCE_NAMES.get(name, repr(name))}"


def check_resources(
    per_trial: Mapping[str, float],
    concurrency: int,
    *,
    bundle: Mapping[str, float] | None = None,
    node_types: Mapping[str, Mapping[str, float]] | None = None,
    what: str = "a trial",
) -> int:
    """Refuse, before any trial, a request that the cluster can never satisfy.

    Parameters
    ----------
    per_trial : mapping
        What one trial reserves in all, e.g. ``{"CPU": 2, "GPU": 0.5}`` (zeros are ignored).
    concurrency : int
        Trials the study wants to run at once.
    bundle : mapping, optional
        The largest part of the request that must fit on one node (a placement-group bundle);
        default ``per_trial``.
    node_types : mapping, optional
        Node types the autoscaler may add, ``{type: resources}``. Default: those of
        ``~/ray_bootstrap_config.yaml`` (the launcher's copy of its file on the head node), when
        that file exists.
    what : str
        The requester, for the message.

    Returns
    -------
    int
        How many such trials the cluster's current nodes hold at once (at least 1); a warning
        says so when it is below ``concurrency``.

    Raises
    ------
    AopError
        No node, current or declared, holds ``bundle``, or the cluster in all cannot hold one
        ``per_trial``.
    """
    need = {k: float(v) for k, v in per_trial.items() if v}
    one = {k: float(v) for k, v in (bundle or per_trial).items() if v}
    nodes = largest_nodes()
    if node_types is None and BOOTSTRAP_CONFIG.expanduser().is_file():
        node_types = node_types_from_launcher(BOOTSTRAP_CONFIG)
    declared = [dict(r) for r in (node_types or {}).values()]
    candidates = nodes + declared

    def fits(resources: Mapping[str, float]) -> bool:
        return all(resources.get(k, 0.0) + 1e-9 >= v for k, v in one.items())

    if one and not any(fits(r) for r in candidates):
        lacking = next(
            k for k, v in one.items() if not any(r.get(k, 0.0) + 1e-9 >= v for r in candidates)
        )
        best = max((r.get(lacking, 0.0) for r in candidates), default=0.0)
        scope = "no node of the cluster"
        if declared:
            scope += " nor of its autoscaler's node types"
        raise AopError(
            f"{what} asks for {_describe(lacking, one[lacking])} on one node, but {scope} has "
            f"that many (largest: {best:g}); ask for less or add such a node"
        )
    total = {k: sum(r.get(k, 0.0) for r in nodes) for k in need}
    if not declared:
        for key, value in need.items():
            if total[key] + 1e-9 < value:
                raise AopError(
                    f"{what} asks for {_describe(key, value)} in all, but the cluster has "
                    f"{total[key]:g}; ask for less or add nodes"
                )
    at_once = min(
        (math.floor(total[k] / v + 1e-9) for k, v in need.items()), default=concurrency
    )
    at_once = max(1, at_once)
    if at_once < concurrency:
        warnings.warn(
            f"search.concurrency is {concurrency}, but the cluster's nodes hold {at_once} such "
            "trial(s) at once; the others wait",
            stacklevel=2,
        )
    return at_once
