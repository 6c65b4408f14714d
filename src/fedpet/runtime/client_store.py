"""Where a client keeps its own state between the rounds it is sampled in.

A client's state (SCAFFOLD's control, an error-feedback residual) belongs to the client:
the runtime gives its client half a :class:`ClientStore` on the client's side (the run
directory in the in-process simulation, the node's disk or Flower's node state on Flower),
and the server never holds it.

Versions are kept by round. After training in round ``r`` the client saves its new state
as version ``r``; the server commits it only if it aggregated the client's update in a
round it did not skip, and tells the client which version is its state (the round of its
last committed update, 0 for none) in the next message that reaches it. Loading that
version drops every other one: the uncommitted (a rejected update, a skipped round, an
abandoned attempt, a round lost to a crash) and the superseded. A client keeps at most
two versions, and a resumed run reads exactly what it read before.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from safetensors.torch import load_file, save

from fedpet.files import atomic_write, storage_errors
from fedpet.state import TrainableState


class ClientStore(Protocol):
    """A client-side store of client states, versioned by round."""

    def load(self, client: int, round_: int) -> TrainableState | None:
        """``client``'s state saved in ``round_`` (0: none yet, empty); None if it is gone.

        Every other version of the client's state is dropped.
        """
        ...

    def save(self, client: int, round_: int, state: TrainableState) -> None:
        """Keep ``state`` as ``client``'s version of ``round_``."""
        ...


def _round_of(file: Path) -> int:
    return int(file.name.removesuffix(".safetensors").rsplit("-r", 1)[1])


class DiskStore:
    """Client states as ``<client>-r<round>.safetensors`` files in ``folder``.

    A failed write is one clear error naming the file; with ``run`` (the simulation's run
    directory) it names the round a resume would continue from too.
    """

    def __init__(self, folder: Path, run: Path | None = None) -> None:
        self.folder, self.run = folder, run

    def _errors(self) -> AbstractContextManager[None]:
        if self.run is None:
            return storage_errors(self.folder, checkpointed=False)
        return storage_errors(self.run)

    def load(self, client: int, round_: int) -> TrainableState | None:
        """The version of ``round_``; the others are deleted."""
        with self._errors():
            versions = {_round_of(f): f for f in self.folder.glob(f"{client}-r*.safetensors")}
            kept = versions.pop(round_, None)
            state = {} if round_ == 0 else None if kept is None else load_file(str(kept))
            for file in versions.values():
                file.unlink()
        return state

    def save(self, client: int, round_: int, state: TrainableState) -> None:
        """Write the version atomically."""
        data = save({k: v.contiguous() for k, v in state.items()})
        with self._errors():
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{client}-r{round_}.safetensors"
            atomic_write(path, lambda t: t.write_bytes(data))
