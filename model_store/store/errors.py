"""The store's one error type, in a module of its own so every store module can raise it."""


class ArtifactError(RuntimeError):
    """A stored version or store record that must not be used; the message names the file and
    the problem in one line."""


def one_line(exc: BaseException) -> str:
    """An error as the one line a CLI prints: a file error names its file (a full disk's
    `OSError` from a write carries the path the store gave it)."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split())[:500]
