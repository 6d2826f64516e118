"""The package's shape, read from the sources: no import cycle, no library module importing the CLI or
argparse, no function longer than MAX_FUNCTION_LINES."""

import ast
from pathlib import Path

SRC = Path(__file__).parents[2] / "src" / "abft"
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The abft modules (and argparse) `name` imports, at any level, type-checking-only imports left out."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.dump(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [(module, a.name) for a in node.names]
        else:
            continue
        for module, attr in targets:
            if module == "argparse":
                found.add("argparse")
            elif attr and f"{module}.{attr}" in modules:
                found.add(f"{module}.{attr}")
            elif module in modules:
                found.add(module)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _is_cli(name: str) -> bool:
    return name == "abft.cli" or name.startswith("abft.cli.")


def test_library_modules_import_neither_the_cli_nor_argparse():
    bad = sorted(
        f"{name} imports {target}"
        for name, targets in _graph().items()
        if not _is_cli(name)
        for target in targets
        if target == "argparse" or _is_cli(target)
    )
    assert bad == []


def test_no_import_cycles():
    graph = {name: targets - {"argparse"} for name, targets in _graph().items()}
    cycles, state = [], {}

    def visit(node, path):  # depth-first; a back edge closes a cycle
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_functions_are_short():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_building_the_cli_parser_loads_no_model_stack():
    """`abft --help` stays quick (0.3 s, was 3.4 s with torch): the parser needs settings and registries, not
    torch, transformers or matplotlib."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "matplotlib", "abft.attention", "abft.runner")
    code = "import sys; from abft.cli import build_parser; build_parser(); "
    code += f"print([m for m in {heavy} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
