"""Training and evaluation of a LazyConfig detector: what ``tools/train_net.py`` runs in every process.

Detectron2's trainers and hooks do the work (DDP, AMP, periodic checkpoints, metrics writers with ETA); this
module wires them to the EVA pieces: dataset registration from ``dataloader.datasets``, the layer-decay
optimizer, :class:`~eva_transfer_projects.detection.checkpoint.EVADetectionCheckpointer`, and the checks that turn common
mistakes (a mistyped override, a class-count mismatch) into clear errors.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model, default_writers, hooks
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from omegaconf import DictConfig, ListConfig, OmegaConf

from eva_transfer.suggest import did_you_mean

from .checkpoint import EVADetectionCheckpointer
from .config_checks import check_override_types, numeric_keys
from .data.config_datasets import register_config_datasets
from .interrupt import StopOnSignal, TrainingInterrupted
from .runtime import with_worker_threads
from .schedule import fit_schedule_to_run

__all__ = [
    "setup_run",
    "config_keys",
    "check_override_keys",
    "load_det_config",
    "setup_datasets",
    "build_model",
    "do_test",
    "do_train",
    "do_eval_only",
    "ConfigKeyError",
    "WeightsNotLoadedError",
]

logger = logging.getLogger("eva_transfer_projects.detection")


class ConfigKeyError(KeyError):
    """A ``key=value`` override names a key the config does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


def config_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config tree (dicts and lists; list items by index)."""
    keys = []
    if isinstance(node, (DictConfig, dict)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for k, v in items:
            keys.append(f"{prefix}{k}")
            keys += config_keys(v, f"{prefix}{k}.")
    elif isinstance(node, (ListConfig, list)):
        for i in range(len(node)):
            keys.append(f"{prefix}{i}")
            keys += config_keys(
                node._get_node(i) if isinstance(node, ListConfig) else node[i], f"{prefix}{i}."
            )
    return keys


def check_override_keys(cfg: DictConfig, overrides: Iterable[str]) -> None:
    """Raises :class:`ConfigKeyError` with the closest existing keys for an override of an unknown key.

    ``+key=value`` (adding a new key on purpose) is allowed.
    """
    known = None
    for item in overrides:
        if "=" not in item:
            raise ConfigKeyError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].strip()
        if key.startswith(("+", "~")):
            continue
        if OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False) is not _MISSING:
            continue
        if _target_accepts(cfg, key):
            continue
        known = known if known is not None else config_keys(cfg)
        hint = did_you_mean(key, known, n=3)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        siblings = sorted(k for k in known if k.startswith(parent + ".") and k.count(".") == key.count("."))
        if not hint and siblings:
            hint = f"; keys under {parent!r}: {', '.join(s.rsplit('.', 1)[1] for s in siblings[:20])}"
        raise ConfigKeyError(
            f"config has no key {key!r} (override {item!r}){hint}. Use +{key}=... to add a new key."
        )


_MISSING = object()


def _target_accepts(cfg: DictConfig, key: str) -> bool:
    """Whether ``key`` is a new argument of a LazyCall node whose target takes it (by name or ``**kwargs``)."""
    import inspect

    from detectron2.utils.registry import locate

    if "." not in key:
        return False
    parent_key, arg = key.rsplit(".", 1)
    parent = OmegaConf.select(cfg, parent_key, default=None, throw_on_resolution_failure=False)
    if not isinstance(parent, DictConfig) or "_target_" not in parent:
        return False
    target = parent._target_
    target = locate(target) if isinstance(target, str) else target
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def setup_run(cfg: DictConfig, args=None) -> None:
    """Logging, the saved config and the seed of one process (Detectron2's ``default_setup`` without the
    environment report, which needs the compiled extension)."""
    import os

    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    output_dir = cfg.train.output_dir
    rank = comm.get_rank()
    if comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, distributed_rank=rank, name="fvcore")
    setup_logger(output_dir, distributed_rank=rank, name="detectron2")
    setup_logger(output_dir, distributed_rank=rank, name="eva_transfer_projects")
    setup_logger(output_dir, distributed_rank=rank, name="eva_transfer")
    logger.info("Rank %d of %d; arguments: %s", rank, comm.get_world_size(), args)
    if comm.is_main_process():
        LazyConfig.save(cfg, os.path.join(output_dir, "config.yaml"))
    seed = cfg.train.get("seed", -1)
    seed_all_rng(None if seed is None or seed < 0 else seed + rank)


def load_det_config(path: str, overrides: Iterable[str] = ()) -> DictConfig:
    """Loads a LazyConfig file and applies checked ``key=value`` overrides."""
    cfg = LazyConfig.load(path)
    overrides = list(overrides)
    check_override_keys(cfg, overrides)
    numeric = numeric_keys(cfg, overrides)
    planned_iter = OmegaConf.select(cfg, "train.max_iter", default=None)
    cfg = LazyConfig.apply_overrides(cfg, overrides)
    check_override_types(cfg, numeric)  # a non-number in a numeric key is an error naming it
    fit_schedule_to_run(cfg, planned_iter, overrides)  # a shortened run scales steps and warm-up
    return cfg


def setup_datasets(cfg: DictConfig) -> None:
    """Registers the datasets listed in ``dataloader.datasets`` (writing synthetic ones on first use)."""
    entries = OmegaConf.to_container(cfg.dataloader.get("datasets", []), resolve=True)
    register_config_datasets(entries)


def _dataset_names(names) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def thing_classes(cfg: DictConfig, split: str = "train") -> Optional[list[str]]:
    names = _dataset_names(cfg.dataloader[split].dataset.names)
    meta = MetadataCatalog.get(names[0])
    return list(meta.thing_classes) if meta.get("thing_classes", None) is not None else None


def resolve_device(cfg: DictConfig) -> str:
    device = cfg.train.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("train.device=%s but CUDA is not available; running on the CPU", device)
        device = "cpu"
    return device


def build_model(cfg: DictConfig, classes: Optional[list[str]] = None) -> torch.nn.Module:
    """Instantiates ``cfg.model`` on ``train.device``; checks the class count against the dataset's."""
    if classes is not None and cfg.model.roi_heads.num_classes != len(classes):
        raise ValueError(
            f"model.roi_heads.num_classes={cfg.model.roi_heads.num_classes} but the dataset has {len(classes)} "
            f"classes; set model.roi_heads.num_classes={len(classes)}"
        )
    model = instantiate(cfg.model)
    return model.to(resolve_device(cfg))


def make_checkpointer(
    cfg: DictConfig, model, save_dir: str = "", **checkpointables
) -> EVADetectionCheckpointer:
    return EVADetectionCheckpointer(
        model,
        save_dir,
        thing_classes=thing_classes(cfg, "train"),
        source_classes=cfg.train.get("source_classes", None),
        load_options=OmegaConf.to_container(cfg.train.get("checkpoint_load", {}), resolve=True),
        **checkpointables,
    )


def do_test(cfg: DictConfig, model) -> dict:
    """Runs ``dataloader.test`` through the model and ``dataloader.evaluator``; returns the metrics."""
    results = inference_on_dataset(
        model,
        with_worker_threads(instantiate(cfg.dataloader.test)),
        instantiate(cfg.dataloader.evaluator),
    )
    if comm.is_main_process() and results:
        print_csv_format(results)
    return results


def wrap_ddp(model, device: str, *, fp16_compression: bool = False, **kwargs):
    """DistributedDataParallel when several processes run: Detectron2's wrapper on GPU, a plain one on the CPU
    (gloo; Detectron2's names a GPU device id)."""
    if comm.get_world_size() == 1:
        return model
    if device.startswith("cuda"):
        return create_ddp_model(model, fp16_compression=fp16_compression, **kwargs)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, **kwargs)


class _StagedCheckpointer(hooks.PeriodicCheckpointer):
    """Periodic checkpoints; ``model_final`` only when the planned ``max_iter`` is reached. A run that stops
    earlier (``train.stop_iter``) ends with ``model_{iter}`` instead, which ``--resume`` continues from."""

    def __init__(self, checkpointer, period: int, planned_iter: int, **kwargs):
        super().__init__(checkpointer, period, **kwargs)
        self.planned_iter = planned_iter

    def before_train(self):
        self.max_iter = self.planned_iter

    def after_train(self):
        finished = self.trainer.iter >= self.trainer.max_iter  # the loop ran to its end (no exception)
        last = self.trainer.iter - 1
        if finished and last + 1 < self.planned_iter and (last + 1) % self.period:
            self.trainer.iter = last  # the trainer's saved state must name the last finished iteration
            try:
                self.checkpointer.save(f"{self.file_prefix}_{last:07d}", iteration=last)
            finally:
                self.trainer.iter = last + 1


def do_train(cfg: DictConfig, resume: bool = False):
    """Trains ``cfg.model`` from ``train.init_checkpoint`` (or resumes ``train.output_dir``); evaluates at the
    end (and every ``train.eval_period`` iterations if > 0). Returns the trainer."""
    classes = thing_classes(cfg, "train")
    model = build_model(cfg, classes)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    del cfg.optimizer.params.model
    train_loader = with_worker_threads(instantiate(cfg.dataloader.train))
    device = resolve_device(cfg)
    model = wrap_ddp(model, device, **cfg.train.ddp)
    if cfg.train.amp.enabled and device.startswith("cuda"):
        trainer = AMPTrainer(model, train_loader, optim)
    else:
        trainer = SimpleTrainer(model, train_loader, optim)
    unwrapped = model.module if hasattr(model, "module") else model
    checkpointer = make_checkpointer(cfg, unwrapped, cfg.train.output_dir, trainer=trainer)
    max_iter = cfg.train.max_iter
    stop_iter = cfg.train.get("stop_iter", None) or max_iter
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=LRMultiplier(optim, instantiate(cfg.lr_multiplier), max_iter)),
            _StagedCheckpointer(checkpointer, planned_iter=max_iter, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, unwrapped))
            if cfg.train.eval_period >= 0
            else None,
            # SIGINT/SIGTERM: finish the iteration, save, stop (before the writer, which then logs it once)
            StopOnSignal(checkpointer if comm.is_main_process() else None, device),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, stop_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    if start_iter >= stop_iter:
        logger.info(
            "training already reached iteration %d (stop at %d); nothing to do", start_iter, stop_iter
        )
        return trainer
    try:
        trainer.train(start_iter, stop_iter)
    except TrainingInterrupted:
        pass  # checkpoint written by StopOnSignal
    return trainer


class WeightsNotLoadedError(ValueError):
    """Evaluation of a model whose weights were not (all) loaded from the checkpoint."""


def do_eval_only(cfg: DictConfig, resume: bool = False, allow_missing_weights: bool = False) -> dict:
    """Loads ``train.init_checkpoint`` (with ``resume``: the last intact checkpoint of ``train.output_dir``) and
    evaluates. A model whose weights the checkpoint does not all set (a backbone-only file, no checkpoint, another
    model's file) is refused with :class:`WeightsNotLoadedError` unless ``allow_missing_weights``: its heads would
    be random."""
    model = build_model(cfg, thing_classes(cfg, "test"))
    model.eval()
    checkpointer = EVADetectionCheckpointer(
        model,
        cfg.train.output_dir if resume else "",
        thing_classes=thing_classes(cfg, "test"),
        source_classes=cfg.train.get("source_classes", None),
        load_options=OmegaConf.to_container(cfg.train.get("checkpoint_load", {}), resolve=True),
        ema_weights=bool(cfg.train.get("model_ema", {}).get("use_ema_weights_for_eval_only", False)),
    )
    if resume:
        if not checkpointer.has_checkpoint():
            raise FileNotFoundError(
                f"--eval-only --resume: no checkpoint in train.output_dir={cfg.train.output_dir!r} "
                f"(no last_checkpoint file)"
            )
        checkpointer.load_latest_intact(checkpointables=[])
        source = f"the last checkpoint of {cfg.train.output_dir}"
    else:
        checkpointer.load(cfg.train.init_checkpoint, checkpointables=[])
        source = f"train.init_checkpoint={cfg.train.init_checkpoint!r}"
    unloaded = checkpointer.unloaded_keys()
    if unloaded:
        shown = ", ".join(unloaded[:8]) + (", ..." if len(unloaded) > 8 else "")
        message = (
            f"{source} does not set {len(unloaded)} of the model's {len(model.state_dict())} weights "
            f"({shown}); evaluating would score their random initial values"
        )
        if not allow_missing_weights:
            raise WeightsNotLoadedError(
                f"{message}. Pass a trained detector checkpoint, or --allow-missing-weights to evaluate anyway."
            )
        logger.warning("%s (--allow-missing-weights)", message)
    return do_test(cfg, model)
