from collections.abc import Callable

import pytest

from edgecloud.splitlearn.data import DIGITS_SHAPE
from edgecloud.splitlearn.latency import Scenario, UEConfig
from edgecloud.splitlearn.models import build_model
from edgecloud.splitlearn.profiling import ComputeSpeed, ModelProfile, PassCost, profile_model

# A fixed host speed (what calibration measured once on this machine, rounded) keeps the
# latency-model and optimiser tests deterministic.
HOST_SPEED = ComputeSpeed(
    ue_forward=PassCost(s_per_flop=1e-11, s_per_block=3e-5, s_per_call=1e-5),
    ue_backward=PassCost(s_per_flop=1e-11, s_per_block=8e-5, s_per_call=1e-5),
    bs_step=PassCost(s_per_flop=1.2e-11, s_per_block=8e-5, s_per_call=4e-5),
    optimizer=PassCost(s_per_flop=1e-10, s_per_block=5e-6, s_per_call=1e-5),
)


@pytest.fixture(scope="session")
def cnn_profile() -> ModelProfile:
    return profile_model(build_model("cnn", seed=0), DIGITS_SHAPE)


@pytest.fixture(scope="session")
def mlp_profile() -> ModelProfile:
    return profile_model(build_model("mlp", seed=0), DIGITS_SHAPE)


def _scenario(
    profile: ModelProfile, ues: tuple[UEConfig, ...], bandwidth_mhz: float, batch: int = 16
) -> Scenario:
    return Scenario(profile, HOST_SPEED, ues, batch, bandwidth_mhz * 1e6, rounds_per_sync=22)


@pytest.fixture(scope="session")
def scenario() -> Callable[..., Scenario]:
    """Build a scenario at the fixed host speed: ``scenario(profile, ues, bandwidth_mhz)``."""
    return _scenario
