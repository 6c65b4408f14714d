"""Writing files safely: atomic replacement, and a failed write as one clear error."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fedpet.errors import FedpetError


@contextmanager
def storage_errors(run: Path, checkpointed: bool = True) -> Iterator[None]:
    """Turn a failed write under the directory ``run`` into one clear FedpetError.

    The message names the file and the system's reason (no space, no permission, ...) and,
    for a run directory (``checkpointed``), the last checkpointed round, which the atomic
    writes leave intact for ``--resume``.
    """
    try:
        yield
    except OSError as exc:
        where = exc.filename or f"in {run}"
        reason = exc.strerror or exc.__class__.__name__
        if not checkpointed:
            raise FedpetError(f"cannot write {where} ({reason})") from None
        try:
            state = json.loads((run / "checkpoint" / "state.json").read_text(encoding="utf-8"))
            kept = (
                f"the checkpoint of round {state['round']} is intact: make room, then "
                f"fedpet run --resume {run}"
            )
        except (OSError, ValueError, KeyError):
            kept = "no round had been checkpointed"
        raise FedpetError(f"cannot write {where} ({reason}); {kept}") from None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via a temporary file in the same directory, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file
        raise
