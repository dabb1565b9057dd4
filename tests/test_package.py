"""The package's shape: folders in layers, no import cycle, short modules and functions.

Every import counts, at module level or inside a function: a cycle that only a function-level
import hides is still a cycle for whoever reads the code.
"""

import ast
from pathlib import Path

import pecft_cli

PACKAGE = Path(pecft_cli.__file__).parent
MAX_LINES = 80
MAX_PARAMETERS = 8
MAX_MODULE_LINES = 400

# The folders from the ground up: a module may import its own folder, the folders below it and
# the shared root modules (errors, events), never a folder above it nor one beside it.
LAYERS = [
    ["recipe"],
    ["runfolder"],
    ["data"],
    ["model"],
    ["parallel"],
    ["scoring"],
    ["strategies"],
    ["serving"],
    ["training"],
    ["evaluation", "merging"],
    ["cli"],
]
ROOT_MODULES = {"pecft_cli", "pecft_cli.errors", "pecft_cli.events"}


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


def folder(module: str) -> str | None:
    """The folder a module lives in (`pecft_cli.scoring.metrics` -> scoring), None at the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else None


def layer(name: str) -> int:
    (index,) = [i for i, names in enumerate(LAYERS) if name in names]
    return index


def test_every_folder_has_a_layer_and_every_root_module_is_shared() -> None:
    folders = {folder(name) for name in modules()} - {None}
    assert folders == {name for names in LAYERS for name in names}
    roots = {name for name in modules() if folder(name) is None}
    assert roots == ROOT_MODULES | {"pecft_cli.__main__"}


def upward_imports(trees: dict[str, ast.Module]) -> list[str]:
    """Every import that breaks the layers: upward, sideways, or from a shared root module."""
    wrong = []
    for name, tree in trees.items():
        here = folder(name)
        for target in imports(tree, set(trees)):
            there = folder(target)
            if here is None:
                allowed = target in ROOT_MODULES or name == "pecft_cli.__main__"
            elif there is None:
                allowed = target in ROOT_MODULES
            else:
                allowed = there == here or layer(there) < layer(here)
            if not allowed:
                wrong.append(f"{name} -> {target}")
    return wrong


def test_folders_import_only_their_own_folder_and_the_layers_below() -> None:
    wrong = upward_imports(modules())
    assert not wrong, wrong


def test_the_layer_rule_catches_an_upward_and_a_sideways_import() -> None:
    scoring = ast.parse("from pecft_cli.training.loop import run")
    merging = ast.parse("from pecft_cli.evaluation import report")
    trees = modules() | {"pecft_cli.scoring.x": scoring, "pecft_cli.merging.y": merging}
    assert upward_imports(trees) == [
        "pecft_cli.scoring.x -> pecft_cli.training.loop",
        "pecft_cli.merging.y -> pecft_cli.evaluation.report",
    ]


def test_evaluation_generation_and_merging_do_not_reach_the_training_loop() -> None:
    trees = modules()
    graph = {name: imports(tree, set(trees)) for name, tree in trees.items()}
    for command in (
        "pecft_cli.evaluation.rerun",
        "pecft_cli.serving.generate",
        "pecft_cli.merging.merge",
    ):
        reached, pending = set(), [command]
        while pending:
            for target in graph[pending.pop()] - reached:
                reached.add(target)
                pending.append(target)
        assert not any(folder(target) == "training" for target in reached), command


def test_no_module_is_longer_than_four_hundred_lines() -> None:
    long = {
        module_name(path): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, long


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
    """A command's parameters are its options (the cli folder); everything else passes an
    object."""
    wide = []
    for module, node in functions():
        arguments = node.args
        count = len(arguments.posonlyargs + arguments.args + arguments.kwonlyargs)
        count -= bool(arguments.args and arguments.args[0].arg in ("self", "cls"))
        if count > MAX_PARAMETERS and folder(module) != "cli":
            wide.append(f"{module}.{node.name}: {count} parameters")
    assert not wide, wide


HEAVY = {"torch", "transformers", "bitsandbytes", "peft", "accelerate", "datasets"}
# What `validate` and `train` run before their first model library, `report`, and the app itself.
EARLY = [
    "pecft_cli.cli.app",
    "pecft_cli.recipe.load",
    "pecft_cli.data.render",
    "pecft_cli.evaluation.report",
]


def module_level(tree: ast.Module) -> ast.Module:
    """The imports a module runs when it is imported: at its top level, in `try` and in `if`
    blocks, but not under `if TYPE_CHECKING:` nor inside functions."""
    found: list[ast.stmt] = []
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
            pending += [stmt for handler in node.handlers for stmt in handler.body]
    return ast.Module(body=found, type_ignores=[])


def libraries(tree: ast.Module) -> set[str]:
    """The top-level names of the libraries a module imports."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_what_runs_before_the_first_model_library_imports_none_at_module_level() -> None:
    trees = {name: module_level(tree) for name, tree in modules().items()}
    reached, pending = set(EARLY), list(EARLY)
    while pending:
        for target in imports(trees[pending.pop()], set(trees)) - reached:
            reached.add(target)
            pending.append(target)
    heavy = {name: sorted(libraries(trees[name]) & HEAVY) for name in sorted(reached)}
    assert "pecft_cli.data.files" in reached and "pecft_cli.cli.validate" in reached
    assert not {name: found for name, found in heavy.items() if found}
