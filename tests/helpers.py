"""Helpers shared by the test modules (pytest puts this folder on ``sys.path``)."""

from pathlib import Path


def run_argv(
    model: Path,
    out: Path,
    *extra: str,
    samples: int = 64,
    clients: int = 4,
    per_round: int = 2,
    rounds: int = 2,
    eval_samples: int = 32,
) -> list[str]:
    """``fedpet run`` arguments for a small federated run; flags in ``extra`` come last."""
    return [
        "run",
        "--model",
        str(model),
        "--out",
        str(out),
        "--max-train-samples",
        str(samples),
        "--clients",
        str(clients),
        "--clients-per-round",
        str(per_round),
        "--rounds",
        str(rounds),
        "--set",
        f"data.max_eval_samples={eval_samples}",
        *extra,
    ]


def refusal(args: list[str], capsys) -> str:
    """``fedpet run --dry-run ARGS`` exits with status 2; its error, checked to be one line."""
    return refused(["run", "--dry-run", *args], capsys)


def files_under(folder: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folder``: relative path -> bytes (None for a folder)."""
    return {
        str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
        for path in sorted(folder.rglob("*"))
    }


def refused(argv: list[str], capsys, keep: Path | None = None) -> str:
    """``fedpet ARGV`` is refused: exit status 2 and an error of one line, which is returned.

    argparse's own errors (an unknown flag, a value of the wrong type) count, as exit status 2.

    Every file under ``keep`` (a test's folder, or a run directory) is left exactly as it
    was, and no file or folder appears there.
    """
    from fedpet.cli import main

    before = files_under(keep) if keep is not None else {}
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    assert status == 2
    err: str = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    if keep is not None:
        assert files_under(keep) == before, f"{argv} changed files under {keep}"
    return err


def tiny_study_base(model: Path, **federation: object) -> dict:
    """A study's ``base``: the tiny model on a small slice of rotten_tomatoes, 4 clients, 2
    a round, 2 rounds; ``federation`` changes or adds federation fields."""
    return {
        "model": str(model),
        "data": {"max_train_samples": 48, "max_eval_samples": 32, "max_length": 32},
        "federation": {"clients": 4, "clients_per_round": 2, "rounds": 2, **federation},
    }


def intake_of(like: dict, spec: str = "fp32"):
    """An intake of round 1 for clients 4, 7 and 9 of ten, each holding 10 examples, which
    were sent ``like`` (FedAvg, fp32 downloads); uploads use the codec ``spec``."""
    from fedpet.algorithms import Aggregate
    from fedpet.algorithms.fedavg import FedAvg
    from fedpet.codecs import get_codec
    from fedpet.config import AlgorithmOptions
    from fedpet.runtime.rounds import Downloads, Intake
    from fedpet.stages import UpdateChecks

    algorithm, codec = FedAvg(AlgorithmOptions()), get_codec("fp32")
    downloads = Downloads(algorithm, codec, like, seed=0, round_=1)
    up = get_codec(spec)
    sizes = [10] * 10
    return Intake([4, 7, 9], sizes, algorithm, downloads, Aggregate(), up, [UpdateChecks(None)])


def client_round(half, folder: Path, round_: int = 1, client: int = 0, secure: bool = False):
    """``client``'s reply in ``round_`` to the model's trainable state as the download.

    ``half`` is a :class:`~fedpet.runtime.client_half.ClientHalf`; its states go to
    ``folder``.
    """
    from fedpet.runtime.client_store import DiskStore
    from fedpet.runtime.payloads import Download
    from fedpet.state import extract, schema

    state = half.algorithm.client_view(extract(half.exp.params), client)
    download = Download(half.down.encode(state), schema(state))
    return half.run(download, round_, client, DiskStore(folder), secure=secure)
