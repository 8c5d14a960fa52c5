"""``aop annotate``: the assisted class-annotation page (see :mod:`aop.annotation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aop.cli.app import FeaturesOption, app, console, print_line
from aop.errors import AopError


@app.command()
def annotate(
    data: Annotated[
        Path, typer.Argument(help="Data set; its labels/ hold the instances (segmented, or truth).")
    ],
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class names, keys 1..9 in this order (added to "
                     "dataset.yaml)."),
    ] = None,
    annotator: Annotated[str, typer.Option(help="Name written into every annotation row.")] = "",
    order: Annotated[
        str,
        typer.Option(help="sequential, or uncertain: most uncertain first by label spreading."),
    ] = "sequential",
    respread_every: Annotated[
        int, typer.Option(help="Spread labels again after N annotations.")
    ] = 10,
    suggest: Annotated[
        bool, typer.Option("--suggest/--no-suggest", help="Show label-spreading suggestions.")
    ] = True,
    features: FeaturesOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; any but loopback requires a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one).")] = 8765,
    token: Annotated[
        str | None, typer.Option(help="Token to require (default: a random one off loopback).")
    ] = None,
) -> None:
    """Annotate instance classes in the browser, one instance at a time, by keyboard."""
    from aop.annotation import AnnotationServer, AnnotationSession
    from aop.annotation.server import check_token

    if not 0 <= port <= 65535:
        raise AopError(f"--port: expected 0..65535, got {port}")
    check_token(host, token)  # before the session writes new classes into dataset.yaml
    names = [c for c in classes.split(",")] if classes is not None else None
    session = AnnotationSession(
        data, classes=names, annotator=annotator, order=order, respread_every=respread_every,
        suggest=suggest, features=features, progress=print_line,
    )  # fmt: skip
    try:
        server = AnnotationServer(session, host=host, port=port, token=token)
    except OSError as exc:
        raise AopError(f"--host {host} --port {port}: cannot listen ({exc.strerror})") from exc
    state = session.state()
    console.print(
        f"{state['total']} instances, {state['done']} annotated; classes "
        + ", ".join(f"{c['key']}={c['name']}" for c in state["classes"])
        + ", x=bad_segmentation",
        highlight=False,
    )
    console.print(f"open {server.url}", highlight=False, soft_wrap=True)
    console.file.flush()
    try:
        server.run()
    finally:
        session.close()
