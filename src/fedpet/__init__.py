"""FedPETuning: federated parameter-efficient tuning of pre-trained language models."""

__version__ = "0.1.0"
