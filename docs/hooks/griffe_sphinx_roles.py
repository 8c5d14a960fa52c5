"""Griffe extension for the API pages: Sphinx roles in aop's docstrings shown as code.

aop's numpydoc docstrings name other objects with Sphinx roles (``:func:`load_experiment```,
``:class:`~aop.tuning.kinds.StudyKind```) and introduce examples with reST's ``::``. Markdown knows
neither, so the pages would show the role names and double colons. This extension rewrites each
role to inline code (a ``~`` keeps the last dotted part, as Sphinx does) and a paragraph's closing
``::`` to ``:``. The docstrings in the source stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|data|attr|obj|exc|const):`(~?)([^`]+)`")
LITERAL_MARKER = re.compile(r"(\S)::$|^\s*::$", re.MULTILINE)


def _role_as_code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _literal_marker(match: re.Match[str]) -> str:
    return f"{match.group(1)}:" if match.group(1) else ""


def markdown_docstring(text: str) -> str:
    """The docstring ``text`` with Sphinx roles as inline code and ``::`` markers as ``:``.

    Parameters
    ----------
    text : str
        A docstring as written in the source.

    Returns
    -------
    str
        The same text for a Markdown renderer.

    Examples
    --------
    >>> markdown_docstring("See :func:`~aop.io.read_volume`, then::")
    'See `read_volume`, then:'
    """
    return LITERAL_MARKER.sub(_literal_marker, ROLE.sub(_role_as_code, text))


class SphinxRoles(griffe.Extension):
    """Rewrite every loaded object's docstring with :func:`markdown_docstring`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Run once per object when the object tree is complete."""
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
