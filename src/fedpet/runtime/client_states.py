"""Each client's own algorithm state (SCAFFOLD's control) on disk, read only when sampled.

A round's memory holds the states of that round's clients only, whatever the number of
clients. Versions are named ``<client>-r<round>.safetensors``: the newest version at or
before the last checkpointed round is kept until a newer one is written, and versions after
the checkpoint are dropped on resume, so a resumed run reads exactly what it read before.
"""

from __future__ import annotations

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
        with storage_errors(run):
            for file in self.folder.glob("*-r*.safetensors"):
                if _round_of(file) > committed:
                    file.unlink()

    def _versions(self, client: int) -> list[tuple[int, Path]]:
        return sorted((_round_of(f), f) for f in self.folder.glob(f"{client}-r*.safetensors"))

    def load(self, client: int) -> TrainableState:
        """The client's newest state; empty if it was never sampled."""
        versions = self._versions(client)
        return load_file(str(versions[-1][1])) if versions else {}

    def save(self, client: int, round_: int, state: TrainableState) -> None:
        """Write the client's state after ``round_``; keep one older version for a resume."""
        data = save({k: v.contiguous() for k, v in state.items()})
        with storage_errors(self.run):
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(
                self.folder / f"{client}-r{round_}.safetensors", lambda t: t.write_bytes(data)
            )
            older = [f for r, f in self._versions(client) if r < round_]
            for file in older[:-1]:
                file.unlink()
