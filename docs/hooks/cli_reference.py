"""MkDocs hook: the command-line reference, generated from aop's Typer app at build time.

A page holding the line ``<!-- aop-cli-reference -->`` gets, in its place, the Markdown that
Typer's own documentation command (``python -m typer aop.cli utils docs``) writes for the ``aop``
app: every command with its usage, arguments, options and defaults, after a list of the commands
that links to each. The options are written once, in ``aop/cli``; this page only shows them.
Typer's headings are moved one level down so that they sit under the page's title. A failure of
the command fails the build.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

MARKER = "<!-- aop-cli-reference -->"
HEADING = re.compile(r"^(#+) ")
COMMAND_ITEM = re.compile(r"^\* `([a-z][a-z0-9-]*)`:")


def cli_markdown() -> str:
    """The Markdown reference of the ``aop`` app, headings one level down.

    Returns
    -------
    str
        Typer's generated reference of every ``aop`` command.

    Raises
    ------
    RuntimeError
        When Typer's documentation command fails (its error output is in the message).
    """
    command = [sys.executable, "-m", "typer", "aop.cli", "utils", "docs", "--name", "aop"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.strip()}")
    lines, fenced, commands = [], False, False
    for line in done.stdout.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            line = HEADING.sub(lambda m: "#" + m.group(1) + " ", line)
            # the overview's command list links to each command's section
            commands = line == "**Commands**:" or (commands and not line.startswith("#"))
            if commands:
                line = COMMAND_ITEM.sub(r"* [`\1`](#aop-\1):", line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, **_: Any) -> str:
    """Put the generated reference where a page has the marker line."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_markdown())
