"""Write ``docs/images/annotate.png``: the annotation page in headless Chromium.

A synthetic Myotube crop with its four instance classes and three channels (DAPI, alpha-actinin,
S100beta) is simulated into a temporary folder; a dozen instances get their true class as manual
annotations (so label spreading has something to suggest), ``aop annotate``'s server starts on a
free local port, Debian's Chromium opens the page, a few classes are keyed in, and the page is
captured.

    .venv/bin/python scripts/screenshot_annotate.py [--out docs/images/annotate.png]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from aop.annotation import AnnotationServer, AnnotationSession
from aop.instances.annotations import append_annotations, read_annotations
from aop.synth import preset_params
from aop.synth.classes import class_set
from aop.synth.dataset import write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/annotate.png"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="aop-annotate-") as tmp:
        root = write_synthetic_dataset(
            Path(tmp) / "myotube",
            preset_params("myotube"),
            (24, 160, 160),
            1,
            seed=3,
            preset="myotube",
            classes=class_set("myotube"),
        )
        truth = read_annotations(root)
        seeds = []
        for name in ("myotube", "schwann", "debris", "other"):
            rows = truth[truth["class"] == name].head(4)
            seeds += [
                {"volume": v, "label": int(n), "class": name, "source": "manual"}
                for v, n in zip(rows["volume"], rows["label"], strict=True)
            ]
        append_annotations(root, seeds)
        session = AnnotationSession(root, annotator="ana", order="uncertain")
        server = AnnotationServer(session).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(server.url)
                page.wait_for_selector("body[data-ready='1']")
                for key in "12":
                    page.keyboard.press(key)
                    page.evaluate("() => window.aopIdle()")
                page.keyboard.press("+")
                page.evaluate("() => window.aopIdle()")
                page.wait_for_function(
                    "() => document.getElementById('picture').dataset.shown"
                    " === document.getElementById('instance').dataset.key"
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out))
                browser.close()
        finally:
            server.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
