"""The one exception type for bad user input (config, data, CLI arguments, client updates)."""


class FedpetError(Exception):
    """Bad input: the message is one line naming what was wrong and what is allowed.

    The CLI prints it as a single line and exits with status 2.
    """


def one_line(message: str) -> str:
    """``message`` with line breaks and other unprintable characters escaped, as in repr.

    Error messages quote user input; quoted control characters must not break the line.
    """
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in message)


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise the one-line error for ``key = value`` unless ``ok``; ``allowed`` says what is."""
    if not ok:
        shown = list(value) if isinstance(value, tuple) else value
        raise FedpetError(f"{key} = {shown!r} is not allowed: {allowed}")
