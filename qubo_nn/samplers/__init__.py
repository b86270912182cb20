"""Samplers by name, and :func:`sample`: one call that validates, seeds, times and re-scores.

Every entry of :data:`SAMPLERS` is a :class:`dimod.Sampler` returning a :class:`dimod.SampleSet`:

=========  ===============================================================================
neal       simulated annealing (dwave-neal), vectorized β range, ``time_limit`` (default)
tabu       multistart tabu search (dwave-tabu), ``time_limit`` → per-read ``timeout``
steepest   greedy single-flip descent (dwave-samplers' SteepestDescentSolver)
exact      brute force (dimod.ExactSolver), at most 24 variables
sb         simulated bifurcation (PyTorch, GPU when present), polished by steepest descent
random     uniformly random states (dwave-samplers' RandomSampler), a baseline
dwave      D-Wave Leap hybrid/QPU solvers (optional dwave-system and a Leap token)
gptq       GPTQ sequential rounding of the block's levels (act-order default); needs integer_form
cd         coordinate descent with pair moves over the levels (CDQuant); needs integer_form
pipeline   best classical start → annealed unary windows → level-space polish; needs integer_form
decompose  dwave-hybrid: EnergyImpactDecomposer | neal/tabu sub-problems | SplatComposer, looped
=========  ===============================================================================

``integer_form`` (a :class:`qubo_nn.levels.IntegerForm`, from ``qubo_nn.qubo.integer_form(model,
enc, damping)``) tells the level-space samplers which integer problem the BQM's bits encode; a bare
BQM without it is refused with a QuboNNError saying so. Parameter values are type-checked
(:data:`PARAM_TYPES`) before any sampler runs.
"""
from __future__ import annotations

import inspect
import math
import time
from typing import Any

import dimod

from ..errors import QuboNNError
from . import anneal, bifurcation, classical, decompose, dwave_leap, exact, pipeline, random_baseline, steepest, tabu_search
from .anneal import NealSampler, vectorized_beta_range
from .classical import CDSampler, GPTQSampler
from .decompose import DecomposeSampler
from .pipeline import PipelineSampler
from .base import check_seed, child_seed, draw_seed, jsonable, rescore, samples_array
from .bifurcation import SBSampler
from .dwave_leap import DWaveLeapSampler
from .exact import MAX_EXACT_VARIABLES, ExactSampler
from .polish import PolishComposite
from .random_baseline import RandomSampler
from .steepest import SteepestDescentSolver
from .tabu_search import TabuSampler

__all__ = ["SAMPLERS", "DEFAULT_SAMPLER", "get_sampler", "sample", "describe", "PolishComposite",
           "NealSampler", "TabuSampler", "SteepestDescentSolver", "ExactSampler", "SBSampler", "RandomSampler",
           "DWaveLeapSampler", "GPTQSampler", "CDSampler", "PipelineSampler", "DecomposeSampler",
           "PARAM_TYPES", "vectorized_beta_range", "MAX_EXACT_VARIABLES", "child_seed", "draw_seed"]

SAMPLERS: dict[str, type[dimod.Sampler]] = {
    "neal": NealSampler,
    "tabu": TabuSampler,
    "steepest": SteepestDescentSolver,
    "exact": ExactSampler,
    "sb": SBSampler,
    "random": RandomSampler,
    "dwave": DWaveLeapSampler,
    "gptq": GPTQSampler,
    "cd": CDSampler,
    "pipeline": PipelineSampler,
    "decompose": DecomposeSampler,
}
DEFAULT_SAMPLER = "neal"
_MODULES = {"neal": anneal, "tabu": tabu_search, "steepest": steepest, "exact": exact, "sb": bifurcation,
            "random": random_baseline, "dwave": dwave_leap, "gptq": classical, "cd": classical,
            "pipeline": pipeline, "decompose": decompose}

#: Expected types of parameter values (checked by :func:`sample`); None is accepted where a
#: parameter is optional. Names not listed are passed through unchecked.
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "num_reads": (int,), "num_sweeps": (int,), "num_restarts": (int,), "timeout": (int,),
    "max_iter": (int,), "convergence": (int,), "size": (int,), "rounds": (int,), "window_levels": (int,),
    "time_limit": (int, float), "time_budget_s": (int, float), "max_time": (int, float),
    "act_order": (bool,), "pairs": (bool,), "encoding": (str,), "subsampler": (str,), "start": (str,),
}
_OPTIONAL = {"time_limit", "time_budget_s", "max_time", "timeout", "num_reads"}


def check_param_types(name: str, params: dict[str, Any]) -> None:
    """QuboNNError "expected int, got 'abc'" for a parameter value of the wrong type."""
    for key, value in params.items():
        want = PARAM_TYPES.get(key)
        if want is None or (value is None and key in _OPTIONAL):
            continue
        ok = isinstance(value, want) and (bool in want or not isinstance(value, bool))
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            names = " or ".join(t.__name__ for t in want)
            raise QuboNNError(f"sampler {name!r} parameter {key!r}: expected {names}, got {value!r}")

# Handled by sample() itself, never passed through **params.
_OWN_ARGS = ("seed", "initial_states")


def get_sampler(name: str) -> dimod.Sampler:
    """A new instance of the sampler registered as ``name``.

    Raises :class:`QuboNNError` for an unknown name, or when the sampler's optional package or
    configuration is missing (``dwave``).
    """
    if name not in SAMPLERS:
        raise QuboNNError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]()


def describe() -> list[dict[str, Any]]:
    """One row per registered sampler: name, available, why not, parameters, one-line summary."""
    rows = []
    for name, cls in SAMPLERS.items():
        try:
            params = sorted(get_sampler(name).parameters)
            available, reason = True, None
        except QuboNNError as exc:
            params = sorted(getattr(cls, "PARAMETER_NAMES", ()))
            available, reason = False, str(exc)
        doc = (inspect.getdoc(_MODULES[name]) or "").split("\n")[0]
        rows.append({"name": name, "available": available, "reason": reason, "parameters": params,
                     "class": f"{cls.__module__}.{cls.__qualname__}", "summary": doc.split(": ", 1)[-1]})
    return rows


def sample(bqm: dimod.BinaryQuadraticModel, sampler: str | dimod.Sampler = DEFAULT_SAMPLER, *,
           seed: int | None = None, polish: bool = False, initial_states: Any = None,
           **params: Any) -> dimod.SampleSet:
    """Sample ``bqm`` with a registered sampler (or any dimod sampler instance).

    Args:
        bqm: the model (BINARY or SPIN; any labels).
        sampler: a name from :data:`SAMPLERS` or a :class:`dimod.Sampler`.
        seed: int in [0, 2**31); None draws one from OS entropy. It is recorded, so every run
            can be repeated: the same seed and parameters give the same samples (for ``tabu``
            only when its clock does not stop it, see :class:`TabuSampler`). Ignored by
            samplers that take no seed (``exact``; ``info["seed"]`` is then None).
        polish: follow the sampler with steepest descent from each sample (:class:`PolishComposite`).
        initial_states: starting states for samplers that take them (neal, tabu, steepest):
            an (S × n) or (n,) array in ``bqm.variables`` order, a SampleSet, or (array, labels).
        **params: passed to the sampler; every name must be in ``sampler.parameters``
            (neal and tabu would otherwise silently ignore a misspelt option).

    Returns:
        A SampleSet whose energies are ``bqm.energies`` of its samples, lowest energy first,
        with ``info``: sampler, params (as given, plus neal's beta_range), seed, polish,
        wall_time_s, num_variables, num_reads, best_energy, sampler_energy_error (largest
        difference between the sampler's own energies and dimod's), and the sampler's own info.

    Raises:
        QuboNNError: unknown sampler or parameter, bad seed or initial states, a parameter value
        the sampler refuses, or a missing optional package.
    """
    t0 = time.perf_counter()
    if not isinstance(bqm, dimod.BinaryQuadraticModel):
        raise QuboNNError(f"expected a dimod.BinaryQuadraticModel, got {type(bqm).__name__}")
    if isinstance(sampler, str):
        name, smp = sampler, get_sampler(sampler)
    elif isinstance(sampler, dimod.Sampler):
        name, smp = type(sampler).__name__, sampler
    else:
        raise QuboNNError(f"sampler must be a name ({', '.join(SAMPLERS)}) or a dimod.Sampler, "
                          f"got {type(sampler).__name__}")
    accepted = set(smp.parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        options = ", ".join(sorted(accepted - set(_OWN_ARGS))) or "none"
        raise QuboNNError(f"sampler {name!r} does not accept parameter(s) {', '.join(unknown)}; "
                          f"accepted: {options}")
    check_param_types(name, params)
    kwargs = dict(params)
    if "seed" in accepted:
        seed = draw_seed() if seed is None else check_seed(seed)
        kwargs["seed"] = seed
    else:
        seed = None
    n_init = None
    if initial_states is not None:
        if "initial_states" not in accepted:
            raise QuboNNError(f"sampler {name!r} does not take initial_states")
        arr, labels = samples_array(initial_states, bqm)
        kwargs["initial_states"] = (arr, labels)
        n_init = len(arr)
    runner = PolishComposite(smp) if polish else smp

    try:
        raw = runner.sample(bqm, **kwargs)
    except QuboNNError:
        raise
    except (ValueError, TypeError) as exc:
        raise QuboNNError(f"sampler {name!r} refused its input: {exc}") from exc
    if hasattr(raw, "resolve"):
        raw.resolve()

    out, energy_error = rescore(raw, bqm)
    sampler_info = jsonable(raw.info)
    used = jsonable({k: v for k, v in params.items() if k != "integer_form"})
    if "beta_range" in sampler_info and "beta_range" not in used:
        used["beta_range"] = sampler_info["beta_range"]
    out.info.clear()
    out.info.update(sampler_info)
    out.info.update({
        "sampler": name,
        "params": used,
        "seed": seed,
        "polish": bool(polish),
        "initial_states": n_init,
        "num_variables": bqm.num_variables,
        "num_reads": len(out),
        "best_energy": float(out.first.energy) if len(out) else None,
        "sampler_energy_error": energy_error,
        "wall_time_s": time.perf_counter() - t0,
    })
    return out
