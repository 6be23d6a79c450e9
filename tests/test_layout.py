"""The layout rules of docs/design.md (§4, §5), checked: package mapping and import boundaries."""

from __future__ import annotations

import re
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


# ---------------------------------------------------------------- the repository stands alone
# Everything the code relies on is written in the repository (docs/), and every pointer into
# docs/methods.md names a section that exists. The forbidden names below are spelled in pieces
# so this file does not mention them itself.
_EXTERNAL = re.compile(r"\.\./shared|\bMETHODS\s+\d|\b(?:DESIGN|SANDBOXES|STYLE)\.md\b")
_MD_MENTION = re.compile(r"(?<![\w./-])((?:\.\.?/)*[\w-][\w./-]*\.md)(?![\w-])")
_URL = re.compile(r"[a-z][a-z+.-]*://\S+")
GENERATED_MD = {"report.md"}  # files agentrl writes (agentrl compare's report), not documents
METHODS_DOC = ROOT / "docs" / "methods.md"
_POINTER = re.compile(r"(?:docs/)?methods\.md\s*§\s*([^\s,;:)\]`'\"|]*)")
_HEADING = re.compile(r"^#{2,3} (\d+[a-z]?)\. ", re.M)


def _tracked_text_files() -> dict[Path, str]:
    """Every git-tracked text file (binary files and files that are not UTF-8 left out)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:  # the tests run from a clone (.ci/run)
        pytest.fail(f"git ls-files failed in {ROOT} ({e}); run the tests from a git checkout")
    files = {}
    for rel in filter(None, out.decode().split("\0")):
        path = ROOT / rel
        try:
            data = path.read_bytes()
        except OSError:  # deleted in the working tree
            continue
        if b"\0" in data:
            continue
        try:
            files[path] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    assert len(files) > 100, f"only {len(files)} tracked text files found"
    return files


def _md_exists(mention: str, where: Path) -> bool:
    name = mention.rstrip(".")
    return (Path(name).name in GENERATED_MD
            or any((base / name).is_file() for base in (where.parent, ROOT, ROOT / "docs")))


def test_no_file_points_outside_the_repository():
    """No tracked file names a .md document that is not in the repository, the shared folder
    outside it, or the tags of the documents that used to live there."""
    bad = []
    for path, text in _tracked_text_files().items():
        rel = path.relative_to(ROOT)
        for i, line in enumerate(text.splitlines(), 1):
            if _EXTERNAL.search(line):
                bad.append(f"{rel}:{i}: points outside the repo: {line.strip()[:120]}")
            for m in _MD_MENTION.finditer(_URL.sub("", line)):
                if not _md_exists(m.group(1), path):
                    bad.append(f"{rel}:{i}: names {m.group(1)}, which is not in the repository")
    assert not bad, "write what the code relies on into docs/ and point there:\n" + "\n".join(bad)


def _methods_sections() -> set[str]:
    labels = set(_HEADING.findall(METHODS_DOC.read_text()))
    assert {"0a", "1e", "13e", "15f"} <= labels, f"docs/methods.md lost its numbered sections: {sorted(labels)}"
    return labels


def test_every_methods_doc_pointer_names_an_existing_section():
    """``docs/methods.md §2e`` (in any tracked file) and ``§2e`` inside docs/methods.md itself
    name a heading ``## 2. ...`` / ``### 2e. ...`` of docs/methods.md."""
    labels = _methods_sections()
    found, bad = 0, []
    for path, text in _tracked_text_files().items():
        rel = path.relative_to(ROOT)
        pattern = re.compile(r"§\s*([^\s,;:)\]`'\"|]*)") if path == METHODS_DOC else _POINTER
        for i, line in enumerate(text.splitlines(), 1):
            for m in pattern.finditer(line):
                found += 1
                label = m.group(1).rstrip(".")
                if label not in labels:
                    bad.append(f"{rel}:{i}: §{m.group(1)} is not a section of docs/methods.md")
    assert found > 50, f"only {found} pointers to docs/methods.md found: is the pattern still right?"
    assert not bad, "\n".join(bad)


_CITATION = re.compile(r"\bEqs?\.\s?\d|\bSec\.\s?\d|§\s?\d|\bAlgorithm\s\d|(?i:\bequation\b)")
_NO_CODE = re.compile(r"\bno (?:reference|official) (?:code|repositor)", re.I)
_SAYS_NO_CODE = "no official code was available to check against"


def _shipped_components():
    from agentrl.algorithms import REGISTRIES

    entries = [e for reg in REGISTRIES.values() for e in reg if e.obj.__module__.startswith("agentrl.algorithms")]
    assert len(entries) >= 26, [e.name for e in entries]
    return entries


def test_every_component_cites_its_paper_and_says_when_no_code_was_checked():
    """Each shipped component's docstring (or ``paper=``) cites an equation or section, and a
    component whose ``source=`` says there was no reference code says so in its docstring."""
    bad = []
    for e in _shipped_components():
        doc = " ".join((e.obj.__doc__ or "").split())
        if not (_CITATION.search(doc) or _CITATION.search(e.paper)):
            bad.append(f"{e.kind} {e.name!r}: no equation or section cited (docstring or paper=)")
        if _NO_CODE.search(e.source) and _SAYS_NO_CODE not in doc.lower():
            bad.append(f"{e.kind} {e.name!r}: source={e.source!r}, but the docstring does not say "
                       f"{_SAYS_NO_CODE!r}")
    assert not bad, "\n".join(bad)
