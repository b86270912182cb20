"""The README's command-line chain runs as written, and prints what the README shows.

The chain block (the ```console block after the ``<!-- chain -->`` marker) holds each command
(``$ qubo-nn ...``) followed by the output it printed in the recorded run. Here every command
runs in order in a temporary folder, on tiny settings appended to it (later click options
override earlier ones: 20 synthetic 16×16 images instead of digits at 64×64, two top-k blocks of
6 weights instead of 10 class rows, short anneals), and
each line of the README's output must appear in the new output once numbers and paths are
masked: same messages, same structure, other numbers.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from qubo_nn.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"features": ["--dataset", "synthetic", "--image-size", "16", "--limit", "20", "--batch-size", "20",
                     "--device", "cpu", "--no-progress"],
        "solve": ["--num-sweeps", "50"],
        "decode": ["--device", "cpu"]}
TINY["train"] = TINY["features"]
TINY["build"] = TINY["features"] + ["--blocks", "topk", "--block-size", "6", "--num-blocks", "2"]
# lines whose words depend on the run's numbers, not on the command (cache state, per-block decisions)
VARIES = re.compile(r"^(cache hit|extracted|rebuilt|block\s|\.\.\. )")


def chain() -> list[tuple[list[str], list[str]]]:
    text = README.read_text()
    assert "<!-- chain -->" in text, "README lost its chain marker"
    block = text.split("<!-- chain -->", 1)[1].split("```console", 1)[1].split("```", 1)[0]
    steps: list[tuple[list[str], list[str]]] = []
    for line in block.strip("\n").splitlines():
        if line.startswith("$ "):
            steps.append((shlex.split(line[2:]), []))
        else:
            steps[-1][1].append(line)
    return steps


def mask(line: str) -> str:
    line = re.sub(r"[-+]?\d[\d,]*(\.\d+)?(e[-+]?\d+)?", "N", line.strip())
    line = re.sub(r"\S*/\S*", "PATH", line)
    return re.sub(r"\s+", " ", line)


def test_readme_chain_runs_and_prints_what_the_readme_shows(tmp_path, monkeypatch, cache_dir):
    steps = chain()
    assert [s[0][:2] for s in steps] == [["qubo-nn", "features"], ["qubo-nn", "train"], ["qubo-nn", "build"],
                                        ["qubo-nn", "solve"], ["qubo-nn", "decode"]]
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for argv, shown in steps:
        name = argv[1]
        res = runner.invoke(main, argv[1:] + TINY.get(name, []))
        assert res.exit_code == 0, (argv, res.output)
        got = {mask(line) for line in res.output.splitlines()}
        for line in shown:
            if line.strip() and not VARIES.match(line.strip()):
                assert mask(line) in got, (argv, line, res.output)
    assert (tmp_path / "head-qubo.pt").exists()


@pytest.mark.parametrize("needle", [
    "| `dwave` |",                        # the sampler table names what dwave defaults to
    "_QUBO_NN_COMPLETE",                 # shell completion documented
])
def test_readme_documents(needle):
    assert needle in README.read_text()
