"""Registry of FL algorithms, one file each."""

from collections.abc import Callable

from fedpet.algorithms.base import Aggregate, Algorithm, ClientHook, PlainTraining
from fedpet.algorithms.fedadagrad import FedAdagrad
from fedpet.algorithms.fedadam import FedAdam
from fedpet.algorithms.fedavg import FedAvg
from fedpet.algorithms.fedavgm import FedAvgM
from fedpet.algorithms.fedprox import FedProx
from fedpet.algorithms.fedyogi import FedYogi
from fedpet.algorithms.ffa_lora import FfaLora
from fedpet.algorithms.flexlora import FlexLora
from fedpet.algorithms.hetlora import HetLora
from fedpet.algorithms.median import Median
from fedpet.algorithms.scaffold import Scaffold
from fedpet.algorithms.trimmed_mean import TrimmedMean
from fedpet.config import AlgorithmConfig

ALGORITHMS: dict[str, Callable[[AlgorithmConfig], Algorithm]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "ffa-lora": FfaLora,
    "hetlora": HetLora,
    "flexlora": FlexLora,
    "scaffold": Scaffold,
    "median": Median,
    "trimmed-mean": TrimmedMean,
}


def get_algorithm(options: AlgorithmConfig) -> Algorithm:
    """Construct the configured algorithm."""
    return ALGORITHMS[options.name](options)


__all__ = ["ALGORITHMS", "Aggregate", "Algorithm", "ClientHook", "PlainTraining", "get_algorithm"]
