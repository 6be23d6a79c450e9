"""The layout rules of docs/design.md (§4, §5), checked: package mapping and import boundaries."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPING = {"agentrl": ROOT / "agentrl", "agentrl.envs": ROOT / "envs", "agentrl.sandboxes": ROOT / "sandboxes"}


def _package_dirs() -> set[str]:
    names = set()
    for prefix, base in MAPPING.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            names.add(".".join([prefix, *rel.parts]) if rel.parts else prefix)
    return names


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = _package_dirs() - listed
    assert not missing, f"add these packages to [tool.setuptools].packages in pyproject.toml: {sorted(missing)}"


def _imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


FORBIDDEN_HEAVY = {"torch", "ray", "vllm"}


@pytest.mark.parametrize(
    "module, forbidden_prefixes",
    [
        # sandboxes: nothing else from the project, never torch/ray/vllm
        ("agentrl.sandboxes", ["agentrl.envs", "agentrl.algorithms", "agentrl.rollout", "agentrl.learner", *FORBIDDEN_HEAVY]),
        # envs: sandboxes + gymnasium, never torch/ray/vllm
        ("agentrl.envs", ["agentrl.algorithms", "agentrl.rollout", "agentrl.learner", *FORBIDDEN_HEAVY]),
    ],
)
def test_import_boundaries(module, forbidden_prefixes):
    loaded = _imported_after(module)
    bad = sorted(m for m in loaded for p in forbidden_prefixes if m == p or m.startswith(p + "."))
    assert not bad, f"{module} must not import {bad}"


def test_building_every_env_imports_no_torch():
    """Constructing each registered env (tool schemas included) keeps torch/ray/vllm out."""
    code = (
        "import sys, agentrl.envs as envs\n"
        "for e in envs.list_envs():\n"
        "    envs.make(e).close()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'vllm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_building_the_cli_parser_imports_neither_torch_nor_ray():
    """`agentrl --help`, `agentrl envs list` and friends start in well under a second: the
    command modules import torch/ray/transformers only inside their handlers (importing torch
    alone took ~2.5 s on the reference machine)."""
    code = ("import sys, agentrl.cli; agentrl.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'ray', 'transformers', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"
