"""Screenshots of a study in MLflow's UI: the runs table and a parallel-coordinates chart.

    python scripts/mlflow_screenshots.py STUDY_DIR --out docs/images/ [--metric ipq]

Starts ``mlflow server`` on 127.0.0.1 (a free port) over the study's store, as ``aop ui`` does
(:func:`aop.tracking.ui.serve_store`), opens it in Debian's Chromium through Playwright and saves

- ``OUT/mlflow_runs.png``: the page a user lands on from the address ``aop ui`` prints (the
  study's trials, with their metric and parameters), as it is, without a click;
- ``OUT/mlflow_parallel.png``: the chart view's parallel-coordinates chart of the searched
  parameters (those that vary between the trials) against the metric, reached by clicks.

Each step waits for the single-page app to render what it clicks next; the server is stopped at
the end, also after an error. The store is only read (the chart is added in the browser page, not
saved to the study).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
PARENT_TAG = "mlflow.parentRunId"


def step(message: str) -> None:
    """One line of progress on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(tracking_uri: str, timeout: float) -> Iterator[str]:
    """``aop ui``'s server on the study's store; yields its URL and stops it afterwards."""
    from aop.tracking.ui import serve_store

    step(f"starting mlflow server on {tracking_uri}")
    process, url = serve_store(tracking_uri, timeout_s=timeout)
    try:
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def study_runs(url: str, study: Path) -> tuple[object, list[object]]:
    """The study's parent run (``STUDY_DIR/mlflow_run_id``, else the newest parent) and trials."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url)
    id_file = study / "mlflow_run_id"
    if id_file.is_file():
        parent = client.get_run(id_file.read_text().strip())
    else:
        experiments = [e.experiment_id for e in client.search_experiments()]
        parents = [
            run for run in client.search_runs(experiments, order_by=["attributes.start_time DESC"])
            if PARENT_TAG not in run.data.tags
        ]
        if not parents:
            raise SystemExit(f"error: {study / 'mlflow.db'}: no study run in the store")
        parent = parents[0]
    trials = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
        max_results=1000,
    )
    return parent, trials


def save(path: Path, png: bytes) -> None:
    """Write a screenshot beside its target, then move it into place."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(png)
    partial.replace(path)


def searched_params(trials: list[object]) -> list[str]:
    """Parameters every trial logged, those that vary between trials first (all if none vary)."""
    if not trials:
        return []
    keys = [k for k in trials[0].data.params if all(k in t.data.params for t in trials)]
    varying = [k for k in keys if len({t.data.params[k] for t in trials}) > 1]
    return varying or keys


def pick(page, field, values: list[str], wait_ms: float = 15000) -> list[str]:
    """Choose ``values`` in one of the chart dialog's multi-select fields; returns those chosen.

    A value the field does not offer (MLflow lists numeric parameters only) is skipped.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    chosen = []
    for value in values:
        field.click()
        field.fill(value)
        # the design system's visible item (its role="option" twin is an accessibility list)
        option = page.locator('[class*="select-item-option-content"]:visible').filter(
            has_text=re.compile(f"^{re.escape(value)}$")
        )
        try:
            option.first.click(timeout=wait_ms)
        except PlaywrightTimeout:
            continue
        chosen.append(value)
    field.fill("")
    page.get_by_role("dialog").get_by_text("Add new chart").click()  # closes the drop-down
    return chosen


def full_screen(page, card) -> None:  # type: ignore[no-untyped-def]
    """Open a chart card in MLflow's full-screen view (the button before the card's menu).

    Many axes are cramped in a card; if the view does not open, the card stays as it is.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    buttons = card.locator("button")
    expand = None
    for index in range(buttons.count()):
        button = buttons.nth(index)
        if button.get_attribute("data-testid") == "experiment-view-compare-runs-card-menu":
            break
        expand = button
    if expand is None:
        return
    try:
        expand.click(timeout=15000)
        page.get_by_role("dialog").locator(".parcoords").first.wait_for(timeout=30000)
    except PlaywrightTimeout:
        step("the full-screen view did not open; keeping the chart card")


def screenshots(url: str, experiment_id: str, parent_id: str, trial_name: str,
                params: list[str], metric: str, out: Path, timeout_ms: float) -> list[Path]:
    from playwright.sync_api import sync_playwright

    runs_png, chart_png = out / "mlflow_runs.png", out / "mlflow_parallel.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.set_default_timeout(timeout_ms)
            step("opening the address aop ui prints")
            page.goto(f"{url}/#/experiments/{experiment_id}/runs?viewStateShareKey={parent_id}")
            page.get_by_role("link", name=trial_name, exact=True).first.wait_for()
            page.wait_for_timeout(1000)  # let the grid settle its column widths
            save(runs_png, page.screenshot())
            step(f"saved {runs_png}; opening the chart view")
            assistant = page.get_by_role("button", name="Close", exact=True)
            if assistant.count():  # MLflow's assistant side panel covers the charts
                assistant.first.click()

            page.locator('label:has(input[name="runs-view-mode"][value="CHART"])').click()
            page.get_by_test_id("experiment-view-runs-visibility-column-header").click()
            page.get_by_text("Show all runs", exact=True).click()
            page.get_by_test_id("experiment-view-compare-runs-add-chart").first.click()
            page.get_by_test_id("experiment-view-compare-runs-chart-type-parallel").click()
            dialog = page.get_by_role("dialog")
            fields = dialog.locator("input:visible")
            fields.first.wait_for()
            step(f"adding a parallel-coordinates chart of {', '.join(params)} and {metric}")
            params[:] = pick(page, fields.nth(0), params)
            if not pick(page, fields.nth(1), [metric]):
                raise SystemExit(f"error: the chart dialog offers no metric {metric!r}")
            page.get_by_test_id("experiment-view-compare-runs-chart-modal-confirm").click()
            dialog.wait_for(state="hidden")
            card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
                has=page.locator(".parcoords")
            )
            card.first.wait_for()
            card.first.scroll_into_view_if_needed()
            full_screen(page, card.first)
            page.wait_for_timeout(1000)
            save(chart_png, page.screenshot())
            step(f"saved {chart_png}")
        finally:
            browser.close()
    return [runs_png, chart_png]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="Study folder (with experiment.yaml).")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="Output folder.")
    parser.add_argument("--metric", default="ipq", help="Metric of the parallel coordinates.")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="Seconds to wait for the server and for each page element.")
    args = parser.parse_args(argv)
    study = args.study.resolve()
    saved = study / "experiment.yaml"
    if not saved.is_file():
        print(f"error: {saved}: not found (is {study} a study folder?)", file=sys.stderr)
        return 2
    import yaml

    tracking_uri = yaml.safe_load(saved.read_text())["tracking"]["tracking_uri"]
    if not Path(CHROMIUM).is_file():
        print(f"error: {CHROMIUM}: Chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with mlflow_server(tracking_uri, args.timeout) as url:
        parent, trials = study_runs(url, study)
        if not trials:
            print(f"error: run {parent.info.run_id} has no trial runs", file=sys.stderr)
            return 2
        params = searched_params(trials)
        files = screenshots(
            url, parent.info.experiment_id, parent.info.run_id, trials[0].info.run_name,
            params, args.metric, args.out, args.timeout * 1000,
        )
    for file in files:
        print(file)
    print(f"{len(trials)} trials, parameters {', '.join(params)} against {args.metric}; "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
