"""The package's shape: no import cycle among its modules, and functions short enough to read.

Every import counts, at module level or inside a function: a cycle that only a function-level
import hides is still a cycle for whoever reads the code.
"""

import ast
from pathlib import Path

import pecft_cli

PACKAGE = Path(pecft_cli.__file__).parent
MAX_LINES = 80
MAX_PARAMETERS = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module, known: set[str]) -> set[str]:
    """The package modules a module imports: `from pkg import name` names the submodule
    `pkg.name` when there is one, else `pkg` itself."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module in known:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    trees = modules()
    graph = {name: imports(tree, set(trees)) - {name} for name, tree in trees.items()}
    assert cycle(graph) is None, " -> ".join(cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_evaluation_generation_and_merging_do_not_import_the_training_loop() -> None:
    trees = modules()
    graph = {name: imports(tree, set(trees)) for name, tree in trees.items()}
    for command in ("pecft_cli.eval_run", "pecft_cli.generate", "pecft_cli.merge"):
        reached, pending = set(), [command]
        while pending:
            for target in graph[pending.pop()] - reached:
                reached.add(target)
                pending.append(target)
        assert "pecft_cli.train" not in reached, command
        assert "pecft_cli.optimize" not in reached, command


def functions() -> list[tuple[str, ast.FunctionDef]]:
    found = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((name, node))
    return found


def test_no_function_is_longer_than_a_screen() -> None:
    long = [
        f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for module, node in functions()
        if node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not long, long


def test_no_function_takes_more_than_eight_parameters_but_the_commands() -> None:
    """A Typer command's parameters are its options; everything else passes an object."""
    wide = []
    for module, node in functions():
        arguments = node.args
        count = len(arguments.posonlyargs + arguments.args + arguments.kwonlyargs)
        count -= bool(arguments.args and arguments.args[0].arg in ("self", "cls"))
        is_command = any(
            isinstance(d, ast.Call) and getattr(d.func, "attr", "") == "command"
            for d in node.decorator_list
        )
        if count > MAX_PARAMETERS and not is_command:
            wide.append(f"{module}.{node.name}: {count} parameters")
    assert not wide, wide
