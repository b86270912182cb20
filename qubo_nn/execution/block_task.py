"""One block's sampling as a task that can run in another process or on another machine.

A task is a plain dict (picklable, no dimod objects when it travels)::

    {"bqm": BQM or pack_bqm(BQM), "sampler": name, "params": dict, "seed": int, "polish": bool,
     "initial": (n,) int8 array or None, "keep": int or None,
     "form": levels.IntegerForm or IntegerForm.arrays() (optional)}

:func:`sample_task` (module level, pure: no files, no globals) rebuilds the model when it came
packed, samples it with :func:`qubo_nn.samplers.sample` and returns the samples and energies as
arrays (the SampleSet's record); :func:`to_sampleset` turns them back into a SampleSet on the
driver. In-process executors (threads) hand the BQM object over as it is; executors that ship
tasks (Ray) send :func:`pack_bqm`'s arrays, from which :func:`unpack_bqm` rebuilds a model
with the same variables, biases, offset, vartype, dtype and interactions, so that a seeded
sampler returns the same samples either way. ``form`` (the block's integer form, for the level
samplers gptq, cd and pipeline) travels the same way: the object in-process, its arrays
(:meth:`~qubo_nn.core.problem.IntegerForm.arrays`, NumPy) when shipped; it is passed to the sampler as
``integer_form``.

This module imports neither torch nor the library's builders, so a worker starts fast.
"""
from __future__ import annotations

import time
from typing import Any

import dimod
import numpy as np

from qubo_nn.errors import QuboNNError
from qubo_nn.core.problem import IntegerForm
from qubo_nn.samplers import sample as run_sampler


def pack_bqm(bqm: dimod.BinaryQuadraticModel) -> dict[str, Any]:
    """Compact arrays of ``bqm`` (variables in ``bqm.variables`` order, i < j):

    - ``linear`` (n,), ``offset``, ``vartype`` ("BINARY"/"SPIN"), ``labels`` (None for 0..n−1);
    - ``upper``: the dense strict upper triangle, row-major, n(n−1)/2 values (pair (i, j) at
      i·n − i(i+1)/2 + j − i − 1), when at least half of the pairs interact; else ``row``,
      ``col`` (int32) and ``quad``: the stored interactions, zeros included.

    The arrays keep the BQM's dtype. A dense 2,052-variable block is 16.8 MB in float64.
    """
    n = bqm.num_variables
    variables = list(bqm.variables)
    labels = None if variables == list(range(n)) else variables
    linear, (row, col, quad), offset = bqm.to_numpy_vectors(variable_order=variables)
    out: dict[str, Any] = {"n": n, "linear": linear, "offset": float(offset), "vartype": bqm.vartype.name,
                           "labels": labels}
    pairs = n * (n - 1) // 2
    if pairs and 2 * len(quad) >= pairs and bool(np.all(quad != 0)):
        i = np.minimum(row, col).astype(np.int64)
        j = np.maximum(row, col).astype(np.int64)
        upper = np.zeros(pairs, dtype=quad.dtype)
        upper[i * n - i * (i + 1) // 2 + j - i - 1] = quad
        out["upper"] = upper
    else:
        out.update(row=row.astype(np.int32), col=col.astype(np.int32), quad=quad)
    return out


def unpack_bqm(packed: dict[str, Any]) -> dimod.BinaryQuadraticModel:
    """The BQM of :func:`pack_bqm`'s arrays (same variables, biases, interactions and dtype)."""
    n = int(packed["n"])
    linear = np.asarray(packed["linear"])
    vartype = packed["vartype"]
    if "upper" in packed:
        dense = np.zeros((n, n), dtype=linear.dtype)
        dense[np.triu_indices(n, 1)] = packed["upper"]
        bqm = dimod.BinaryQuadraticModel(linear, dense, packed["offset"], vartype, dtype=linear.dtype)
    else:
        bqm = dimod.BinaryQuadraticModel.from_numpy_vectors(
            linear, (packed["row"], packed["col"], packed["quad"]), packed["offset"], vartype, dtype=linear.dtype)
    if packed["labels"] is not None:
        bqm.relabel_variables(dict(enumerate(packed["labels"])), inplace=True)
    return bqm


def sample_task(task: dict[str, Any]) -> dict[str, Any]:
    """Sample one block (see the module docstring); return its samples as arrays.

    Returns ``{"record": SampleSet.record (samples, energies, num_occurrences, ...),
    "variables": list, "vartype": name, "info": dict, "t_start": s, "t_end": s, "unpack_s": s}``
    (``t_*`` from :func:`time.perf_counter` of the process that ran it). A sampler's refusal
    raises :class:`QuboNNError` as :func:`qubo_nn.samplers.sample` does.
    """
    t0 = time.perf_counter()
    bqm = task["bqm"]
    if isinstance(bqm, dict):
        bqm = unpack_bqm(bqm)
    elif not isinstance(bqm, dimod.BinaryQuadraticModel):
        raise QuboNNError(f"expected a BQM or pack_bqm arrays, got {type(bqm).__name__}")
    form = task.get("form")
    extra: dict[str, Any] = {}
    if form is not None:
        extra["integer_form"] = form if isinstance(form, IntegerForm) else IntegerForm.from_arrays(form)
    t1 = time.perf_counter()
    init = task.get("initial")
    if init is not None:
        init = (np.asarray(init, dtype=np.int8).reshape(1, -1), list(bqm.variables))
    ss = run_sampler(bqm, task["sampler"], seed=task["seed"], polish=task.get("polish", False),
                     initial_states=init, **task.get("params", {}), **extra)
    keep = task.get("keep")
    if keep is not None and len(ss) > keep:
        ss = ss.truncate(keep)
    return {"record": ss.record, "variables": list(ss.variables), "vartype": ss.vartype.name, "info": dict(ss.info),
            "t_start": t0, "t_end": time.perf_counter(), "unpack_s": t1 - t0}


def to_sampleset(result: dict[str, Any]) -> dimod.SampleSet:
    """The SampleSet of a :func:`sample_task` result (same record, variables, vartype and info)."""
    return dimod.SampleSet(result["record"], result["variables"], dict(result["info"]), result["vartype"])
