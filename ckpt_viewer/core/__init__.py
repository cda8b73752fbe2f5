"""The Qt-free core. Listing modules import neither torch nor Qt."""


class CheckpointError(Exception):
    """A file that cannot be read; the message is one line for the user."""


def describe_error(exc: BaseException) -> str:
    """One line for the user, whatever was raised."""
    if isinstance(exc, CheckpointError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "not enough memory"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"unexpected {type(exc).__name__}{': ' + text[:200] if text else ''}"
