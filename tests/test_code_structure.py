"""Code structure: library code logs instead of printing (tools decide what reaches the console)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("eva_transfer", "projects")


def _modules(packages=PRODUCT_PACKAGES):
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _print_calls(tree: ast.AST) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def test_scan_finds_print_calls():
    # the scan itself can see a print, nested or not
    tree = ast.parse("def f():\n    if True:\n        print('x')\nprint(1)\nlogger.info('y')\n")
    assert sorted(_print_calls(tree)) == [3, 4]


def test_no_print_in_library_code():
    found = [f"{path.relative_to(REPO)}:{line}" for path, tree in _modules() for line in _print_calls(tree)]
    assert not found, "library code logs, tools print; print() calls in: " + ", ".join(found)


# --- one definition for each piece of shared core logic -----------------------------------------------------------


def _functions(packages=PRODUCT_PACKAGES):
    for path, tree in _modules(packages):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def _called_names(fn: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
    return names


def _definitions(name: str) -> list[str]:
    return [f"{p.relative_to(REPO)}:{fn.lineno}" for p, fn in _functions() if fn.name == name]


def _function(module: str, name: str) -> ast.FunctionDef:
    tree = ast.parse((REPO / module).read_text())
    found = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(found) == 1, (module, name, len(found))
    return found[0]


def _searches_modules_for_evavit(fn: ast.AST) -> bool:
    """A comprehension or loop over ``*.modules()`` / ``*.named_modules()`` that tests ``isinstance(_, EVAViT)``."""
    for node in ast.walk(fn):
        iters = []
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            iters = [g.iter for g in node.generators]
        elif isinstance(node, ast.For):
            iters = [node.iter]
        over_modules = any(
            isinstance(i, ast.Call)
            and isinstance(i.func, ast.Attribute)
            and i.func.attr in ("modules", "named_modules")
            for i in iters
        )
        tests_evavit = any(
            isinstance(c, ast.Call)
            and isinstance(c.func, ast.Name)
            and c.func.id == "isinstance"
            and any(isinstance(a, ast.Name) and a.id == "EVAViT" for a in ast.walk(c))
            for c in ast.walk(node)
        )
        if over_modules and tests_evavit:
            return True
    return False


def test_one_definition_each():
    for name in ("interpolate_abs_pos", "backbone_prefix", "no_weight_decay_names"):
        assert len(_definitions(name)) == 1, f"{name} defined at {_definitions(name)}"


def test_position_table_resize_lives_in_one_function():
    # the checkpoint converter's resize calls the model's and interpolates nothing itself
    convert = _function("eva_transfer/checkpoint.py", "resize_pos_embed")
    assert "interpolate_abs_pos" in _called_names(convert)
    assert "interpolate" not in _called_names(convert)
    # no other function about absolute position tables interpolates
    interpolating = [
        fn.name
        for _, fn in _functions()
        if ("abs_pos" in fn.name or "pos_embed" in fn.name) and "interpolate" in _called_names(fn)
    ]
    assert interpolating == ["interpolate_abs_pos"], interpolating


def test_the_evavit_search_lives_in_one_function():
    searching = [
        f"{p.relative_to(REPO)}:{fn.name}" for p, fn in _functions() if _searches_modules_for_evavit(fn)
    ]
    assert searching == ["eva_transfer/lr_decay.py:backbone_prefix"], searching
    assert "backbone_prefix" in _called_names(_function("eva_transfer/checkpoint.py", "find_backbone"))


def test_scan_sees_an_evavit_search():
    tree = ast.parse("def f(model):\n    return [m for m in model.modules() if isinstance(m, EVAViT)]\n")
    assert _searches_modules_for_evavit(tree)
    assert not _searches_modules_for_evavit(ast.parse("def f(m):\n    return isinstance(m, EVAViT)\n"))


def test_no_weight_decay_list_comes_from_the_model():
    assert "no_weight_decay_names" in _called_names(
        _function("eva_transfer/lr_decay.py", "param_groups_layer_decay")
    )


def test_converter_resize_matches_a_direct_bicubic_reference():
    import torch
    import torch.nn.functional as F

    from eva_transfer.checkpoint import resize_pos_embed

    pos = torch.randn(1, 1 + 4 * 4, 8)
    ref = F.interpolate(pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2), size=(5, 7), mode="bicubic")
    ref = ref.permute(0, 2, 3, 1).reshape(1, 35, 8)
    torch.testing.assert_close(resize_pos_embed(pos, (5, 7), cls_slot=True), torch.cat([pos[:, :1], ref], 1))
    torch.testing.assert_close(resize_pos_embed(pos, (5, 7), cls_slot=False), ref)
    torch.testing.assert_close(resize_pos_embed(pos[:, 1:], (4, 4), cls_slot=False), pos[:, 1:])


def test_citations_point_inside_the_repository_or_to_papers():
    # "SPEC section N" named a document that is not part of the repository
    stale = [
        str(path.relative_to(REPO))
        for folder in ("eva_transfer", "projects", "configs", "tools", "docs", "tests")
        for path in sorted((REPO / folder).rglob("*"))
        if path.suffix in (".py", ".md")
        and path.name != Path(__file__).name
        and "SPEC section" in path.read_text()
    ]
    assert not stale, stale


# --- the product imports nothing from tests, tools, benchmarks or synthetic-data modules ------------------------------
# The product packages are eva_transfer (the core) and eva_transfer_projects (folder projects/). Measuring code lives
# in eva_transfer_bench (folder benchmarks/), command lines in tools/, and neither is imported by the product.
# Synthetic data is a product feature in its own modules; only the places listed here, which produce a tiny
# recipe's data, import from them.

FOLDER_PACKAGE = {"eva_transfer": "eva_transfer", "projects": "eva_transfer_projects"}
NOT_FOR_THE_PRODUCT = {"tests", "tools", "benchmarks", "eva_transfer_bench"}
SYNTHETIC_DATA_USERS = {
    "eva_transfer_projects.detection.data": "the data package's public maker make_synthetic_dataset, which the "
    "tiny detection recipes' dataset registration calls",
    "eva_transfer_projects.detection.registration": "writes a tiny recipe's synthetic dataset on first use "
    "(dataloader.datasets entries with synthetic=dict(...))",
    "eva_transfer_projects.segmentation.datasets": "SyntheticADEDataset, the tiny segmentation recipes' dataset, "
    "takes its class names and palette from the module that writes the data",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = [FOLDER_PACKAGE.get(rel.parts[0], rel.parts[0]), *rel.parts[1:]]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_synthetic_module(name: str) -> bool:
    return "synthetic" in name.rsplit(".", 1)[-1]


def _product_modules():
    for path, tree in _modules():
        yield _module_name(path), path.name == "__init__.py", tree


def _synthetic_names() -> set[str]:
    """Public names defined at the top of the product's synthetic-data modules."""
    names = set()
    for name, _, tree in _product_modules():
        if _is_synthetic_module(name):
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_")}


def _imports(module: str, is_package: bool, tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import in a module: ``import``, ``from ... import``
    (relative ones resolved) and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target, [a.name for a in node.names]))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value, []))
    return found


def _loads_code_by_path(tree: ast.AST) -> list[int]:
    """Lines that reach code around the import system: ``spec_from_file_location``, ``sys.path`` edits."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
            f = node.func
            if (f.id if isinstance(f, ast.Name) else f.attr) == "spec_from_file_location":
                lines.append(node.lineno)
            elif (
                isinstance(f, ast.Attribute)
                and isinstance(f.value, ast.Attribute)
                and f.value.attr == "path"
                and isinstance(f.value.value, ast.Name)
                and f.value.value.id == "sys"
            ):
                lines.append(node.lineno)
    return lines


def _import_violations(module: str, is_package: bool, tree: ast.AST, synthetic_names: set[str]) -> list[str]:
    problems = [
        f"{module}:{line} loads code by path: the product imports its own packages only"
        for line in _loads_code_by_path(tree)
    ]
    for line, target, names in _imports(module, is_package, tree):
        where = f"{module}:{line} imports {target}" + (f" ({', '.join(names)})" if names else "")
        top = target.split(".")[0]
        submodules = [f"{target}.{n}" for n in names]
        if top in NOT_FOR_THE_PRODUCT:
            problems.append(f"{where}: the product imports nothing from {top}")
        elif module.split(".")[0] == "eva_transfer" and top == "eva_transfer_projects":
            problems.append(f"{where}: the core never imports the plug-ins")
        elif not _is_synthetic_module(module) and module not in SYNTHETIC_DATA_USERS:
            if any(_is_synthetic_module(m) for m in [target, *submodules]) or set(names) & synthetic_names:
                problems.append(
                    f"{where}: synthetic data is imported only where a tiny recipe's data is made"
                )
    return problems


def test_product_imports_nothing_from_tests_tools_benchmarks_or_synthetic_data():
    names = _synthetic_names()
    assert {
        "make_synthetic_dataset",
        "write_synthetic_ade",
        "SYNTHETIC_CLASSES",
    } <= names  # the scan sees them
    problems = [p for m, pkg, tree in _product_modules() for p in _import_violations(m, pkg, tree, names)]
    assert not problems, "\n".join(problems)


def test_each_listed_synthetic_data_user_still_needs_its_place():
    names = _synthetic_names()
    users = {
        m
        for m, pkg, tree in _product_modules()
        if m in SYNTHETIC_DATA_USERS
        and any(
            _is_synthetic_module(t) or any(_is_synthetic_module(f"{t}.{n}") for n in ns) or set(ns) & names
            for _, t, ns in _imports(m, pkg, tree)
        )
    }
    assert users == set(SYNTHETIC_DATA_USERS), set(SYNTHETIC_DATA_USERS) - users


def test_import_scan_finds_each_kind_of_violation():
    source = (
        "import tools.train_net\n"
        "from eva_transfer_bench.measure import PeakMemory\n"
        "from tests import conftest\n"
        "from ..data.synthetic import make_synthetic_dataset\n"
        "from ..data import make_synthetic_dataset\n"
        "from .. import synthetic_predictions\n"
        "def f():\n"
        "    return importlib.import_module('benchmarks.backbone')\n"
        "from . import fast_eval\n"
        "from eva_transfer_projects.detection.data import register_dataset\n"
        "sys.path.insert(0, 'tools')\n"
        "spec = importlib.util.spec_from_file_location('x', 'tools/train_net.py')\n"
    )
    problems = _import_violations(
        "eva_transfer_projects.detection.evaluation.evaluators",
        False,
        ast.parse(source),
        {"make_synthetic_dataset"},
    )
    lines = sorted(int(p.split(":")[1].split()[0]) for p in problems)
    assert lines == [1, 2, 3, 4, 5, 6, 8, 11, 12], problems
    assert "imports eva_transfer_projects.detection.data.synthetic (make_synthetic_dataset)" in "".join(
        problems
    )
    core = _import_violations(
        "eva_transfer.vit", False, ast.parse("from eva_transfer_projects import compat\n"), set()
    )
    assert len(core) == 1 and "the core never imports the plug-ins" in core[0]
    # the same import is fine where the tiny recipes make their data
    assert not _import_violations(
        "eva_transfer_projects.detection.registration",
        False,
        ast.parse("from .data import make_synthetic_dataset\n"),
        {"make_synthetic_dataset"},
    )
    assert (
        _module_name(REPO / "projects/detection/data/__init__.py") == "eva_transfer_projects.detection.data"
    )
