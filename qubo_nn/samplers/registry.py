"""The sampler registry: names -> dimod samplers (imported when first used), and :func:`sample`,
the one call that validates, seeds, times and re-scores.

The registry names each sampler by ``"module:Class"`` so that importing it loads no sampler
module: the level solvers (:mod:`qubo_nn.samplers.level_solvers`) call :func:`sample`, and the
level samplers (``gptq``/``cd``/``pipeline``) call the level solvers, without an import circle.
"""
from __future__ import annotations

import importlib
import inspect
import math
import time
from typing import Any

import dimod

from qubo_nn.errors import QuboNNError
from qubo_nn.samplers.base import check_seed, draw_seed, jsonable, rescore, samples_array
from qubo_nn.samplers.polish import PolishComposite

#: name -> "module:Class" under qubo_nn.samplers (imported by :func:`sampler_class` when used)
SAMPLERS: dict[str, str] = {
    "neal": "anneal:NealSampler",
    "tabu": "tabu_search:TabuSampler",
    "steepest": "steepest:SteepestDescentSolver",
    "exact": "exact:ExactSampler",
    "sb": "bifurcation:SBSampler",
    "random": "random_baseline:RandomSampler",
    "dwave": "dwave_leap:DWaveLeapSampler",
    "gptq": "classical:GPTQSampler",
    "cd": "classical:CDSampler",
    "pipeline": "pipeline:PipelineSampler",
    "decompose": "decompose:DecomposeSampler",
    "batch-anneal": "batch_anneal:BatchAnnealSampler",
}
DEFAULT_SAMPLER = "neal"


def sampler_class(name: str) -> type[dimod.Sampler]:
    """The class registered as ``name`` (its module imported now)."""
    if name not in SAMPLERS:
        raise QuboNNError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    module, attr = SAMPLERS[name].split(":")
    return getattr(importlib.import_module(f"qubo_nn.samplers.{module}"), attr)


#: Expected types of parameter values (checked by :func:`sample`); None is accepted where a
#: parameter is optional. Names not listed are passed through unchecked.
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "num_reads": (int,), "num_sweeps": (int,), "num_restarts": (int,), "timeout": (int,),
    "max_iter": (int,), "convergence": (int,), "size": (int,), "rounds": (int,), "window_levels": (int,),
    "time_limit": (int, float), "time_budget_s": (int, float), "max_time": (int, float),
    "act_order": (bool,), "pairs": (bool,), "encoding": (str,), "subsampler": (str,), "start": (str,),
    "device": (str,),
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
    return sampler_class(name)()


def describe() -> list[dict[str, Any]]:
    """One row per registered sampler: name, available, why not, parameters, one-line summary."""
    rows = []
    for name in SAMPLERS:
        cls = sampler_class(name)
        try:
            params = sorted(get_sampler(name).parameters)
            available, reason = True, None
        except QuboNNError as exc:
            params = sorted(getattr(cls, "PARAMETER_NAMES", ()))
            available, reason = False, str(exc)
        doc = (inspect.getdoc(importlib.import_module(cls.__module__)) or "").split("\n")[0]
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
    from qubo_nn.io.bqm_files import check_energy_range

    check_energy_range(bqm)   # NaN/Inf or biases whose energies overflow: refused before any sampler sees them
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
            raise QuboNNError(f"sampler {name!r} does not take initial states (it has no starting point to set), "
                              f"but initial states were given; use a sampler that takes them "
                              f"({', '.join(n for n in ('neal', 'tabu', 'steepest') if n in SAMPLERS)}) or give none")
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
