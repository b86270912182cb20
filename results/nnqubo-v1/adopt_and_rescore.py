"""Adopt batch-anneal's lower answers as best known in the committed manifest; rescore every recorded run."""
import json, time
from pathlib import Path
from qubo_nn.runtime import atomic_write_json, to_jsonable
from qubo_nn.suite.generate import COMMITTED_MANIFEST
from qubo_nn.suite.harness import adopt_new_bests, rescore, write_results
out = Path("results/nnqubo-v1")
man = json.loads(COMMITTED_MANIFEST.read_text())
ba = json.loads((out / "batch-anneal.json").read_text())
changed = adopt_new_bests(man, ba)
print("new best known:", len(changed), changed)
man.setdefault("best_known_updates", []).append({
    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from": "results/nnqubo-v1/batch-anneal.json",
    "instances": changed, "rule": "harness.adopt_new_bests: lower than E* by more than the run's tol (1e-6 relative)"})
atomic_write_json(COMMITTED_MANIFEST, to_jsonable(man))
for name in ("cd", "tabu", "neal", "sb", "pipeline", "batch-anneal"):
    res = json.loads((out / f"{name}.json").read_text())
    before = sum(1 for r in res["instances"] if r.get("success_probability"))
    rescore(res, man)
    after = sum(1 for r in res["instances"] if r.get("success_probability"))
    res.setdefault("rescored", []).append({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                           "against": f"{COMMITTED_MANIFEST.name} after adopting batch-anneal's best known on {len(changed)} instances"})
    write_results(res, out, name)
    print(name, "reached E*:", before, "->", after)
