"""Registry of FL algorithms, one file each."""

from collections.abc import Callable

from fedpet.algorithms.base import Aggregate, Algorithm, ClientHook, PlainTraining
from fedpet.algorithms.fedavg import FedAvg
from fedpet.algorithms.median import Median
from fedpet.algorithms.trimmed_mean import TrimmedMean
from fedpet.config import AlgorithmConfig

ALGORITHMS: dict[str, Callable[[AlgorithmConfig], Algorithm]] = {
    "fedavg": FedAvg,
    "median": Median,
    "trimmed-mean": TrimmedMean,
}


def get_algorithm(options: AlgorithmConfig) -> Algorithm:
    """Construct the configured algorithm."""
    return ALGORITHMS[options.name](options)


__all__ = ["ALGORITHMS", "Aggregate", "Algorithm", "ClientHook", "PlainTraining", "get_algorithm"]
