"""Code structure that a linter cannot hold: one definition for each shared piece, short functions, one place for
each rule. Import directions are import-linter's contracts and ``print`` in library code is ruff's T201
(pyproject.toml); :func:`test_import_contracts_hold` runs the contracts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("eva_transfer", "projects")


def _modules(packages=PRODUCT_PACKAGES):
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


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
    convert = _function("eva_transfer/resize.py", "resize_pos_embed")
    assert "interpolate_abs_pos" in _called_names(convert)
    assert "interpolate" not in _called_names(convert)
    # no other function about absolute position tables interpolates or calls timm's resampler
    resamplers = {"interpolate", "resample_abs_pos_embed"}
    interpolating = [
        fn.name
        for _, fn in _functions()
        if ("abs_pos" in fn.name or "pos_embed" in fn.name) and resamplers & set(_called_names(fn))
    ]
    assert interpolating == ["interpolate_abs_pos"], interpolating


def test_the_evavit_search_lives_in_one_function():
    searching = [
        f"{p.relative_to(REPO)}:{fn.name}" for p, fn in _functions() if _searches_modules_for_evavit(fn)
    ]
    assert searching == ["eva_transfer/lr_decay.py:backbone_prefix"], searching
    assert "backbone_prefix" in _called_names(_function("eva_transfer/convert.py", "find_backbone"))


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

    from eva_transfer.resize import resize_pos_embed

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


# --- import directions --------------------------------------------------------------------------------------------
# The core imports no framework and no plug-in, the plug-ins import no benchmark code and not each other, and
# synthetic data is imported only where a tiny recipe's data is made: import-linter's contracts in pyproject.toml
# ([tool.importlinter]), run here and by CI. What they cannot name (tests/ and tools/ are no packages, and code
# loaded by path is no import) is scanned below.

NOT_PACKAGES = {"tests", "tools", "benchmarks"}


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout and "4 kept" in proc.stdout, proc.stdout[-2000:]


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import, and of ``import_module("...")`` / ``__import__("...")``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
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


def _import_violations(where: str, tree: ast.AST) -> list[str]:
    problems = [f"{where}:{line} loads code by path" for line in _loads_code_by_path(tree)]
    problems += [
        f"{where}:{line} imports {target}: the product imports nothing from {target.split('.')[0]}"
        for line, target in _imports(tree)
        if target.split(".")[0] in NOT_PACKAGES
    ]
    return problems


def test_product_imports_nothing_from_tests_or_tools_and_loads_no_code_by_path():
    problems = [p for path, tree in _modules() for p in _import_violations(str(path.relative_to(REPO)), tree)]
    assert not problems, "\n".join(problems)


def test_import_scan_finds_each_kind_of_violation():
    source = (
        "import tools.train_net\n"
        "from tests import conftest\n"
        "def f():\n"
        "    return importlib.import_module('benchmarks.backbone')\n"
        "from . import fast_eval\n"
        "from eva_transfer_projects.detection.data import register_dataset\n"
        "sys.path.insert(0, 'tools')\n"
        "spec = importlib.util.spec_from_file_location('x', 'tools/train_net.py')\n"
    )
    problems = _import_violations("m", ast.parse(source))
    assert sorted(int(p.split(":")[1].split()[0]) for p in problems) == [1, 2, 4, 7, 8], problems


# --- tests import modules, not the scripts in tools/ ---------------------------------------------------------------

#: loaders that execute a Python file by path: the name of the call -> the position of its path argument
_PATH_LOADERS = {"spec_from_file_location": 1, "SourceFileLoader": 1, "run_path": 0}


def _names_tools_folder(text: str) -> bool:
    return text == "tools" or text.startswith("tools/") or "/tools/" in text


def _constants(node: ast.AST, tree: ast.AST, depth: int = 0) -> list[str]:
    """The strings an expression can be built from: its own constants, those assigned to the names it uses, and
    for a function parameter those passed at the function's call sites in the same file (three levels deep)."""
    found = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    if depth >= 3:
        return found
    for name in {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}:
        for other in ast.walk(tree):
            if isinstance(other, (ast.Assign, ast.AnnAssign)) and other.value is not None:
                targets = other.targets if isinstance(other, ast.Assign) else [other.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    found += _constants(other.value, tree, depth + 1)
            if isinstance(other, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params = [a.arg for a in other.args.posonlyargs + other.args.args + other.args.kwonlyargs]
                if name not in params:
                    continue
                for call in ast.walk(tree):
                    if (
                        isinstance(call, ast.Call)
                        and isinstance(call.func, ast.Name)
                        and call.func.id == other.name
                    ):
                        for arg in [*call.args, *(k.value for k in call.keywords)]:
                            found += _constants(arg, tree, depth + 1)
    return found


def _loads_a_tool_script(source: str) -> list[int]:
    """Lines where ``source`` executes a file under ``tools/`` by path (``importlib.util.spec_from_file_location``,
    ``SourceFileLoader``, ``runpy.run_path``)."""
    tree = ast.parse(source)
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        if name not in _PATH_LOADERS:
            continue
        position = _PATH_LOADERS[name]
        path_args = [node.args[position]] if len(node.args) > position else []
        path_args += [k.value for k in node.keywords if k.arg in ("location", "path", "path_name")]
        if any(_names_tools_folder(c) for arg in path_args for c in _constants(arg, tree)):
            lines.append(node.lineno)
    return lines


def test_scan_sees_a_tool_loaded_by_path():
    direct = (
        'import importlib.util\nspec = importlib.util.spec_from_file_location("t", ROOT / "tools/demo.py")\n'
    )
    assert _loads_a_tool_script(direct) == [2]
    through_a_helper = (
        "def _load(path, name):\n"
        "    return importlib.util.spec_from_file_location(name, path)\n"
        "tool = _load(REPO / 'tools' / 'convert_checkpoint.py', 'c')\n"
    )
    assert _loads_a_tool_script(through_a_helper) == [2]
    assigned = 'p = Path(__file__).parents[1] / "tools" / f"{n}.py"\nm = runpy.run_path(str(p))\n'
    assert _loads_a_tool_script(assigned) == [2]
    # a test-side reference module loaded by path is not a tool
    reference = 'spec = importlib.util.spec_from_file_location("r", Path(__file__).with_name("ref.py"))\n'
    assert _loads_a_tool_script(reference) == []
    assert _loads_a_tool_script('subprocess.run([sys.executable, "tools/demo.py", "--help"])\n') == []


def test_tests_import_modules_not_tool_scripts():
    """A tool's logic lives in an importable module; a test imports that module (or runs the tool as a command)
    instead of executing ``tools/*.py`` by path."""
    found = {
        f"{path.relative_to(REPO)}:{line}": str(path.relative_to(REPO))
        for path in sorted((REPO / "tests").rglob("*.py"))
        for line in _loads_a_tool_script(path.read_text())
    }
    offending = list(found)
    assert not offending, (
        "tests load tools/ scripts by path (import the module the tool calls): " + ", ".join(offending)
    )


# --- function length: at most 80 lines of body (the docstring excluded) -------------------------------------------

MAX_BODY_LINES = 80


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the last statement (comments and blank
    lines between them included, nested definitions included)."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        if isinstance(body[0].value.value, str):
            body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def test_body_line_count_excludes_the_docstring():
    source = (
        "def f(a,\n"
        "      b):\n"
        '    """Doc\n'
        "    string\n"
        '    """\n'
        "    x = 1\n"
        "\n"
        "    # a comment\n"
        "    def g():\n"
        "        return (1,\n"
        "                2)\n"
        "    return x\n"
        "def h():\n"
        '    """Only a docstring."""\n'
        "def k(): return 1\n"
        "def m():\n"
        "    'not first'\n"
        "    1\n"
    )
    fns = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert _body_lines(fns["f"]) == 7  # x = 1 .. return x
    assert _body_lines(fns["g"]) == 2
    assert _body_lines(fns["h"]) == 0
    assert _body_lines(fns["k"]) == 1
    assert _body_lines(fns["m"]) == 1  # a string first is the docstring


def test_no_product_function_over_80_body_lines():
    long = [
        f"{path.relative_to(REPO)}:{fn.lineno} {fn.name} ({_body_lines(fn)} lines)"
        for path, fn in _functions()
        if _body_lines(fn) > MAX_BODY_LINES
    ]
    assert not long, f"split into named steps (at most {MAX_BODY_LINES} body lines): " + ", ".join(long)


# --- one stop-on-signal flag, one rendezvous routine ----------------------------------------------------------------


def _calls_to(tree: ast.AST, owner: str, attr: str) -> list[int]:
    """Lines of calls ``owner.attr(...)`` (``signal.signal``, ``dist.init_process_group``)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == attr
        and (owner == "*" or (isinstance(node.func.value, ast.Name) and node.func.value.id == owner))
    ]


def _string_constants(tree: ast.AST, needle: str) -> list[int]:
    """Lines of string constants (docstrings aside) that contain ``needle``."""
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and needle in n.value
        and id(n) not in docstrings
    ]


def _names_used(module: str) -> set[str]:
    tree = ast.parse((REPO / module).read_text())
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }


def test_scan_sees_signal_handlers_and_rendezvous_parsing():
    tree = ast.parse(
        "import signal\n"
        "def f(h):\n"
        "    '''clients joined (a docstring)'''\n"
        "    signal.signal(signal.SIGINT, h)\n"
        "    dist.init_process_group('gloo')\n"
        "    return re.search(r'(\\d+)/(\\d+) clients joined', str(h))\n"
    )
    assert _calls_to(tree, "signal", "signal") == [4]
    assert _calls_to(tree, "*", "init_process_group") == [5]
    assert _string_constants(tree, "clients joined") == [6]


def test_one_stop_on_signal_flag():
    installs = [
        f"{path.relative_to(REPO)}:{line}"
        for path, tree in _modules()
        for line in _calls_to(tree, "signal", "signal")
    ]
    assert installs and all(s.startswith("eva_transfer/runtime.py:") for s in installs), installs
    assert len(_definitions("_handler")) == 1, _definitions("_handler")
    for user in (
        "eva_transfer/pretrain/trainer.py",
        "projects/segmentation/training.py",
        "projects/detection/interrupt.py",
    ):
        assert "StopSignals" in _names_used(user), user


def test_one_rendezvous_routine():
    joins = [
        f"{path.relative_to(REPO)}:{line}"
        for path, tree in _modules()
        for line in _calls_to(tree, "*", "init_process_group")
    ]
    parses = [
        f"{path.relative_to(REPO)}:{line}"
        for path, tree in _modules()
        for line in _string_constants(tree, "clients joined")
    ]
    assert len(joins) == 1 and joins[0].startswith("eva_transfer/runtime.py:"), joins
    assert len(parses) == 1 and parses[0].startswith("eva_transfer/runtime.py:"), parses
    assert "join_process_group" in _called_names(
        _function("eva_transfer/pretrain/trainer.py", "_join_process_group")
    )
    # found by name: the segmentation command-line module may move
    (start_distributed,) = [fn for _, fn in _functions() if fn.name == "start_distributed"]
    assert "join_process_group" in _called_names(start_distributed)
    assert "rendezvous_failure" in _called_names(
        _function("projects/detection/config_checks.py", "explain_startup_failure")
    )


# --- names that say what they hold, each defined once ------------------------------------------------------------


def _module_definitions(tree: ast.Module) -> set[str]:
    """Names a module defines: functions and classes at any depth, and module-level assignments."""
    names = {
        n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
    }
    for node in tree.body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _where_defined(name: str, folders=("eva_transfer", "projects")) -> list[str]:
    return sorted(
        str(p.relative_to(REPO)) for p, tree in _modules(folders) if name in _module_definitions(tree)
    )


#: each name and the one module that defines it (or the folder holding that one module)
ONE_DEFINITION = {
    "build_eva_vit": "eva_transfer/presets.py",
    "EVASimpleFeaturePyramid": "eva_transfer/pyramid.py",
    "make_reference_points": "eva_transfer/ms_deform_attn.py",
    "level_start_indices": "eva_transfer/ms_deform_attn.py",
    "class_image_counts": "projects/detection/class_frequency.py",
    "image_counts_from_annotations": "projects/detection/data/datasets.py",
    "load_pretrain_config": "eva_transfer/pretrain/config.py",
    "load_seg_config": "projects/segmentation/",  # its module is being renamed: any one module there
    "load_det_config": "projects/detection/engine.py",
    "step_schedule": "projects/detection/schedule.py",
    "lsj_train_augmentations": "projects/detection/data/augmentations.py",
    "lsj_test_augmentations": "projects/detection/data/augmentations.py",
    "register_config_datasets": "projects/detection/data/config_datasets.py",
    "prepare_config_datasets": "projects/detection/data/config_datasets.py",
    "param_groups_layer_decay": "eva_transfer/lr_decay.py",
    "LayerDecayOptimWrapperConstructor": "projects/mmengine_layer_decay.py",
    "PACK_META_KEYS": "projects/segmentation/test_time.py",
}


def test_scan_sees_definitions():
    tree = ast.parse("X = 1\nY: int = 2\ndef f():\n    def g(): pass\nclass C:\n    Z = 3\n")
    assert _module_definitions(tree) == {"X", "Y", "f", "g", "C"}


def test_each_named_piece_has_exactly_one_definition():
    wrong = {
        name: found
        for name, module in ONE_DEFINITION.items()
        if len(found := _where_defined(name)) != 1 or not found[0].startswith(module)
    }
    assert not wrong, f"expected one definition each, in the module given: {wrong}"


def _loops_over_named_parameters(fn: ast.AST) -> bool:
    return any(
        isinstance(node, ast.For)
        and isinstance(node.iter, ast.Call)
        and isinstance(node.iter.func, ast.Attribute)
        and node.iter.func.attr == "named_parameters"
        for node in ast.walk(fn)
    )


def _raises_to_a_power(fn: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(fn))


def test_the_layer_decay_loop_lives_in_one_function():
    # a loop over named_parameters that computes rate ** (depth + 1 - layer) is a layer-decay grouping
    looping = [
        f"{p.relative_to(REPO)}:{fn.name}"
        for p, fn in _functions()
        if _loops_over_named_parameters(fn) and _raises_to_a_power(fn)
    ]
    assert looping == ["eva_transfer/lr_decay.py:param_groups_layer_decay"], looping
    eva = _function("projects/mmengine_layer_decay.py", "param_groups_eva")
    assert "param_groups_layer_decay" in _called_names(eva)
    scan = ast.parse("def f(m, r):\n    for n, p in m.named_parameters():\n        s = r ** 2\n")
    assert _loops_over_named_parameters(scan) and _raises_to_a_power(scan)


def test_fuzz_tests_share_one_time_limit():
    defined = [
        f"{p.relative_to(REPO)}"
        for p, tree in _modules(("tests",))
        if {"time_limit", "CaseTimeout"} & _module_definitions(tree)
    ]
    assert defined == ["tests/fuzz_harness.py"], defined
