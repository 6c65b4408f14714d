"""Each client's own state (SCAFFOLD's control, an error-feedback residual) on disk.

A state is read only when its client is sampled, so a round's memory holds the states of
that round's clients only, whatever the number of clients. A client's new state is first
*staged* (``staged/<client>.safetensors``) and becomes its state only when the server
*commits* it, which it does for the clients whose update it aggregated in a round it did
not skip: a rejected update, a skipped round or an abandoned attempt leaves the client's
state as it was. Committed versions are named ``<client>-r<round>.safetensors``: the newest
version at or before the last checkpointed round is kept until a newer one is committed,
and versions after the checkpoint (and anything staged) are dropped on resume, so a
resumed run reads exactly what it read before.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import load_file, save

from fedpet.rundir import atomic_write, storage_errors
from fedpet.state import TrainableState


def _round_of(file: Path) -> int:
    return int(file.name.removesuffix(".safetensors").rsplit("-r", 1)[1])


class ClientStates:
    """The client states of a run directory's ``clients/`` folder.

    Parameters
    ----------
    run
        The run directory.
    committed
        The last checkpointed round (0 for a fresh run): later versions are removed.
    """

    def __init__(self, run: Path, committed: int) -> None:
        self.run, self.folder = run, run / "clients"
        self.staged = self.folder / "staged"
        with storage_errors(run):
            for file in self.folder.glob("*-r*.safetensors"):
                if _round_of(file) > committed:
                    file.unlink()
        self.discard()

    def _versions(self, client: int) -> list[tuple[int, Path]]:
        return sorted((_round_of(f), f) for f in self.folder.glob(f"{client}-r*.safetensors"))

    def load(self, client: int) -> TrainableState:
        """The client's newest committed state; empty if none was ever committed."""
        versions = self._versions(client)
        return load_file(str(versions[-1][1])) if versions else {}

    def stage(self, client: int, state: TrainableState) -> None:
        """Keep the client's new state aside until :meth:`commit` (or :meth:`discard`)."""
        data = save({k: v.contiguous() for k, v in state.items()})
        with storage_errors(self.run):
            self.staged.mkdir(parents=True, exist_ok=True)
            atomic_write(self.staged / f"{client}.safetensors", lambda t: t.write_bytes(data))

    def discard(self) -> None:
        """Drop every staged state (an abandoned attempt's, or a skipped round's)."""
        shutil.rmtree(self.staged, ignore_errors=True)

    def commit(self, clients: Iterable[int], round_: int) -> None:
        """Make the staged states of ``clients`` their states after ``round_``; drop the rest.

        One older version of each is kept, for a resume from the previous checkpoint.
        """
        with storage_errors(self.run):
            for client in clients:
                os.replace(
                    self.staged / f"{client}.safetensors",
                    self.folder / f"{client}-r{round_}.safetensors",
                )
                older = [f for r, f in self._versions(client) if r < round_]
                for file in older[:-1]:
                    file.unlink()
        self.discard()
