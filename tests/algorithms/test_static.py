"""Static checks: no host syncs in the methods code, randomness only through a generator,
import boundaries, registry metadata, the `agentrl methods list` command and the docs example."""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import agentrl.algorithms as algorithms
from agentrl.algorithms import REGISTRIES
from agentrl import methods_cli

PKG = Path(algorithms.__file__).parent
ROOT = PKG.parents[1]
# Calls that move data to the host or wait for the device (or produce data-dependent shapes,
# which sync on CUDA). `.to(...)` and shapes are fine.
SYNC_ATTRS = {"item", "tolist", "cpu", "numpy", "nonzero", "unique", "unique_consecutive", "masked_select",
              "argwhere", "synchronize", "__bool__"}
RANDOM_FNS = {"rand", "randn", "randint", "randperm", "bernoulli", "multinomial", "normal", "rand_like",
              "randn_like", "randint_like", "uniform_", "normal_", "exponential_"}
# cli.py prints and is not on the training path.
EXEMPT: set[str] = set()


def _sources():
    return [p for p in sorted(PKG.glob("*.py")) if p.name not in EXEMPT]


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.name)
def test_no_host_sync_calls(path):
    tree = ast.parse(path.read_text())
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in SYNC_ATTRS or name == "print":
                bad.append(f"{path.name}:{node.lineno} {name}()")
            if name in RANDOM_FNS and not any(k.arg == "generator" for k in node.keywords):
                bad.append(f"{path.name}:{node.lineno} {name}() without generator=")
            if name == "tensor" and any(k.arg == "device" for k in node.keywords):
                bad.append(f"{path.name}:{node.lineno} torch.tensor(..., device=) copies host data to the device; "
                           f"use torch.full/zeros or cache the tensor")
    assert not bad, "host syncs / unseeded randomness in the methods code:\n" + "\n".join(bad)


def test_no_tensor_truthiness_in_losses():
    # `if tensor:` / `while tensor` would sync; in the loss/shaping modules every `if`/`while`
    # test must be on Python values. Heuristic: no comparisons against names ending in the
    # common tensor names inside if/while tests.
    suspicious = re.compile(r"^\s*(if|while)\s+.*\b(loss_mask|advantages|logprobs|ratio|entropy|cov|mask)\b\s*(\)|:|[<>=!]=?|\.any|\.all)")
    for name in ("losses.py", "shaping.py", "token_masks.py", "aggregation.py", "kl.py", "estimators.py"):
        for i, line in enumerate((PKG / name).read_text().splitlines(), 1):
            assert not suspicious.search(line), f"{name}:{i}: data-dependent Python control flow: {line.strip()}"


def test_import_boundary_only_torch_and_project_types():
    code = "import sys, agentrl.algorithms; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    project = [m for m in out if m.startswith("agentrl") and not m.startswith("agentrl.algorithms")]
    assert set(project) <= {"agentrl", "agentrl.types", "agentrl.ranges"}, project
    heavy = [m for m in out if m.split(".")[0] in {"ray", "vllm", "gymnasium", "transformers", "yaml", "agentrl_envs"}]
    assert not heavy, heavy


def test_registry_metadata_and_docstrings():
    for kind, reg in REGISTRIES.items():
        assert len(reg) > 0, kind
        for entry in reg:
            assert entry.summary and "\n" not in entry.summary and len(entry.summary) <= 110, entry.name
            assert entry.paper, entry.name
            doc = entry.obj.__doc__ or ""
            assert len(doc) > 80, f"{kind}/{entry.name} needs a real docstring"


def _parser():
    p = argparse.ArgumentParser(prog="agentrl")
    sub = p.add_subparsers(dest="command")
    methods_cli.add_parser(sub)
    return p


def test_methods_list_command(capsys):
    args = _parser().parse_args(["methods", "list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for kind, reg in REGISTRIES.items():
        assert f"{kind}:" in out
        for name in reg.names():
            assert re.search(rf"^\s+{re.escape(name)}\s", out, re.M), name
    assert "arXiv 2509.09265" in out  # EMPG's reference
    args = _parser().parse_args(["methods", "list", "--kind", "controllers", "--json", "--options"])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"controllers"} and {e["name"] for e in data["controllers"]} == {"bapo", "entropic",
                                                                                         "prorl", "skywork"}
    args = _parser().parse_args(["methods", "list", "--kind", "loses"])
    assert args.func(args) == 2
    assert "Did you mean 'losses'" in capsys.readouterr().out


def test_the_learner_and_the_composition_layer_name_no_component():
    """A method lives in its own file: the learner and algorithm.py never compare a registered
    component's name (each component describes itself: split_invariant, needs_entropy_grad,
    LossOutput.clipped, mini_batch_stats, check_config)."""
    from agentrl.algorithms import REGISTRIES

    names = {e.name for reg in REGISTRIES.values() for e in reg}
    files = [*(ROOT / "agentrl" / "learner").glob("*.py"), ROOT / "agentrl" / "algorithms" / "algorithm.py"]
    for path in files:
        text = path.read_text()
        found = sorted(n for n in names if re.search(rf"[\"']{re.escape(n)}[\"']", text))
        assert not found, f"{path.relative_to(ROOT)} names components {found}"
