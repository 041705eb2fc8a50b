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

#: names that clashed with a framework's or with each other, and modules named for nothing they hold
GONE_NAMES = (
    "build_backbone",  # detectron2.modeling.build_backbone
    "SimpleFeaturePyramid",  # detectron2.modeling.SimpleFeaturePyramid
    "reference_points",  # MSDeformAttn.forward's parameter
    "level_start_index",  # MSDeformAttn.forward's parameter
    "category_image_counts",  # two of them, with different signatures
    "load_config",  # three of them
    "test_augmentations",  # read as a test by pytest
)
GONE_MODULES = (
    "projects/detection/config_helpers.py",
    "projects/detection/registration.py",
    "projects/segmentation/optimizer.py",
)


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


def test_misleading_names_and_modules_are_gone():
    left = {name: found for name in GONE_NAMES if (found := _where_defined(name))}
    assert not left, f"renamed names still defined: {left}"
    assert not [m for m in GONE_MODULES if (REPO / m).exists()]
    import eva_transfer

    for old, new in (
        ("build_backbone", "build_eva_vit"),
        ("SimpleFeaturePyramid", "EVASimpleFeaturePyramid"),
    ):
        assert not hasattr(eva_transfer, old)
        try:
            getattr(eva_transfer, old)
        except AttributeError as e:
            assert new in str(e), e  # the error names the new name


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


def _imported_modules(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_plugins_do_not_import_each_other():
    plugins = ("detection", "segmentation", "mmdetection")
    crossing = []
    for plugin in plugins:
        others = tuple(f"eva_transfer_projects.{o}" for o in plugins if o != plugin)
        for path, tree in _modules((f"projects/{plugin}",)):
            crossing += [
                f"{path.relative_to(REPO)} imports {m}"
                for m in _imported_modules(tree)
                if m.startswith(others)
            ]
    assert not crossing, crossing


def test_fuzz_tests_share_one_time_limit():
    defined = [
        f"{p.relative_to(REPO)}"
        for p, tree in _modules(("tests",))
        if {"time_limit", "CaseTimeout"} & _module_definitions(tree)
    ]
    assert defined == ["tests/fuzz_harness.py"], defined
