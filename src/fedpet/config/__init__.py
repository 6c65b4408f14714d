"""The run configuration: the sections of ``config.yaml`` and how they are parsed.

A leaf of the package: it imports nothing of fedpet but its errors. Turning input into a
valid, resolved config (the owners' checks, per-method defaults, DP calibration) is
:mod:`fedpet.configure`'s.
"""

from fedpet.config.fields import Rule, help_of, option, rule_of
from fedpet.config.parse import (
    Choices,
    load_yaml,
    parse,
    parse_override,
    read_yaml,
    to_dict,
    with_overrides,
)
from fedpet.config.sections import (
    DEFAULT_MODEL,
    RUNTIMES,
    AlgorithmOptions,
    CodecConfig,
    Config,
    DataConfig,
    FaultConfig,
    FederationConfig,
    MethodOptions,
    PrivacyConfig,
    SecAggConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_MODEL",
    "RUNTIMES",
    "AlgorithmOptions",
    "Choices",
    "CodecConfig",
    "Config",
    "DataConfig",
    "FaultConfig",
    "FederationConfig",
    "MethodOptions",
    "PrivacyConfig",
    "Rule",
    "SecAggConfig",
    "TrainConfig",
    "help_of",
    "load_yaml",
    "option",
    "parse",
    "parse_override",
    "read_yaml",
    "rule_of",
    "to_dict",
    "with_overrides",
]
