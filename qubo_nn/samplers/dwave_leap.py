"""``dwave``: D-Wave's cloud solvers through dwave-system (an optional extra).

Without dwave-system, or without a configured Leap API token, constructing the sampler raises
:class:`QuboNNError` saying which is missing; nothing is sent anywhere.
"""
from __future__ import annotations

import importlib
import importlib.util
import time
from typing import Any

import dimod

from qubo_nn.errors import QuboNNError

SOLVERS = ("hybrid", "qpu")
INSTALL_HINT = "pip install 'qubo-nn[dwave]' (dwave-system)"
TOKEN_HINT = "run `dwave config create` or set DWAVE_API_TOKEN"


def dwave_system_installed() -> bool:
    try:
        return importlib.util.find_spec("dwave.system") is not None
    except (ImportError, ValueError):
        return False


def leap_token() -> str | None:
    """The Leap API token from dwave-cloud-client's config (file or environment), read locally."""
    try:
        from dwave.cloud.config import load_config
    except ImportError:
        return None
    try:
        return load_config().get("token") or None
    except Exception:  # a malformed config file: no usable token
        return None


class DWaveLeapSampler(dimod.Sampler):
    """``solver="hybrid"`` (default): LeapHybridSampler, for dense models of thousands of
    variables; ``solver="qpu"``: EmbeddingComposite(DWaveSampler()), for small sparse ones.
    ``time_limit`` (s, hybrid only), ``num_reads`` (qpu only) and ``label`` pass through.
    """

    parameters = None
    properties = None
    PARAMETER_NAMES = ("solver", "time_limit", "num_reads", "label")

    def __init__(self) -> None:
        if not dwave_system_installed():
            raise QuboNNError(f"sampler 'dwave' needs the optional package dwave-system, which is not installed: "
                              f"{INSTALL_HINT}, then {TOKEN_HINT}")
        if leap_token() is None:
            raise QuboNNError(f"sampler 'dwave' needs a D-Wave Leap API token and none is configured: {TOKEN_HINT}")
        self.parameters = {name: [] for name in self.PARAMETER_NAMES}
        self.properties = {"solvers": SOLVERS}

    def sample(self, bqm: dimod.BinaryQuadraticModel, *, solver: str = "hybrid", **kwargs: Any) -> dimod.SampleSet:
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        system = importlib.import_module("dwave.system")
        try:
            if solver == "hybrid":
                kwargs.pop("num_reads", None)
                child = system.LeapHybridSampler()
            else:
                kwargs.pop("time_limit", None)
                child = system.EmbeddingComposite(system.DWaveSampler())
        except Exception as exc:  # authentication, network, no such solver
            raise QuboNNError(f"could not open a D-Wave {solver} solver: {exc} ({TOKEN_HINT})") from exc
        t0 = time.perf_counter()
        sampleset = child.sample(bqm, **kwargs)
        sampleset.resolve()
        sampleset.info.setdefault("timing_local", {"wall_s": time.perf_counter() - t0})
        return sampleset
