"""Every optional or version-bound API the code calls exists in what is installed, and the
floors in pyproject.toml are at least the versions that introduced them.

A failure names the API, the installed version and the version it needs, so an old torch or
transformers fails here in one line instead of deep in a learner rank (an FSDP2 call) or, worse,
silently (transformers before 4.56 does not take ``dtype=``). vLLM and Ray are checked when
installed (vLLM is not on CPU machines).
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# API -> (distribution, the first version that has it, where agentrl uses it)
NEEDS = {
    "torch.distributed.fsdp.fully_shard": ("torch", "2.6", "agentrl/distributed/fsdp.py shard_policy"),
    "torch.distributed.fsdp.FSDPModule": ("torch", "2.6", "agentrl/distributed/fsdp.py shard_policy"),
    "torch.distributed.fsdp.MixedPrecisionPolicy": ("torch", "2.6", "agentrl/distributed/fsdp.py (bf16 runs)"),
    "torch.distributed.fsdp.FSDPModule.set_gradient_divide_factor": ("torch", "2.8", "agentrl/distributed/fsdp.py: gradients summed"),
    "torch.distributed.fsdp.FSDPModule.set_force_sum_reduction_for_comms": ("torch", "2.8", "agentrl/distributed/fsdp.py: gloo SUM"),
    "torch.distributed.checkpoint.state_dict.get_model_state_dict": ("torch", "2.2", "agentrl/distributed/fsdp.py full_state_dict"),
    "torch.distributed.checkpoint.state_dict.set_model_state_dict": ("torch", "2.2", "agentrl/distributed/fsdp.py load_full_state_dict"),
    "torch.distributed.checkpoint.state_dict.get_optimizer_state_dict": ("torch", "2.2", "agentrl/distributed/fsdp.py"),
    "torch.distributed.checkpoint.state_dict.set_optimizer_state_dict": ("torch", "2.2", "agentrl/distributed/fsdp.py"),
    "torch.distributed.checkpoint.state_dict.StateDictOptions": ("torch", "2.2", "agentrl/distributed/fsdp.py"),
}
DTYPE_KWARG = ("transformers", "4.56", "agentrl/learner/policy.py load_model, agentrl/distributed/workers.py build_policy_model")


def _version(dist: str) -> Version:
    from importlib.metadata import version

    return Version(version(dist).split("+")[0])


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _floor(requirement: str) -> Version | None:
    req = Requirement(requirement)
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(lows) if lows else None


def _requirements() -> dict[str, str]:
    """Name -> requirement of every dependency and extra: from pyproject.toml (tomllib, Python
    3.11+), else from the installed package's metadata, which pip wrote from it (Python 3.10)."""
    if sys.version_info >= (3, 11):
        import tomllib

        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        reqs = list(project["dependencies"]) + [r for group in project["optional-dependencies"].values() for r in group]
    else:
        from importlib.metadata import requires

        reqs = [r.split(";")[0].strip() for r in requires("agentrl") or []]
    return {Requirement(r).name: r for r in reqs}


@pytest.mark.parametrize("api", sorted(NEEDS))
def test_every_torch_api_the_code_calls_is_there(api):
    dist, needed, where = NEEDS[api]
    try:
        _resolve(api)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{api} is missing from {dist} {_version(dist)} ({type(e).__name__}: {e}); {where} needs {dist}>={needed}")


def test_transformers_takes_dtype(tmp_path):
    """from_pretrained / from_config(dtype=...): before 4.56 the keyword was torch_dtype (and an
    unknown dtype= could load float32 without a word)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    dist, needed, where = DTYPE_KWARG
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2)
    msg = f"transformers {_version(dist)} did not honour dtype=: {where} need {dist}>={needed}"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16, msg
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert next(loaded.parameters()).dtype == torch.bfloat16, msg


def test_pyproject_floors_cover_what_the_code_needs():
    """The torch and transformers floors are at least the newest version any API above needs, the
    installed versions meet them, and the vllm extra is the range vllm_engine.py was checked
    against (bounded above)."""
    from agentrl.rollout.vllm_engine import VLLM_CHECKED

    reqs = _requirements()
    needed: dict[str, Version] = {}
    for dist, v, _ in list(NEEDS.values()) + [DTYPE_KWARG]:
        needed[dist] = max(needed.get(dist, Version(v)), Version(v))
    for dist, v in needed.items():
        floor = _floor(reqs[dist])
        assert floor is not None and floor >= v, f"pyproject.toml has {reqs[dist]!r}; the code needs {dist}>={v}"
        assert _version(dist) >= v, f"installed {dist} {_version(dist)} is older than the {v} the code needs"
    vllm = Requirement(reqs["vllm"])
    assert str(vllm.specifier) == str(Requirement("vllm" + VLLM_CHECKED).specifier), (
        f"the vllm extra {reqs['vllm']!r} is not the checked range vllm{VLLM_CHECKED} (agentrl/rollout/vllm_engine.py)")
    assert any(s.operator in ("<", "<=") for s in vllm.specifier), f"the vllm extra {reqs['vllm']!r} has no upper bound"
    torch_req = Requirement(reqs["torch"])
    assert torch_req.specifier.contains("2.13.0"), f"{reqs['torch']!r} must admit torch 2.13.0 (the CPU wheel CI installs)"


def test_ray_apis_and_vllm_when_installed():
    """vLLM (GPU machines only) in the checked range with the keywords agentrl passes; Ray's
    placement-group API (the learner ranks, the generation workers)."""
    from agentrl.rollout.vllm_engine import VLLM_CHECKED

    try:
        import vllm
    except ImportError:
        vllm = None
    if vllm is not None:
        from packaging.specifiers import SpecifierSet

        v = Version(re.sub(r"[+].*", "", vllm.__version__))
        assert v in SpecifierSet(VLLM_CHECKED), f"vllm {v} is outside the range agentrl was checked against ({VLLM_CHECKED})"
        from vllm.engine.arg_utils import EngineArgs

        fields = set(getattr(EngineArgs, "__dataclass_fields__", {}))
        for kw in ("logprobs_mode", "worker_extension_cls"):
            assert kw in fields, f"vllm {v} EngineArgs has no {kw!r}: agentrl/rollout/vllm_engine.py needs vllm{VLLM_CHECKED}"
    try:
        import ray  # noqa: F401  (a core dependency: its absence is a broken install, not a skip)
    except ImportError as e:
        pytest.fail(f"ray is not importable ({e}); it is a dependency of agentrl: pip install -e .")
    for api in ("ray.util.placement_group.placement_group", "ray.util.placement_group.remove_placement_group",
                "ray.util.scheduling_strategies.PlacementGroupSchedulingStrategy"):
        try:
            _resolve(api)
        except (ImportError, AttributeError) as e:
            pytest.fail(f"{api} is missing from ray {_version('ray')} ({e}); agentrl/distributed needs ray>=2.40")
