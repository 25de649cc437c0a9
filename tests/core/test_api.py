"""docs/core-api.md matches the code: each `### core.x` section's `Public:` line is core.x's `__all__`.

Read with ast (nothing imported). Also: every name in an `__all__` is defined in its module, and every
field of the dataclasses callers fill or read (TrainOptions, FitResult, Callbacks, StepInfo) is named
in the section that lists the class.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import module_file, public_names

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "core-api.md"
DATACLASSES = ("TrainOptions", "FitResult", "Callbacks", "StepInfo")
NAME = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def defined_names(path: Path) -> set[str]:
    """Top-level names a module binds: defs, classes, assignments, imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def sections(doc: str) -> dict[str, str]:
    """`### core.x` heading -> its text up to the next heading."""
    found: dict[str, str] = {}
    for block in re.split(r"^(?=#)", doc, flags=re.M):
        m = re.match(r"### (core(?:\.\w+)*)\s*\n", block)
        if m:
            found[m.group(1)] = block[m.end():]
    return found


def listed(section: str) -> list[str] | None:
    """The names on a section's `Public:` line (it may wrap; it ends at a blank line)."""
    m = re.search(r"^Public:(.*?)(?:\n\s*\n|\Z)", section, flags=re.M | re.S)
    return NAME.findall(m.group(1)) if m else None


def dataclass_fields(root: Path, name: str) -> list[str] | None:
    for path in sorted((root / "core").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return [s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and hasattr(s.target, "id")]
    return None


def api_problems(doc: str, root: Path = REPO) -> list[str]:
    problems: list[str] = []
    documented = sections(doc)
    for path in sorted((root / "core").rglob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if public_names(path) is not None and module not in documented:
            problems.append(f"{module} has __all__ but no `### {module}` section in docs/core-api.md")
    for module, text in documented.items():
        path = module_file(root, module)
        public = public_names(path) if path else None
        names = listed(text)
        if path is None or public is None:
            why = "has no __all__" if path else "does not exist"
            problems.append(f"docs/core-api.md documents {module}, which {why}")
            continue
        if names is None:
            problems.append(f"docs/core-api.md, {module}: no `Public:` line")
            continue
        for name in sorted(set(public) - set(names)):
            problems.append(f"{module}.__all__ has {name}, missing from its Public: line in docs/core-api.md")
        for name in sorted(set(names) - set(public)):
            problems.append(f"docs/core-api.md lists {module}.{name}, which is not in {module}.__all__")
        for name in sorted(set(public) - defined_names(path)):
            problems.append(f"{module}.__all__ names {name}, which the module does not define")
    for cls in DATACLASSES:
        fields = dataclass_fields(root, cls)
        text = "".join(t for t in documented.values() if cls in (listed(t) or []))
        if fields is None or not text:
            problems.append(f"{cls}: {'no such class in core/' if fields is None else 'no section lists it'}")
            continue
        for field in fields:
            if f"`{field}`" not in text and f"`{field}(" not in text:  # `epochs`=100, `on_train_end(result)`
                problems.append(f"{cls}.{field} is not named (as `{field}`) where docs/core-api.md lists {cls}")
    return problems


def test_doc_matches_the_code():
    problems = api_problems(DOC.read_text())
    assert not problems, "docs/core-api.md and the code disagree:\n" + "\n".join(problems)


def test_the_check_catches_drift():
    """Control: a name dropped from a Public: line, one added, a TrainOptions field left out, a section gone."""
    doc = DOC.read_text()
    assert "Public: `load_hyp`" not in doc and ", `load_hyp`." in doc and "`bf16`='off'" in doc
    drifted = (doc.replace(", `load_hyp`.", ".")
               .replace("Public: `nms`, ", "Public: `nms`, `fast_nms`, ")
               .replace("`bf16`='off'", "bf16='off'")
               .replace("### core.digest\n", "### digest\n"))
    assert sorted(set(api_problems(drifted)) - set(api_problems(doc))) == sorted([
        "core.hyp.__all__ has load_hyp, missing from its Public: line in docs/core-api.md",
        "docs/core-api.md lists core.nms.fast_nms, which is not in core.nms.__all__",
        "TrainOptions.bf16 is not named (as `bf16`) where docs/core-api.md lists TrainOptions",
        "core.digest has __all__ but no `### core.digest` section in docs/core-api.md",
    ])
