"""Where a client keeps its own state between the rounds it is sampled in.

A client's state (SCAFFOLD's control, an error-feedback residual, its personal tensors)
belongs to the client:
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
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from safetensors.torch import load_file, save

from fedpet.files import atomic_write, storage_errors
from fedpet.state import TrainableState

Handle = TypeVar("Handle")

CODEC_STATE = "residual"
"""The prefix of the upload codec's tensors (error feedback's residual) in a saved state."""
PERSONAL = "personal"
"""The prefix of the client's personal tensors (never sent) in a saved state."""


@dataclass(frozen=True)
class SavedState:
    """A client's saved state in its parts: its algorithm's, its upload codec's, its own.

    ``personal`` holds the tensors the algorithm keeps with the client (FedSA-LoRA's B,
    Ditto's copy) under their model names.
    """

    algorithm: TrainableState
    codec: TrainableState
    personal: TrainableState

    @classmethod
    def of(cls, saved: TrainableState) -> SavedState:
        """Split one flat saved state by its prefixes."""
        parts: dict[str, TrainableState] = {CODEC_STATE: {}, PERSONAL: {}, "": {}}
        for name, t in saved.items():
            prefix, _, rest = name.partition(".")
            if prefix in (CODEC_STATE, PERSONAL):
                parts[prefix][rest] = t
            else:
                parts[""][name] = t
        return cls(parts[""], parts[CODEC_STATE], parts[PERSONAL])

    def flat(self) -> TrainableState:
        """The inverse of :meth:`of`: one flat state to save."""
        codec = {f"{CODEC_STATE}.{n}": t for n, t in self.codec.items()}
        personal = {f"{PERSONAL}.{n}": t for n, t in self.personal.items()}
        return {**self.algorithm, **codec, **personal}


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


def state_bytes(state: TrainableState) -> bytes:
    """A state as safetensors bytes, the form every store keeps a version in."""
    return save({k: v.contiguous() for k, v in state.items()})


class VersionedStore(Generic[Handle]):
    """:meth:`load`'s rule over a backend's versions, each reached by a handle.

    Subclasses give a client's versions by round (:meth:`_versions`), read one
    (:meth:`_read`) and drop one (:meth:`_drop`).
    """

    def _versions(self, client: int) -> dict[int, Handle]:
        raise NotImplementedError

    def _read(self, handle: Handle) -> TrainableState:
        raise NotImplementedError

    def _drop(self, handle: Handle) -> None:
        raise NotImplementedError

    def load(self, client: int, round_: int) -> TrainableState | None:
        """The version of ``round_`` (0: none yet, empty; None if gone); the others dropped."""
        versions = self._versions(client)
        kept = versions.pop(round_, None)
        state = {} if round_ == 0 else None if kept is None else self._read(kept)
        for handle in versions.values():
            self._drop(handle)
        return state


class DiskStore(VersionedStore[Path]):
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

    def _versions(self, client: int) -> dict[int, Path]:
        files = self.folder.glob(f"{client}-r*.safetensors")
        return {int(f.name.removesuffix(".safetensors").rsplit("-r", 1)[1]): f for f in files}

    def _read(self, handle: Path) -> TrainableState:
        return load_file(str(handle))

    def _drop(self, handle: Path) -> None:
        handle.unlink()

    def load(self, client: int, round_: int) -> TrainableState | None:
        """The version of ``round_``; the others are deleted."""
        with self._errors():
            return super().load(client, round_)

    def save(self, client: int, round_: int, state: TrainableState) -> None:
        """Write the version atomically."""
        data = state_bytes(state)
        with self._errors():
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{client}-r{round_}.safetensors"
            atomic_write(path, lambda t: t.write_bytes(data))
