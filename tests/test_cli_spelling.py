"""The four training / evaluation tools accept the same options, in the Detectron2 and the MMSeg spelling, and are
executable. Each tool's options come from the module it calls (imported here, the scripts are not)."""

from __future__ import annotations

import ast
import importlib
import os
import stat
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("train_net", "train_seg", "test_seg", "pretrain", "demo")
#: tool -> the module holding its options
OPTIONS_MODULE = {
    "train_net": "eva_transfer_projects.detection.train_command",
    "train_seg": "eva_transfer_projects.segmentation.train_command",
    "test_seg": "eva_transfer_projects.segmentation.evaluate_command",
    "pretrain": "eva_transfer.pretrain.command",
    "demo": "eva_transfer_projects.detection.demo",
}


def _tool(name):
    return importlib.import_module(OPTIONS_MODULE[name])


@pytest.mark.parametrize("name", TOOLS)
def test_tools_take_their_options_from_the_module_tested_here(name):
    tree = ast.parse((REPO / "tools" / f"{name}.py").read_text())
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert {(OPTIONS_MODULE[name], "build_parser"), (OPTIONS_MODULE[name], "parse_args")} & imported, imported
    # and defines no parser of its own
    assert "ArgumentParser" not in {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}


@pytest.mark.parametrize("name", TOOLS)
def test_tools_are_executable_scripts(name):
    path = REPO / "tools" / f"{name}.py"
    assert path.read_text().startswith("#!/usr/bin/env python")
    assert path.stat().st_mode & stat.S_IXUSR and os.access(path, os.X_OK)


@pytest.mark.parametrize("out_flag", ["--output-dir", "--work-dir"])
@pytest.mark.parametrize("opts_flag", ["--opts", "--cfg-options"])
def test_train_net_spellings(out_flag, opts_flag):
    args = _tool("train_net").parse_args(
        [
            "--config-file",
            "c.py",
            out_flag,
            "out",
            "--device",
            "cpu",
            "--num-threads",
            "1",
            "--resume",
            opts_flag,
            "a.b=1",
            "c=2",
        ]
    )
    assert args.opts == ["a.b=1", "c=2", "train.output_dir=out", "train.device=cpu"]
    assert args.resume and args.num_threads == 1
    trailing = _tool("train_net").parse_args(["--config-file", "c.py", "x=1"])
    assert trailing.opts == ["x=1"]


@pytest.mark.parametrize("name", ["train_seg", "test_seg"])
@pytest.mark.parametrize("out_flag", ["--output-dir", "--work-dir"])
@pytest.mark.parametrize("opts_flag", ["--opts", "--cfg-options"])
def test_segmentation_spellings(name, out_flag, opts_flag):
    positional = ["cfg.py"] + (["ckpt.pth"] if name == "test_seg" else [])
    args = _tool(name).parse_args(
        [*positional, out_flag, "out", "--device", "cpu", "--num-threads", "2", opts_flag, "a.b=1", "c=[1,2]"]
    )
    assert args.work_dir == "out" and args.device == "cpu" and args.num_threads == 2
    assert args.cfg_options == {"a.b": 1, "c": [1, 2]}
    if name == "train_seg":
        assert _tool(name).parse_args(["cfg.py", "--resume"]).resume == "auto"


@pytest.mark.parametrize("config_flag", ["--config", "--config-file"])
@pytest.mark.parametrize("out_flag", ["--output-dir", "--work-dir"])
@pytest.mark.parametrize("opts_flag", ["--opts", "--cfg-options"])
def test_pretrain_spellings(config_flag, out_flag, opts_flag):
    command = _tool("pretrain")
    config = str(REPO / "configs/pretrain/eva_tiny_cpu.py")
    args = command.build_parser().parse_args(
        [
            config_flag,
            config,
            "--print-config",
            out_flag,
            "o",
            "--resume",
            "last.pth",
            "--device",
            "cpu",
            "optim.lr=0.5",
            opts_flag,
            "train.batch_size=4",
        ]
    )
    assert args.print_config
    cfg = command.config_from_args(args)
    assert cfg["train"]["output_dir"] == "o" and cfg["train"]["resume"] == "last.pth"
    assert cfg["train"]["device"] == "cpu" and cfg["train"]["batch_size"] == 4 and cfg["optim"]["lr"] == 0.5
