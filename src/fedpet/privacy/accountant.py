"""The privacy spent by client-level DP-FedAvg, accounted with ``dp-accounting``.

Each round is one sampled Gaussian mechanism on the sum of the cohort's clipped updates
(each of L2 norm at most ``C``, noise of std ``z C`` on the sum). dp-accounting's noise
multiplier is that std over the sum's L2 sensitivity, which depends on the neighbouring
relation the sampling scheme is analysed under:

- Poisson sampling with rate ``q = clients_per_round / clients``: neighbouring federations
  differ by adding or removing one client, whose update moves the sum by at most ``C``;
  the multiplier is ``z``.
- A fixed-size cohort drawn without replacement (RDP only): neighbouring federations differ
  by replacing one client, which moves the sum by up to ``2 C`` (one clipped update out,
  another in); the multiplier is ``z / 2``.

Rounds compose; epsilon is reported at ``privacy.delta``.
"""

from __future__ import annotations

import logging

import dp_accounting
from dp_accounting import pld, rdp

from fedpet.config import PrivacyConfig

# RDP warns for each low order it cannot evaluate, and leaves that order out, as it should
logging.getLogger("absl").setLevel(logging.ERROR)


def sensitivity(privacy: PrivacyConfig) -> float:
    """The L2 sensitivity of the summed clipped updates, in units of the clip ``C``.

    1 under add-or-remove-one (Poisson sampling), 2 under replace-one (fixed cohorts).
    """
    return 1.0 if privacy.sampling == "poisson" else 2.0


def round_event(
    privacy: PrivacyConfig, clients: int, per_round: int, noise_multiplier: float
) -> dp_accounting.DpEvent:
    """One round: the Gaussian mechanism (std ``noise_multiplier * C``) on a sampled cohort."""
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / sensitivity(privacy))
    if privacy.sampling == "poisson":
        return dp_accounting.PoissonSampledDpEvent(per_round / clients, gaussian)
    return dp_accounting.SampledWithoutReplacementDpEvent(clients, per_round, gaussian)


def fresh_accountant(privacy: PrivacyConfig) -> dp_accounting.PrivacyAccountant:
    """An empty RDP or PLD accountant for the sampling scheme's neighbouring relation."""
    if privacy.accountant == "pld":
        return pld.PLDAccountant()
    relation = dp_accounting.NeighboringRelation
    fixed = privacy.sampling == "fixed"
    return rdp.RdpAccountant(
        neighboring_relation=relation.REPLACE_ONE if fixed else relation.ADD_OR_REMOVE_ONE
    )


def epsilon(
    privacy: PrivacyConfig, clients: int, per_round: int, noise_multiplier: float, rounds: int
) -> float:
    """Epsilon at ``privacy.delta`` after ``rounds`` rounds (0 before any)."""
    if rounds == 0:
        return 0.0
    accountant = fresh_accountant(privacy)
    accountant.compose(round_event(privacy, clients, per_round, noise_multiplier), rounds)
    return float(accountant.get_epsilon(privacy.delta))


def calibrate(privacy: PrivacyConfig, clients: int, per_round: int, rounds: int) -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` is ``target_epsilon``."""
    assert privacy.target_epsilon is not None, "calibrate needs a target epsilon"

    def event(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(
            round_event(privacy, clients, per_round, z), rounds
        )

    z = dp_accounting.calibrate_dp_mechanism(
        lambda: fresh_accountant(privacy),
        event,
        privacy.target_epsilon,
        privacy.delta,
        dp_accounting.LowerEndpointAndGuess(1e-3, 1.0),
        tol=1e-4,
    )
    return float(z)
