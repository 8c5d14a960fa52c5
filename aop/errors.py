"""The one exception type that carries a user-facing, one-line message."""


class AopError(ValueError):
    """Bad input from the user: a file, field or value that aop cannot use.

    The message is one line that names the offending file, field or value. The CLI prints it
    without a traceback and exits with a non-zero status.
    """
