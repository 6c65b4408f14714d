"""Registry of FL algorithms, one file each."""

from typing import Any

from fedpet.algorithms.base import (
    Aggregate,
    Algorithm,
    ClientHook,
    Needs,
    PlainAlgorithm,
    PlainTraining,
)
from fedpet.algorithms.ditto import Ditto
from fedpet.algorithms.fedadagrad import FedAdagrad
from fedpet.algorithms.fedadam import FedAdam
from fedpet.algorithms.fedavg import FedAvg
from fedpet.algorithms.fedavgm import FedAvgM
from fedpet.algorithms.fedex_lora import FedExLora
from fedpet.algorithms.fedper import FedPer
from fedpet.algorithms.fedprox import FedProx
from fedpet.algorithms.fedsa_lora import FedSaLora
from fedpet.algorithms.fedsvd import FedSvd
from fedpet.algorithms.fedyogi import FedYogi
from fedpet.algorithms.ffa_lora import FfaLora
from fedpet.algorithms.flexlora import FlexLora
from fedpet.algorithms.flora import FLora
from fedpet.algorithms.hetlora import HetLora
from fedpet.algorithms.local import Local
from fedpet.algorithms.median import Median
from fedpet.algorithms.rolora import RoLora
from fedpet.algorithms.scaffold import Scaffold
from fedpet.algorithms.trimmed_mean import TrimmedMean
from fedpet.config import AlgorithmOptions
from fedpet.registry import Registry

ALGORITHMS: Registry[type[PlainAlgorithm]] = Registry(
    "algorithm",
    "fedpet.algorithms",
    {
        a.name: a
        for a in (
            FedAvg,
            FedProx,
            FedAvgM,
            FedAdam,
            FedYogi,
            FedAdagrad,
            FfaLora,
            HetLora,
            FlexLora,
            RoLora,
            FedSvd,
            FedExLora,
            FLora,
            Scaffold,
            Median,
            TrimmedMean,
            FedPer,
            FedSaLora,
            Ditto,
            Local,
        )
    },
)


def register_algorithm(algorithm: type[PlainAlgorithm]) -> None:
    """Make an algorithm class available as ``--algorithm <its name>``.

    The class derives from :class:`PlainAlgorithm` (or one of fedpet's algorithms) and is
    constructed with an instance of its ``options`` class.
    """
    ALGORITHMS.register(algorithm.name, algorithm)


def get_algorithm(config: AlgorithmOptions) -> Algorithm:
    """The configured algorithm (``config`` is an instance of its options class)."""
    return ALGORITHMS[config.name](config)


def make_algorithm(name: str, **options: Any) -> Algorithm:
    """The algorithm ``name`` with the given options and defaults for the rest."""
    algorithm = ALGORITHMS[name]
    return algorithm(algorithm.options(name=name, **options))


__all__ = [
    "ALGORITHMS",
    "Aggregate",
    "Algorithm",
    "ClientHook",
    "Needs",
    "PlainAlgorithm",
    "PlainTraining",
    "get_algorithm",
    "make_algorithm",
    "register_algorithm",
]
