"""The package's shape: layers that import only downwards, no module reaching into another's
private names, the loop testing no engine's type, and files and functions kept small."""

from __future__ import annotations

import ast
from pathlib import Path

import latentmas

PACKAGE = Path(latentmas.__file__).parent
MODULES = sorted(PACKAGE.rglob("*.py"))
METHOD_CLASSES = {"SingleAgent", "TextMAS", "LatentMAS", "HeteroMAS"}
# Lower layers first; a module may import from its own layer and the ones before it, never
# from a later one (data flows task -> spec -> method -> handoff -> engine, and back out as
# results). The top-level modules not listed are the edge (cli, options, display, __init__).
LAYERS = [
    {"errors", "paths"},
    {"weights", "attention"},
    {"models", "tiny"},
    {"engines"},
    {"inspection"},
    {"teams"},
    {"handoffs"},
    {"methods"},
    {"spec"},
    {"build"},
    {"evaluation"},
    {"training"},
    {"serve"},
]
EDGE = {"cli", "options", "display", "__init__", "__main__"}
MAX_LINES = 450
MAX_PARAMETERS = 8  # self and cls not counted; a CLI command's parameters are its options (typer)


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def top(path: Path) -> str:
    """The first part of a module's path in the package: its layer's name."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def layer_of(name: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if name in layer), None)


def imported_tops(path: Path) -> set[str]:
    """The package's top-level names this module imports, at any depth of the file (lazy
    imports inside functions count: they run too)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # folders between the package and the file
    names = set()
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level > depth:  # reaches the package's top
                parts = (node.module or "").split(".")
                names |= {parts[0]} if parts[0] else {a.name for a in node.names}
            elif node.level <= depth:
                names.add(top(path))
        if (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").startswith("latentmas.")
        ):
            names.add(node.module.split(".")[1])
    return names


def test_every_module_belongs_to_a_layer_or_the_edge():
    assert {top(p) for p in MODULES} - EDGE - set().union(*LAYERS) == set()


def test_imports_only_run_down_the_layers():
    upward = []
    for path in MODULES:
        mine = layer_of(top(path))
        if mine is None:
            continue  # the edge may import anything
        for name in imported_tops(path):
            theirs = layer_of(name)
            if theirs is None or theirs > mine:
                upward.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not upward, upward


def test_no_module_uses_another_objects_private_members():
    found = []
    for path in MODULES:
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Attribute) and private(node.attr):
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    found.append(f"{path.name}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom):
                found += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if private(a.name)]
                if any(private(part) for part in (node.module or "").split(".")):
                    found.append(f"{path.name}:{node.lineno} from {node.module}")
    assert not found, found


def test_the_agent_loop_tests_no_engine_type_and_reaches_into_no_model():
    """methods/ calls the Engine protocol only: no isinstance on an engine, no `engine.lm`."""
    found = []
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        if path.name == "hetero.py":
            continue  # maps one model's embeddings onto another's: it needs the weights
        tree = parsed(path)
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "lm"]:
            function.body = []  # `Method.lm`: the answering model, a property for callers, not the loop's
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "lm" and "engine" in ast.unparse(node.value):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                if any("Engine" in ast.unparse(arg) for arg in node.args[1:]):
                    found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


def test_only_build_solver_decides_which_method_class_to_build():
    builders = []
    for path in MODULES:
        if path.name == "build.py":
            continue
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in METHOD_CLASSES:
                builders.append(f"{path.name}:{node.lineno}")
    assert not builders, builders


def test_files_and_functions_stay_small():
    long_files = [
        f"{p.relative_to(PACKAGE)}: {n}"
        for p in MODULES
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    wide = []
    for path in MODULES:
        for node in ast.walk(parsed(path)):
            commands = [d for d in getattr(node, "decorator_list", []) if "command" in ast.unparse(d)]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and not commands:
                args = node.args
                names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
                count = len([n for n in names if n not in ("self", "cls")])
                if count > MAX_PARAMETERS:
                    wide.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({count})")
    assert not long_files and not wide, (long_files, wide)


def test_the_rule_checks_catch_what_they_look_for():
    """The checks above would see a violation (so they cannot pass vacuously)."""
    tree = ast.parse("from .methods import _shift_row\nx = engine._private\nLatentMAS(lm)\n")
    attrs = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    calls = [getattr(n.func, "id", None) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    imports = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert private(attrs[0]) and private(imports[0]) and calls[0] in METHOD_CLASSES
    assert (
        layer_of("engines")
        < layer_of("handoffs")
        < layer_of("methods")
        < layer_of("spec")
        < layer_of("build")
    )
    assert imported_tops(PACKAGE / "engines" / "transformers.py") >= {"models", "engines"}
    assert len(MODULES) > 40


def test_every_benchmark_script_reports_bad_input_in_one_line():
    """Scripts in benchmarks/ start through `run_script`, so an unknown model or a bad file
    is one line and exit 2 there too, never a traceback (one is checked end to end in
    test_efficiency_benchmark.py)."""
    scripts = sorted((Path(__file__).resolve().parents[1] / "benchmarks").rglob("*.py"))
    entries = {}
    for path in scripts:
        for node in parsed(path).body:
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                entries[path.name] = ast.unparse(node.body[0])
    assert len(entries) >= 10
    assert {name: call for name, call in entries.items() if call != "run_script(main)"} == {}
