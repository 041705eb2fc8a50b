"""Project files: one version source, the declared licence, and every third-party module the core imports
declared as a core dependency (a core-only install must import it)."""

import ast
import re
import sys
from pathlib import Path

import tomllib

import eva_transfer

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# import name -> distribution name, where they differ
DISTRIBUTION = {"PIL": "pillow", "yaml": "pyyaml", "cv2": "opencv-python-headless"}
# imported only inside a branch that a config or argument selects, with a clear error when missing
OPTIONAL_IMPORTS = {"open_clip"}


def _requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower()


def test_one_version_source():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "eva_transfer.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", eva_transfer.__version__)
    assert "__version__" not in (REPO / "CITATION.cff").read_text()


def test_licence_and_citation():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert (
        "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    )
    citation = (REPO / "CITATION.cff").read_text()
    assert "Exploring the Limits of Masked Visual Representation Learning at Scale" in citation


def _guarded_imports(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try: ... except ImportError`` (optional: used only when installed)."""
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in node.handlers
        ):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return guarded


def core_third_party_imports() -> dict[str, str]:
    """Top-level module name -> first file that imports it unconditionally, over every module of the core."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "eva_transfer").rglob("*.py")):
        tree = ast.parse(path.read_text())
        guarded = _guarded_imports(tree)
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "eva_transfer":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_core_import_is_a_core_dependency():
    declared = {_requirement_name(s) for s in PYPROJECT["project"]["dependencies"]}
    imports = core_third_party_imports()
    assert {"torch", "timm", "numpy"} <= set(imports), imports  # the scan sees the core's imports
    missing = {
        f"{name} ({where})"
        for name, where in imports.items()
        if name not in OPTIONAL_IMPORTS and DISTRIBUTION.get(name, name).lower() not in declared
    }
    assert not missing, f"imported by the core but not in [project].dependencies: {sorted(missing)}"


# --- the installed layout ------------------------------------------------------------------------------------------
# The plug-ins live in the folder projects/ and install under the distinct name eva_transfer_projects: a top-level
# package called `projects` in site-packages collides with any other project installed the same way.

INSTALLED_NAME = {
    "eva_transfer": "eva_transfer",
    "eva_transfer_projects": "projects",
    "eva_transfer_bench": "benchmarks",
}


def _package_folders() -> set[str]:
    names = set()
    for installed, folder in INSTALLED_NAME.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            names.add(".".join((installed, *parts)))
    return names


def test_pyproject_lists_every_package_under_its_installed_name():
    setuptools_cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools_cfg["packages"]) == _package_folders()
    assert setuptools_cfg["package-dir"] == {
        "eva_transfer_projects": "projects",
        "eva_transfer_bench": "benchmarks",
    }
    assert not any(p.split(".")[0] == "projects" for p in setuptools_cfg["packages"])


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_nothing_imports_the_folder_name():
    # configs, tools, tests and the packages all import the installed name; `projects.` would only work from the
    # repository root and would break in an installed copy
    found = [
        str(path.relative_to(REPO))
        for folder in ("eva_transfer", "projects", "benchmarks", "configs", "tools", "tests")
        for path in sorted((REPO / folder).rglob("*.py"))
        if "projects" in _imported_roots(path)
    ]
    assert not found, found
    text_refs = [
        str(path.relative_to(REPO))
        for folder in ("configs", "docs", "tools")
        for path in sorted((REPO / folder).rglob("*"))
        if path.suffix in (".py", ".md", ".sh")
        and re.search(
            r"(?<![\w/.-])projects\.(detection|segmentation|mmdetection|compat)\b", path.read_text()
        )
    ]
    assert not text_refs, f"module paths must use eva_transfer_projects: {text_refs}"


def test_installed_name_resolves_to_the_projects_folder(tmp_path):
    # run outside the repository and without PYTHONPATH, so that only the install can provide the packages
    import os
    import subprocess

    code = (
        "import importlib.util, eva_transfer_projects.detection as d; "
        "print(d.__file__); print(importlib.util.find_spec('projects') is None)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, check=True
    )
    location, no_projects_package = out.stdout.split()
    assert no_projects_package == "True", "an install must not provide a top-level 'projects' package"
    installed = Path(location).resolve()
    assert installed.parts[-3:] == ("projects", "detection", "__init__.py"), installed
    if not os.environ.get("PYTHONPATH"):  # a run with PYTHONPATH may test a copy other than the installed one
        assert installed == (REPO / "projects" / "detection" / "__init__.py").resolve()


def test_xdist_groups_keep_their_tests_on_one_process(tmp_path):
    """The suite shares trainings across files through ``xdist_group`` marks (tests/conftest.py): the installed
    pytest and pytest-xdist must send a group's tests to one worker, where its session fixture is built once."""
    import subprocess

    fixture = "import os, pytest\n\n@pytest.fixture(scope='session')\ndef built():\n    return os.getpid()\n"
    (tmp_path / "conftest.py").write_text(fixture)
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"test_{name}.py").write_text(
            "import pytest\n\n"
            f"@pytest.mark.xdist_group('shared')\ndef test_{name}(built, request):\n"
            f"    (request.config.rootpath / '{name}.pid').write_text(str(built))\n\n"
            f"def test_{name}_alone():\n    pass\n"
        )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-q",
         "-o", "addopts=", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    pids = {name: (tmp_path / f"{name}.pid").read_text() for name in "abcd"}
    assert len(set(pids.values())) == 1, f"the group ran on several processes: {pids}"
