"""Registry of FL algorithms, one file each."""

from collections.abc import Callable

from fedpet.algorithms.base import Aggregate, Algorithm, ClientHook, PlainTraining
from fedpet.algorithms.fedavg import FedAvg
from fedpet.config import AlgorithmConfig

ALGORITHMS: dict[str, Callable[[AlgorithmConfig], Algorithm]] = {"fedavg": FedAvg}


def get_algorithm(options: AlgorithmConfig) -> Algorithm:
    """Construct the configured algorithm."""
    return ALGORITHMS[options.name](options)


__all__ = ["ALGORITHMS", "Aggregate", "Algorithm", "ClientHook", "PlainTraining", "get_algorithm"]
