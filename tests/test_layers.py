"""The layers and the public surface, read from the source (ast; nothing is imported or run).

Layers, each importing only those below it and itself: bench -> evolve -> prune -> core (tests may
import anything). Across two of our top-level packages an import may not
- run up the layers (inside functions too),
- name a private module or name (leading underscore), or
- take a name that the source module does not list in its `__all__` (a module without `__all__`
  offers nothing to other packages; importing a public submodule itself is fine, and then every
  `alias.name` used must be in that submodule's `__all__`).
"""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import module_file, public_names

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("core", "prune", "evolve", "bench")  # bottom to top


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(root: Path, path: Path, node: ast.ImportFrom) -> str:
    """The module an ImportFrom names, relative imports resolved against the importing file."""
    if not node.level:
        return node.module or ""
    package = module_name(root, path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


class Checker:
    """Collects the problems of one file: each names file:line, the import as written and why."""

    def __init__(self, root: Path, path: Path):
        self.root, self.path = root, path
        self.package = path.relative_to(root).parts[0]
        self.problems: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> our module in another package it is bound to

    def report(self, node: ast.AST, why: str) -> None:
        where = self.path.relative_to(self.root).as_posix()
        self.problems.append(f"{where}:{node.lineno}: `{ast.unparse(node)}`: {why}")

    def check(self) -> list[str]:
        tree = ast.parse(self.path.read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self.check_module(node, alias.name)
                    top = alias.name.split(".")[0]  # `import core.x` binds `core`; `import core.x as y` binds y
                    self.bind(alias.asname or top, alias.name if alias.asname else top)
            elif isinstance(node, ast.ImportFrom):
                self.check_from(node)
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in self.aliases and isinstance(parents.get(node), ast.Attribute):
                self.check_attribute(parents[node], parents)
        return self.problems

    def other_package(self, module: str) -> str | None:
        top = module.split(".")[0]
        return top if top in LAYERS and top != self.package else None

    def check_module(self, node: ast.AST, module: str) -> bool:
        """Layer and privacy of a module imported from another of our packages; True when it is one."""
        top = self.other_package(module)
        if top is None:
            return False
        if LAYERS.index(top) > LAYERS.index(self.package):
            self.report(node, f"{self.package} imports {top}, a layer above it ({' -> '.join(reversed(LAYERS))})")
        private = [p for p in module.split(".") if p.startswith("_")]
        if private:
            self.report(node, f"private module {private[0]} of another package")
        return True

    def bind(self, local: str, module: str) -> None:
        if self.other_package(module):
            self.aliases[local] = module

    def check_from(self, node: ast.ImportFrom) -> None:
        module = absolute(self.root, self.path, node)
        if not self.check_module(node, module):
            return
        for alias in node.names:
            name = alias.name
            if module_file(self.root, f"{module}.{name}") is not None:  # a submodule
                if name.startswith("_"):
                    self.report(node, f"private module {name} of another package")
                self.bind(alias.asname or name, f"{module}.{name}")
            else:
                self.check_name(node, module, name)

    def check_name(self, node: ast.AST, module: str, name: str) -> None:
        if name.startswith("_"):
            self.report(node, f"private name {name} of another package")
            return
        path = module_file(self.root, module)
        if path is None:
            self.report(node, f"no module {module} in this repository")
            return
        names = public_names(path)
        if names is None:
            self.report(node, f"{module} has no __all__: it offers nothing to other packages")
        elif name != "*" and name not in names:
            self.report(node, f"{name} is not in {module}.__all__ (the public surface: docs/core-api.md for core)")

    def check_attribute(self, node: ast.Attribute, parents: dict[ast.AST, ast.AST]) -> None:
        """`alias.name` (or `alias.sub.name`) where alias is our module from another package: name must be public."""
        module = self.aliases[node.value.id]
        while module_file(self.root, f"{module}.{node.attr}") is not None:  # a submodule: walk down to the name
            module = f"{module}.{node.attr}"
            if node.attr.startswith("_"):
                self.report(node, f"private module {node.attr} of another package")
                return
            if not isinstance(parents.get(node), ast.Attribute):
                return
            node = parents[node]
        self.check_name(node, module, node.attr)


def layer_problems(root: Path = REPO) -> list[str]:
    problems: list[str] = []
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            problems += Checker(root, path).check()
    return problems


def test_layers_and_public_surface():
    problems = layer_problems()
    assert not problems, "imports that break the layers or the public surface:\n" + "\n".join(problems)


def test_the_check_catches_each_kind(tmp_path):
    """Control: a tree with one offence of each kind (and the same imports done right) yields exactly those."""
    files = {
        "core/__init__.py": "",
        "core/api.py": '__all__ = ["public"]\ndef public(): ...\ndef helper(): ...\ndef _private(): ...\n',
        "core/bare.py": "def thing(): ...\n",
        "core/sub/__init__.py": '__all__ = ["Thing"]\nfrom .impl import Thing\n',
        "core/sub/impl.py": "class Thing: ...\n",
        "core/low.py": "def f():\n    import evolve\n    from prune.x import y\n",
        "prune/__init__.py": "",
        "prune/x.py": '__all__ = ["y"]\ny = 1\n',
        "prune/ok.py": ("from core.api import public\nfrom core import api\nfrom core.sub import Thing\n"
                        "import core.api as capi\nimport core.sub.impl\nx = api.public, capi.public\n"),
        "prune/bad.py": ("from core.api import helper\nfrom core.api import _private\nfrom core.bare import thing\n"
                         "from core import api as a\nz = a.helper\nimport core.api\nw = core.api._private\n"),
        "evolve/__init__.py": "",
        "evolve/up.py": "from bench import tool\n",
        "bench/tool.py": "from core.api import public\nfrom prune.x import y\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    problems = layer_problems(tmp_path)
    found = sorted(p.split(": ")[0] + " " + p.split("`: ", 1)[1].split(" ")[0] for p in problems)
    assert found == sorted([
        "core/low.py:2 core", "core/low.py:3 core",                           # up the layers, inside a function
        "evolve/up.py:1 evolve",                                              # up the layers
        "prune/bad.py:1 helper", "prune/bad.py:2 private", "prune/bad.py:3 core.bare",
        "prune/bad.py:5 helper", "prune/bad.py:7 private",                    # through a module alias
    ]), "\n".join(problems)
    message = next(p for p in problems if p.startswith("core/low.py:2"))
    assert message == ("core/low.py:2: `import evolve`: core imports evolve, a layer above it "
                       "(bench -> evolve -> prune -> core)")
