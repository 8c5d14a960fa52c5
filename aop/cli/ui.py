"""``aop ui``: the MLflow UI on a project's store, opened on a study's trials."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aop.cli.app import app, console
from aop.errors import AopError


@app.command()
def ui(
    path: Annotated[
        Path, typer.Argument(help="A study folder (or a project folder with mlflow.db).")
    ] = Path("."),
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (default: a free one).")] = 0,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the address in a web browser.")
    ] = False,
) -> None:
    """Serve the MLflow UI of a study's store and print the address of each study's trials
    (the given study first)."""
    from aop.tracking.ui import serve_store, store_path, study_addresses

    if not 0 <= port < 65536:
        raise AopError(f"--port: expected 0-65535, got {port}")
    folder = path.resolve()
    only = None
    if (folder / "study.yaml").is_file():
        from aop.tuning.study import load_study_experiment

        tracking_uri, only = load_study_experiment(folder).tracking_uri, str(folder)
    elif (folder / "mlflow.db").is_file():
        tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    else:
        raise AopError(f"{path}: neither a study folder (study.yaml) nor a project (mlflow.db)")
    store_path(tracking_uri)
    process, url = serve_store(tracking_uri, port=port)
    try:
        found = study_addresses(tracking_uri, url)  # every study of the store, the given first
        studies = sorted(found.items(), key=lambda item: item[0] != only)
        addresses = [address for _, address in studies] or [f"{url}/#/"]
        console.print(f"MLflow UI of {tracking_uri}:", highlight=False, soft_wrap=True)
        for study, address in studies:
            console.print(f"  {study}: {address}", highlight=False, soft_wrap=True)
        console.print("(Ctrl-C stops the server)", highlight=False)
        if open_browser:
            import webbrowser

            webbrowser.open(addresses[0])
        process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        process.terminate()
