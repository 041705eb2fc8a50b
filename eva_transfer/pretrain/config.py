"""Pre-training configuration: a schema of known keys, config files that inherit, and command-line overrides.

A config file is a small Python file defining ``config = dict(...)`` (nested dicts) and optionally
``_base_ = "other.py"`` (relative to the file); it overrides the keys of its base, which overrides
:data:`DEFAULTS`. Command-line overrides are ``section.key=value`` with Python literals (``optim.lr=5e-4``,
``data.root='/data/imgs'``, ``model.backbone_overrides={'depth': 2}``). Any key not in the schema is an error that
suggests the nearest known key.
"""

from __future__ import annotations

import ast
import copy
import logging
import runpy
from pathlib import Path
from typing import Any, Optional, Sequence

from ..suggest import did_you_mean

logger = logging.getLogger(__name__)

__all__ = [
    "fit_warmup_to_run",
    "DEFAULTS",
    "FREE_FORM",
    "ConfigError",
    "check_config",
    "load_pretrain_config",
    "merge",
    "parse_override",
    "flatten_keys",
]

#: every key a pre-training config may set, with its default
DEFAULTS: dict[str, Any] = dict(
    model=dict(
        preset="eva_g",  # an eva_transfer backbone preset in the pre-training layout (CLS token, final norm)
        target_dim=None,  # lm_head width; None follows the teacher, a number is checked against it
        drop_path_rate=0.1,
        use_act_checkpoint=False,
        init_mode="eva",  # EVA's MIM initialisation ("eva") or the plain one ("plain"); see EVAViT
        init_std=0.02,  # EVA's default; 0.015 for EVA-g
        backbone_overrides={},  # further EVAViT arguments
    ),
    teacher=dict(
        family="timm",  # "timm" or "open_clip"
        name="vit_large_patch14_clip_224.openai",
        pretrained=True,
        checkpoint=None,  # a local weights file instead of the hub
        img_size=None,  # teacher input size; the student's crop when None
        kwargs={},
        mean=None,  # the teacher's own (CLIP) normalisation when None
        std=None,
        # MLP activation, "quick_gelu" or "gelu"; None: the tower's own from its tag (QuickGELU for openai)
        act_layer=None,
    ),
    mask=dict(
        num_patches=None,  # patches masked per image; ratio * grid when None
        ratio=0.4,
        min_patches=16,
        max_patches=None,
        min_aspect=0.3,
        max_aspect=None,  # 1 / min_aspect when None
        max_tries=10,
    ),
    data=dict(
        root=None,
        list_file=None,
        img_size=224,
        scale=(0.2, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip=0.5,
        interpolation="bicubic",
        mean=(0.48145466, 0.4578275, 0.40821073),  # the student's input normalisation: CLIP's, as EVA's
        std=(0.26862954, 0.26130258, 0.27577711),
        workers=8,
    ),
    optim=dict(
        lr=1e-3,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=0.05,
        clip_grad=3.0,  # max gradient norm; None: no clipping (the norm is still logged)
        no_decay_names=("pos_embed", "cls_token"),  # EVA's; 1-D parameters and biases never take weight decay
        zero=False,  # shard optimizer state across processes (torch ZeroRedundancyOptimizer, ZeRO stage 1)
    ),
    schedule=dict(
        epochs=150,
        warmup_epochs=2,
        total_steps=None,  # overrides epochs when set
        warmup_steps=None,  # overrides warmup_epochs when set
        warmup_lr=1e-6,
        min_lr=1e-5,
    ),
    train=dict(
        batch_size=4096,  # global, over all processes
        amp="fp16",  # "fp16" (dynamic loss scaling), "bf16" or "none"; off on CPU
        seed=0,
        output_dir="output/pretrain",
        resume="auto",  # "auto" (the output folder's last checkpoint), a path, or None
        checkpoint_every=1000,  # steps
        keep_checkpoints=1,
        max_steps_per_run=None,  # checkpoint and exit after this many steps (time-limited or preemptible jobs)
        log_every=20,
        tensorboard=True,
        export="backbone.safetensors",  # written in output_dir at the end
        device=None,  # "cuda"/"cpu"; cuda when available
        dist_timeout=1800,  # seconds to wait for every process at start-up (and for each collective operation)
    ),
)

#: sections whose content is passed through as-is (any key allowed)
FREE_FORM = {"model.backbone_overrides", "teacher.kwargs"}


class ConfigError(ValueError):
    """A config file or override that names an unknown key or cannot be read."""


def flatten_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict) and key not in FREE_FORM:
            out += flatten_keys(v, key + ".")
    return out


def _unknown(key: str, where: str) -> ConfigError:
    hint = did_you_mean(key, flatten_keys(DEFAULTS))
    return ConfigError(f"{where}: unknown config key {key!r}{hint}")


def merge(base: dict, update: dict, where: str, prefix: str = "") -> dict:
    """``base`` with ``update`` merged in recursively; keys must exist in ``base`` (except free-form sections)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        key = f"{prefix}{k}"
        if k not in out:
            raise _unknown(key, where)
        if isinstance(out[k], dict) and key not in FREE_FORM:
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: {key!r} is a section; give a dict or set {key}.<field>")
            out[k] = merge(out[k], v, where, key + ".")
        elif key in FREE_FORM:
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: {key!r} takes a dict, got {v!r}")
            out[k] = {**out[k], **copy.deepcopy(v)}
        else:
            if _is_number(out[k]) and v is not None and not _is_number(v):
                raise ConfigError(f"{where}: {key!r} takes a number (default {out[k]!r}); got {v!r}")
            out[k] = copy.deepcopy(v)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(cfg: dict, key: str, ok, expected: str, optional: bool = False) -> None:
    section, name = key.split(".")
    value = cfg[section][name]
    if optional and value is None:
        return
    if not ok(value):
        raise ConfigError(f"{key} must be {expected}{' or None' if optional else ''}, got {value!r}")


def check_config(cfg: dict) -> None:
    """Checks values (not only keys) before any model or data is built; raises :class:`ConfigError` naming the
    key. ``optim.clip_grad=None`` means no clipping."""

    def integer(minimum):
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    def number(minimum, strict=False):
        return lambda v: _is_number(v) and (v > minimum if strict else v >= minimum)

    _check(cfg, "train.batch_size", integer(1), "an integer >= 1 (the global batch over all processes)")
    _check(cfg, "train.checkpoint_every", integer(1), "an integer >= 1")
    _check(cfg, "train.log_every", integer(1), "an integer >= 1")
    _check(cfg, "train.max_steps_per_run", integer(1), "an integer >= 1", optional=True)
    _check(cfg, "train.dist_timeout", number(0, strict=True), "a number of seconds > 0")
    _check(cfg, "data.img_size", integer(1), "an integer >= 1")
    _check(cfg, "data.workers", integer(0), "an integer >= 0")
    _check(cfg, "optim.lr", number(0, strict=True), "a number > 0")
    _check(cfg, "optim.weight_decay", number(0), "a number >= 0")
    _check(
        cfg, "optim.clip_grad", number(0, strict=True), "a number > 0 (the max gradient norm)", optional=True
    )
    _check(cfg, "schedule.epochs", number(0, strict=True), "a number > 0")
    _check(cfg, "schedule.warmup_epochs", number(0), "a number >= 0")
    _check(cfg, "schedule.total_steps", integer(1), "an integer >= 1", optional=True)
    _check(cfg, "schedule.warmup_steps", integer(0), "an integer >= 0", optional=True)
    _check(
        cfg,
        "teacher.act_layer",
        lambda v: v in ("quick_gelu", "gelu"),
        "'quick_gelu' or 'gelu' (None: the teacher's own)",
        optional=True,
    )
    s = cfg["schedule"]
    if s["total_steps"] is None and s["warmup_steps"] is None and s["warmup_epochs"] > s["epochs"]:
        raise ConfigError(
            f"schedule.warmup_epochs={s['warmup_epochs']} is longer than the run (schedule.epochs={s['epochs']})"
        )
    if (
        s["total_steps"] is not None
        and s["warmup_steps"] is not None
        and s["warmup_steps"] > s["total_steps"]
    ):
        raise ConfigError(
            f"schedule.warmup_steps={s['warmup_steps']} is longer than the run "
            f"(schedule.total_steps={s['total_steps']})"
        )


def _read_file(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config inheritance loops: {' -> '.join(map(str, seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    ns = runpy.run_path(str(path))
    cfg = ns.get("config")
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a config file must define config = dict(...)")
    base = ns.get("_base_")
    if base is None:
        return merge(DEFAULTS, cfg, str(path))
    parent = _read_file(path.parent / base, seen + (path,))
    return merge(parent, cfg, str(path))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=5e-4"`` -> ``(["optim", "lr"], 0.0005)``; values are Python literals, else plain strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if raw.strip().lower() in ("true", "false", "none", "null"):
        value = {"true": True, "false": False}.get(raw.strip().lower())
    return key.split("."), value


def load_pretrain_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> dict:
    """The full config: :data:`DEFAULTS` <- config file chain <- ``overrides`` (``key=value`` strings)."""
    cfg = copy.deepcopy(DEFAULTS) if path is None else _read_file(Path(path))
    planned = copy.deepcopy(cfg["schedule"])
    set_keys = set()
    for text in overrides:
        keys, value = parse_override(text)
        set_keys.add(".".join(keys))
        update: Any = value
        for k in reversed(keys):
            update = {k: update}
        cfg = merge(cfg, update, f"override {text!r}")
    fit_warmup_to_run(cfg["schedule"], planned, set_keys)  # a shortened run first, then the checks
    check_config(cfg)
    return cfg


def fit_warmup_to_run(schedule: dict, planned: dict, set_keys: set = frozenset()) -> list[str]:
    """Scales the warm-up of a run shortened below its config (``schedule.total_steps`` or ``schedule.epochs``
    overridden lower) by the same ratio, unless the warm-up was overridden too; logs a note. Returns the
    changes."""
    changes = []
    for length, warmup in (("total_steps", "warmup_steps"), ("epochs", "warmup_epochs")):
        new, old = schedule[length], planned[length]
        if not new or not old or new >= old or f"schedule.{warmup}" in set_keys or schedule[warmup] is None:
            continue
        if length == "epochs" and schedule["total_steps"]:
            continue  # total_steps decides the length
        value = schedule[warmup]
        scaled = value * new / old
        scaled = min(new, round(scaled)) if length == "total_steps" else scaled
        if scaled != value:
            schedule[warmup] = scaled
            changes.append(f"schedule.{warmup} {value} -> {scaled}")
            logger.warning(
                "schedule.%s=%s is shorter than the config's %s: %s is scaled to %s. Set schedule.%s to choose it.",
                length,
                new,
                old,
                warmup,
                scaled,
                warmup,
            )
    return changes
