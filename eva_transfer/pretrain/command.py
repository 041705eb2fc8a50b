"""What ``tools/pretrain.py`` runs: its options (``--config`` / ``--config-file``, the shared ones of every tool,
``section.key=value`` overrides), the merged config they give, and the CPU threads of the run. The tool itself
parses, sets up the console (progress lines on stdout), prints and turns errors into an exit status."""

from __future__ import annotations

import argparse
from typing import Optional

import torch

from eva_transfer.runtime import add_run_arguments, configure_cpu_threads

from .config import load_pretrain_config

__all__ = ["build_parser", "shared_overrides", "config_from_args", "configure_threads"]


def build_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The options of ``tools/pretrain.py`` (``description``: the tool's help text)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        "--config-file",
        dest="config",
        required=True,
        help="a config file under configs/pretrain/",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="resume from the output folder's last checkpoint (the default), or from CHECKPOINT",
    )
    add_run_arguments(parser)
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    return parser


def shared_overrides(args: argparse.Namespace) -> list[str]:
    """The shared options as ``section.key=value`` overrides (applied after the positional ones)."""
    extra = list(args.extra_opts)
    if args.output_dir:
        extra.append(f"train.output_dir={args.output_dir!r}")
    if args.resume is not None:
        extra.append(f"train.resume={args.resume!r}")
    if args.device:
        extra.append(f"train.device={args.device!r}")
    return extra


def config_from_args(args: argparse.Namespace) -> dict:
    """The merged config: the file, the positional overrides, then the shared options (``ConfigError`` names a
    bad key or value)."""
    return load_pretrain_config(args.config, list(args.overrides) + shared_overrides(args))


def configure_threads(cfg: dict, num_threads: Optional[int] = None) -> int:
    """This process's CPU threads for the config's device and data-loader workers (``ValueError`` for a bad
    count); returns the count."""
    device = cfg["train"]["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    return configure_cpu_threads(num_threads, device=device, workers=int(cfg["data"]["workers"]))
