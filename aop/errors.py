"""The one exception type that carries a user-facing, one-line message, and the one rendering of a
pydantic validation error as text for such a line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

__all__ = ["AopError", "error_message", "validation_message"]


class AopError(ValueError):
    """Bad input from the user: a file, field or value that aop cannot use.

    The message is one line that names the offending file, field or value. The CLI prints it
    without a traceback and exits with a non-zero status.
    """


class _ValidationErrors(Protocol):
    """What :func:`validation_message` reads: pydantic's ``ValidationError`` and FastAPI's
    ``RequestValidationError`` both list their errors as mappings with ``loc``, ``msg`` and
    ``type``."""

    def errors(self) -> Any: ...


def error_message(error: Mapping[str, Any]) -> str:
    """The message of one pydantic error (one entry of ``ValidationError.errors()``), no location.

    The ``Value error, `` that pydantic puts before the message of a validator's ``ValueError``
    is left out, and an ``extra_forbidden`` error reads ``unknown field``. For callers that name
    the field their own way (quoted, with its value); :func:`validation_message` renders the
    location too.

    Examples
    --------
    >>> error_message({"type": "value_error", "loc": ("seed",), "msg": "Value error, negative"})
    'negative'
    >>> error_message({"type": "extra_forbidden", "loc": ("colour",), "msg": "Extra inputs..."})
    'unknown field'
    """
    if error.get("type") == "extra_forbidden":
        return "unknown field"
    return str(error.get("msg", "invalid")).removeprefix("Value error, ")


def validation_message(exc: _ValidationErrors, *, first: bool = False) -> str:
    """A pydantic validation error as one line: ``field.path: message``, joined by ``; ``.

    Each message is :func:`error_message`'s; an error of the whole model (an empty location) is
    its message alone.

    Parameters
    ----------
    exc : pydantic.ValidationError
        The error (FastAPI's ``RequestValidationError`` too: it lists its errors the same way).
    first : bool
        Render only the first error.

    Returns
    -------
    str
        One line, without a file name (the caller puts that in front).

    Examples
    --------
    >>> from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
    >>> class Search(BaseModel):
    ...     model_config = ConfigDict(extra="forbid")
    ...     budget: int
    ...     @field_validator("budget")
    ...     @classmethod
    ...     def _positive(cls, value: int) -> int:
    ...         if value < 1:
    ...             raise ValueError("must be at least 1")
    ...         return value
    >>> try:
    ...     Search(budget=0, colour="red")
    ... except ValidationError as exc:
    ...     print(validation_message(exc))
    ...     print(validation_message(exc, first=True))
    budget: must be at least 1; colour: unknown field
    budget: must be at least 1
    """
    errors = list(exc.errors())
    parts = []
    for error in errors[:1] if first else errors:
        where = ".".join(str(part) for part in error.get("loc", ()))
        message = error_message(error)
        if error.get("type") in ("literal_error", "enum"):  # name the value that is refused
            message = f"{error.get('input')!r}: {message}"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
