"""``aop cluster``: join a Ray cluster the way a study would, and show what it offers."""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from aop.cli.app import app, at_least_one, console, print_line
from aop.errors import AopError


@app.command("cluster")
def cluster_command(
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join: HOST:PORT, 'auto' or ray://HOST:PORT "
                     "(default: start a local Ray)."),
    ] = None,
    cpus: Annotated[float, typer.Option(help="CPUs one volume task of a trial reserves.")] = 1.0,
    gpu: Annotated[
        float, typer.Option(help="GPU fraction one volume task reserves (e.g. 0.5).")
    ] = 0.0,
    concurrency: Annotated[int, typer.Option(help="Trials at once.")] = 1,
) -> None:
    """Join the cluster (token auth as Ray keeps it), list its nodes, check a trial's request."""
    import ray
    from rich.table import Table

    from aop.ray_cluster import check_address, check_resources, connect

    if not cpus > 0:
        raise AopError(f"--cpus must be > 0 (a task reserves part of a CPU at least), got {cpus:g}")
    if not gpu >= 0:
        raise AopError(f"--gpu must be >= 0, got {gpu:g}")
    at_least_one("--concurrency", concurrency)
    check_address(address)
    joined = ray.is_initialized()
    connect(address)
    table = Table("node", "address", "CPUs", "GPUs", "other resources")
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        skip = {"CPU", "GPU", "memory", "object_store_memory"}
        other = {k: v for k, v in res.items() if k not in skip and not k.startswith("node:")}
        table.add_row(
            node["NodeID"][:8], str(node.get("NodeManagerAddress", "")), f"{res.get('CPU', 0):g}",
            f"{res.get('GPU', 0):g}", ", ".join(f"{k}={v:g}" for k, v in sorted(other.items())),
        )
    console.print(table)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        at_once = check_resources(
            {"CPU": cpus, "GPU": gpu}, concurrency, what="search.resources (one volume)"
        )
    for warning in caught:
        print_line(f"[yellow]warning:[/] {warning.message}")
    console.print(f"a trial with cpus={cpus:g}, gpu={gpu:g} fits; {at_once} run at once")
    if not joined:
        ray.shutdown()
