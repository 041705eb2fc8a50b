"""The masked-image-modelling training loop.

One process per device (``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``; multi-node works
the same way), DistributedDataParallel over the student, the frozen teacher replicated. The loss is normalised by
the number of masked patches of the whole global batch, so N processes with a global batch G follow the same loss
curve as one process with G. Optional ZeRO stage-1 optimizer-state sharding through PyTorch's
``ZeroRedundancyOptimizer``. Mixed precision: bf16, or fp16 with dynamic loss scaling (CUDA only).

Resumption: checkpoints hold the student, optimizer, loss scaler and step; the data order, augmentation, masks and
drop-path draws are functions of ``(seed, step)``, so a resumed run continues the same schedule on the same batches.
SIGINT/SIGTERM finish the current step, write a checkpoint and return.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..checkpoint_io import (
    save_checkpoint,
)
from ..runtime import DistributedStartupError, StopSignals, WorkerThreads, join_process_group
from .build import build_dataset, build_models, build_optimizer
from .config import ConfigError, check_config
from .data import GlobalBatchSampler, MIMDataset, collate
from .objective import lr_at_step, mim_loss
from .student import MIMStudent, export_state_dict
from .teacher import CLIPTeacher
from .training_state import (
    read_resume_checkpoint,
    save_training_state,
    truncate_log,
    warn_if_schedule_changed,
)

logger = logging.getLogger(__name__)

__all__ = ["train", "StepRecord", "TrainSummary"]

StepRecord = dict  # {"step", "epoch", "loss", "lr", "grad_norm", "skipped", "images_per_s", "eta_s"}


# ------------------------------------------------------------------------------------------ distributed set-up
def _join_process_group(backend: str, rank: int, world: int, timeout_s: float) -> None:
    """``init_process_group`` from torchrun's variables with a bounded wait and a message naming who is missing."""
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise DistributedStartupError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: start the processes with torchrun "
            "(torchrun --nproc_per_node N tools/pretrain.py ...)"
        )
    join_process_group(backend, rank, world, timeout_s, missing_hint=" (train.dist_timeout sets the wait)")


def _init_distributed(device_pref: Optional[str], timeout_s: float = 1800) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_pref is None else device_pref.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device='cuda' but no CUDA device is available")
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        _join_process_group("nccl" if use_cuda else "gloo", rank, world, timeout_s)
    return rank, world, device


def _amp_dtype(name: str, device: torch.device) -> Optional[torch.dtype]:
    if name not in ("fp16", "bf16", "none", None):
        raise ValueError(f"train.amp must be 'fp16', 'bf16' or 'none', got {name!r}")
    if name in ("none", None) or device.type != "cuda":
        return None  # mixed precision is a GPU feature here; CPU trains in fp32
    return torch.float16 if name == "fp16" else torch.bfloat16


# -------------------------------------------------------------------------------------------------- training
@dataclass
class TrainSummary:
    """What :func:`train` returns. Indexing by name (``summary["history"]``) is kept for callers written when
    the summary was a dict."""

    history: list[StepRecord]
    step: int
    total_steps: int
    interrupted: bool
    skipped_images: int
    export: Optional[str]
    checkpoint: str

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


@dataclass
class _Schedule:
    """Step counts of the run, from ``schedule`` and the data size."""

    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int


@dataclass
class _Run:
    """Everything a run builds once before its first step."""

    cfg: dict
    rank: int
    world: int
    device: torch.device
    out_dir: Path
    seed: int
    student: MIMStudent
    teacher: CLIPTeacher
    grid: tuple[int, int]
    dataset: MIMDataset
    schedule: _Schedule
    optimizer: torch.optim.Optimizer
    use_zero: bool
    amp_dtype: Optional[torch.dtype]
    scaler: torch.amp.GradScaler
    model: nn.Module = None  # the student, DDP-wrapped with several processes
    mean: Tensor = None
    std: Tensor = None
    start_step: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class _LoopState:
    """What changes from step to step."""

    step: int
    start_step: int
    t_start: float = field(default_factory=time.time)
    history: list[StepRecord] = field(default_factory=list)
    skipped: int = 0
    interrupted: bool = False


def train(cfg: dict, callbacks: Sequence[Callable[[StepRecord], None]] = ()) -> TrainSummary:
    """Runs pre-training as configured (see :mod:`eva_transfer.pretrain.config`).

    ``callbacks`` are called with each step's record on every process. Returns a :class:`TrainSummary`
    (``history``: the step records, ``step``, ``total_steps``, ``interrupted``, ``skipped_images``, ``export``,
    ``checkpoint``).
    """
    check_config(cfg)  # values, before any model or data is built
    owns_group = not dist.is_initialized()
    run = _set_up(cfg)
    owns_group = owns_group and dist.is_initialized()
    _resume(run)
    _wrap_model(run)
    _log_plan(run)
    state = _LoopState(step=run.start_step, start_step=run.start_step)
    tcfg = cfg["train"]
    writer = _tensorboard(run.out_dir, run.start_step) if (run.is_main and tcfg["tensorboard"]) else None
    log_file = open(run.out_dir / "log.jsonl", "a") if run.is_main else None
    try:
        with StopSignals("step", warn=logger.warning) as stop:
            while state.step < run.schedule.total_steps and not state.interrupted:
                _train_epoch(run, state, stop, callbacks, writer, log_file)
    finally:
        if writer is not None:
            writer.close()
        if log_file is not None:
            log_file.close()
    return _finish(run, state, owns_group)


def _set_up(cfg: dict) -> _Run:
    """Process group, device, models, data, schedule and optimizer."""
    tcfg = cfg["train"]
    rank, world, device = _init_distributed(tcfg["device"], tcfg.get("dist_timeout", 1800))
    out_dir = Path(tcfg["output_dir"])
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(tcfg["seed"])
    torch.manual_seed(seed)  # identical initial weights on every process (DDP also broadcasts them)
    student, teacher = build_models(cfg, device)
    grid = (cfg["data"]["img_size"] // student.backbone.patch_size,) * 2
    dataset = build_dataset(cfg, grid, seed)
    schedule = _schedule(cfg, len(dataset), rank, world, seed)
    optimizer, use_zero = build_optimizer(student, cfg["optim"], world, rank == 0)
    amp_dtype = _amp_dtype(tcfg["amp"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return _Run(
        cfg, rank, world, device, out_dir, seed, student, teacher, grid, dataset, schedule, optimizer, use_zero,
        amp_dtype, scaler,
    )  # fmt: skip


def _schedule(cfg: dict, num_images: int, rank: int, world: int, seed: int) -> _Schedule:
    """Steps per epoch, total and warm-up steps; a warm-up longer than the run is a ConfigError."""
    scfg = cfg["schedule"]
    global_batch = int(cfg["train"]["batch_size"])
    steps_per_epoch = GlobalBatchSampler(num_images, global_batch, rank, world, seed).batches_per_epoch
    total_steps = scfg["total_steps"] or int(scfg["epochs"] * steps_per_epoch)
    warmup_steps = (
        scfg["warmup_steps"]
        if scfg["warmup_steps"] is not None
        else int(scfg["warmup_epochs"] * steps_per_epoch)
    )
    if warmup_steps > total_steps:
        raise ConfigError(
            f"the warm-up ({warmup_steps} steps from schedule.warmup_steps / warmup_epochs) is longer than the run "
            f"({total_steps} steps from schedule.total_steps / epochs, {steps_per_epoch} steps per epoch)"
        )
    return _Schedule(global_batch, steps_per_epoch, total_steps, warmup_steps)


def _resume(run: _Run) -> None:
    """Loads the checkpoint ``train.resume`` names (or finds) and sets ``run.start_step``."""
    resume_path, ckpt = read_resume_checkpoint(run.cfg["train"]["resume"], run.out_dir)
    if resume_path is None:
        return
    run.student.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_step = int(ckpt["step"])
    if run.is_main:
        warn_if_schedule_changed(ckpt.get("config") or {}, run.cfg, run.world)
        truncate_log(
            run.out_dir / "log.jsonl", run.start_step
        )  # steps after the checkpoint are trained again
        logger.info("resumed from %s at step %d/%d", resume_path, run.start_step, run.schedule.total_steps)


def _wrap_model(run: _Run) -> None:
    """DDP around the student with several processes; the student's input normalisation on the device."""
    run.model = run.student
    if run.world > 1:
        run.model = nn.parallel.DistributedDataParallel(
            run.student, device_ids=[run.device.index] if run.device.type == "cuda" else None
        )
    run.model.train()
    run.mean = torch.tensor(run.cfg["data"]["mean"], device=run.device).view(1, 3, 1, 1)
    run.std = torch.tensor(run.cfg["data"]["std"], device=run.device).view(1, 3, 1, 1)


def _log_plan(run: _Run) -> None:
    if not run.is_main:
        return
    sch = run.schedule
    logger.info(
        "%d images, %d steps/epoch, %d steps (warm-up %d), global batch %d on %d process(es), %s, amp=%s, zero=%s",
        len(run.dataset),
        sch.steps_per_epoch,
        sch.total_steps,
        sch.warmup_steps,
        sch.global_batch,
        run.world,
        run.device,
        run.amp_dtype,
        run.use_zero,
    )


def _train_epoch(run: _Run, state: _LoopState, stop: StopSignals, callbacks, writer, log_file) -> None:
    """The steps of the current epoch from ``state.step`` on, until the epoch ends, the run ends or it stops."""
    epoch, first = divmod(state.step, run.schedule.steps_per_epoch)
    run.dataset.set_epoch(epoch)
    workers = run.cfg["data"]["workers"]
    sampler = GlobalBatchSampler(
        len(run.dataset), run.schedule.global_batch, run.rank, run.world, run.seed, epoch, first
    )
    loader = DataLoader(
        run.dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=run.device.type == "cuda",
        worker_init_fn=WorkerThreads(1) if workers else None,
    )
    for batch in loader:
        record, any_signalled = _train_step(run, state, batch, epoch, stop)
        _write_record(run, state, record, writer, log_file)
        for cb in callbacks:
            cb(record)
        # several processes decide on the reduced flag so that they all stop at the same step; one process
        # also sees a signal that arrived during the callbacks
        if _after_step(run, state, any_signalled or (run.world == 1 and stop.set)):
            break


def _train_step(
    run: _Run, state: _LoopState, batch: dict, epoch: int, stop: StopSignals
) -> tuple[dict, bool]:
    """One optimizer step on ``batch``; returns its record and whether any process had been signalled."""
    ocfg, scfg, sch = run.cfg["optim"], run.cfg["schedule"], run.schedule
    step, device, world = state.step, run.device, run.world
    lr = lr_at_step(step, sch.total_steps, sch.warmup_steps, ocfg["lr"], scfg["warmup_lr"], scfg["min_lr"])
    for g in run.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    torch.manual_seed(_step_seed(run.seed, step, run.rank))  # drop path draws are a function of the step
    images = batch["image"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    counts = torch.tensor([float(mask.sum()), float(batch["skipped"])], device=device)
    if world > 1:
        dist.all_reduce(counts)
    normalizer = counts[0].item() / world
    loss = mim_loss(
        run.model, run.teacher, images, mask, run.mean, run.std, run.grid, normalizer, run.amp_dtype
    )
    grad_norm = _optimizer_step(run, loss)

    stats = torch.tensor([loss.detach().float().item(), float(stop.set)], device=device)
    if world > 1:
        dist.all_reduce(stats)
    global_loss = stats[0].item() / world  # each rank's loss is world x its share of the mean
    if not math.isfinite(global_loss) and run.amp_dtype != torch.float16:
        raise FloatingPointError(
            f"loss is {global_loss} at step {step} (lr {lr:.3g}); lower optim.lr, raise "
            f"schedule.warmup_epochs, or resume from the last checkpoint"
        )
    state.step += 1
    state.skipped += int(counts[1].item())
    rate = (state.step - state.start_step) / max(time.time() - state.t_start, 1e-9)
    record: StepRecord = dict(
        step=state.step,
        epoch=epoch,
        loss=global_loss,
        lr=lr,
        grad_norm=float(grad_norm),
        skipped=state.skipped,
        images_per_s=rate * sch.global_batch,
        eta_s=(sch.total_steps - state.step) / rate,
    )
    return record, stats[1].item() > 0


def _optimizer_step(run: _Run, loss: Tensor) -> Tensor:
    """Backward (loss-scaled under fp16), gradient clipping at ``optim.clip_grad``, the AdamW step; returns the
    gradient norm before clipping."""
    clip = run.cfg["optim"]["clip_grad"]
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    max_norm = math.inf if clip is None else clip  # None: no clipping
    grad_norm = torch.nn.utils.clip_grad_norm_(run.student.parameters(), max_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _write_record(run: _Run, state: _LoopState, record: StepRecord, writer, log_file) -> None:
    """Keeps the record; the main process appends it to log.jsonl, tensorboard and (periodically) the log."""
    state.history.append(record)
    if not run.is_main:
        return
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    step, total = record["step"], run.schedule.total_steps
    if writer is not None:
        for k in ("loss", "lr", "grad_norm"):
            writer.add_scalar(f"train/{k}", record[k], step)
    if step % run.cfg["train"]["log_every"] == 0 or step == total or step == state.start_step + 1:
        logger.info("%s", _progress(record, total))


def _after_step(run: _Run, state: _LoopState, signalled: bool) -> bool:
    """Stops on a signal or ``train.max_steps_per_run``, checkpoints when due; True when the epoch's loop ends."""
    tcfg, total = run.cfg["train"], run.schedule.total_steps
    run_limit = tcfg["max_steps_per_run"]
    if signalled or (run_limit and state.step - state.start_step >= run_limit):
        state.interrupted = True
    if state.interrupted or state.step % tcfg["checkpoint_every"] == 0 or state.step == total:
        save_training_state(
            run.out_dir,
            run.student,
            run.optimizer,
            run.scaler,
            state.step,
            run.cfg,
            run.is_main,
            tcfg["keep_checkpoints"],
        )
    return state.interrupted or state.step >= total


def _finish(run: _Run, state: _LoopState, owns_group: bool) -> TrainSummary:
    """The exported backbone at the end of the run, the process group left, the summary."""
    tcfg, total = run.cfg["train"], run.schedule.total_steps
    export_path = None
    if state.step >= total and tcfg["export"]:
        export_path = run.out_dir / tcfg["export"]
        if run.is_main:
            save_checkpoint(export_state_dict(run.student), export_path)
            logger.info("backbone written to %s", export_path)
    if run.world > 1:
        dist.barrier()
        if owns_group:
            dist.destroy_process_group()
    if run.is_main:
        msg = "interrupted" if state.interrupted else "finished"
        logger.info("%s at step %d/%d; %d unreadable image(s) skipped", msg, state.step, total, state.skipped)
    return TrainSummary(
        history=state.history,
        step=state.step,
        total_steps=total,
        interrupted=state.interrupted,
        skipped_images=state.skipped,
        export=str(export_path) if export_path else None,
        checkpoint=str(run.out_dir / "last.pth"),
    )


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 1009 + rank) % (2**63)


def _progress(r: StepRecord, total: int) -> str:
    eta = int(r["eta_s"])
    return (
        f"step {r['step']}/{total} epoch {r['epoch']} loss {r['loss']:.4f} lr {r['lr']:.3e} "
        f"grad {r['grad_norm']:.3f} {r['images_per_s']:.1f} img/s eta {eta // 3600}:{eta // 60 % 60:02d}:"
        f"{eta % 60:02d}" + (f" skipped {r['skipped']}" if r["skipped"] else "")
    )


def _tensorboard(out_dir: Path, start_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; logging to log.jsonl only")
        return None
    return SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if start_step else None)
