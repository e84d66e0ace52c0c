"""The training run: model set-up, data order, the optimisation loop, checkpoints, logging, DDP.

One process or many (``torchrun``; NCCL on CUDA, gloo on CPU). Every process sees a disjoint slice of the same
global batch, so N processes with batch b train exactly like one process with batch N*b. The data order is a
pure function of (seed, step), which is what makes ``--resume`` continue exactly where a run stopped.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

from da3_splat.data.dl3dv import scene_list
from da3_splat.errors import InputError
from da3_splat.files import write_json
from da3_splat.model.weights import init_vit_weights
from da3_splat.progress import progress_bar
from da3_splat.runtime import ARCH_PREFIX, RANDOM_PREFIX, load_model, resolve_device, set_pose_solver
from da3_splat.train.config import TrainConfig, config_to_dict
from da3_splat.train.data_order import EpochItems, StepBatches
from da3_splat.train.step import compute_loss
from da3_splat.train.validation import validate, validation_set

TRAINABLE = {  # mode -> module name prefixes that learn
    "nvs": ("gs_head",),
    "nvs+heads": ("gs_head", "head", "cam_dec", "cam_enc"),
    "geometry": ("backbone", "head", "cam_dec", "cam_enc"),
    "geometry+nvs": ("backbone", "head", "cam_dec", "cam_enc", "gs_head"),
    "all": ("",),
}


# --------------------------------------------------------------------------------------------------
# Set-up


class Dist:
    """Rank and world size; set up from torchrun's environment variables."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def training_device(name: str, local_rank: int) -> torch.device:
    """The device of this process: ``name`` resolved, and on CUDA the GPU of its local rank."""
    if resolve_device(name) == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def build_model(cfg: TrainConfig, device: torch.device):
    if cfg.model.init == "vit" and not cfg.model.weights.startswith((RANDOM_PREFIX, ARCH_PREFIX)):
        raise InputError(f"--model.init vit re-draws random weights; {cfg.model.weights} is not random: or arch:")
    model = load_model(cfg.model.weights, seed=None)
    if cfg.model.init == "vit":
        init_vit_weights(model)
    if cfg.model.model_name:
        model.config = replace(model.config, model_name=cfg.model.model_name)
    if cfg.model.posed_depth_calibration is not None:
        model.config = replace(model.config, posed_depth_calibration=cfg.model.posed_depth_calibration)
    set_pose_solver(model, cfg.model.pose_solver)
    # Saved with the weights: inference then defaults to the resolution the model was trained at and, when the
    # geometry learns, to the reference-view rule it was trained with.
    model.config = replace(model.config, process_res=max(cfg.data.height, cfg.data.width))
    if cfg.train in ("geometry", "geometry+nvs", "all"):
        rule = "first" if cfg.reference_view == "random" else cfg.reference_view
        model.config = replace(model.config, ref_view_strategy=rule)
    if "nvs" in cfg.train or cfg.train == "all":
        if model.config.is_nested:
            raise InputError("train the any-view model of a nested checkpoint, not the nested wrapper")
        if not model.has_gs_head:
            m = cfg.model
            model.add_nvs_head(m.nvs_features, m.sh_degree, m.rgb_shortcut, m.plane_sweep)
    prefixes = TRAINABLE[cfg.train]
    for name, p in model.named_parameters():
        p.requires_grad_(any(name.startswith(pre) for pre in prefixes))
    model.backbone.grad_checkpointing = cfg.grad_checkpointing
    return model.to(device)


def train_mode(model, cfg: TrainConfig):
    """Frozen parts stay in eval mode (no dropout here, but keeps the intent explicit)."""
    model.eval()
    for name, module in model.named_children():
        if any(name.startswith(p) or p == "" for p in TRAINABLE[cfg.train]):
            module.train()


def param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "token" in name or "pos_embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# What a run writes into --output besides its checkpoints (checkpoints/, whose step_* folders and marker
# checkpoint.remove_checkpoints knows): --overwrite deletes exactly these and leaves anything else there alone.
RUN_FILES = ("model", "tensorboard", "metrics.jsonl", "config.json", "summary.json")


def check_output(cfg: TrainConfig) -> None:
    """Refuse to mix runs in --output: an existing run needs --resume or --overwrite; --overwrite deletes the old
    run's checkpoints, model, logs and config (and nothing else in the folder) so nothing of it can be resumed."""
    import shutil

    from da3_splat.train.checkpoint import latest_checkpoint, remove_checkpoints

    out = cfg.output
    if cfg.resume and cfg.overwrite:
        raise InputError("pass --resume (continue the run) or --overwrite (start afresh), not both")
    has_run = (out / "checkpoints").exists() or (out / "model").exists()
    if has_run and not (cfg.resume or cfg.overwrite):
        raise InputError(f"{out} already holds a run; pass --resume to continue it or --overwrite to start afresh")
    if cfg.resume and latest_checkpoint(out / "checkpoints") is None:
        raise InputError(f"--resume: no checkpoints in {out}")
    if cfg.overwrite:
        remove_checkpoints(out / "checkpoints")  # first: an interrupted --overwrite then leaves nothing to resume
        for name in RUN_FILES:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()


# --------------------------------------------------------------------------------------------------
# The run


def _autocast(device: torch.device, bf16: bool):
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _writer(cfg: TrainConfig, console, purge_step: int | None = None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        console.print("[yellow]note:[/] tensorboard is not installed: no TensorBoard logs (metrics.jsonl only)")
        return None
    return SummaryWriter(str(cfg.output / "tensorboard"), purge_step=purge_step)


def run_train(cfg: TrainConfig, console=None) -> dict:
    """Train as configured; returns a summary dict (also written to OUTPUT/summary.json)."""
    from rich.console import Console

    from da3_splat.data.dataset import NVSDataset, collate
    from da3_splat.image_metrics import load_lpips, lpips_status
    from da3_splat.nvs import SceneBatch
    from da3_splat.train.checkpoint import latest_checkpoint, load_checkpoint, restore_rng, save_checkpoint
    from da3_splat.train.schedule import warmup_cosine

    console = console or Console(stderr=True)
    if cfg.data.height % 14 or cfg.data.width % 14:
        raise InputError(f"--data.height/--data.width must be multiples of 14, got {cfg.data.height}x{cfg.data.width}")
    if not cfg.data.train:
        raise InputError("no training data: pass --data.train FOLDER [FOLDER ...] (or use a preset that sets it)")
    env = Dist(torch.device("cpu"))
    device = training_device(cfg.device, env.local_rank)
    if env.world > 1 and device.type == "cuda" and not dist.is_initialized():
        env = Dist(device)
    if env.main:
        check_output(cfg)
    env.barrier()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    per_rank, global_batch = cfg.optim.batch_size, cfg.optim.batch_size * env.world
    scenes = scene_list(cfg.data.train)
    dataset = NVSDataset(
        scenes,
        size=(cfg.data.height, cfg.data.width),
        num_context=cfg.data.context_views,
        num_targets=cfg.data.target_views,
        window=cfg.data.window,
        downscale=cfg.data.downscale,
        seed=cfg.seed,
        batch_size=global_batch,
        items_per_epoch=max(global_batch, len(scenes) // global_batch * global_batch),
    )
    model = build_model(cfg, device)
    ddp_model = model
    if env.world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr, betas=(0.9, 0.95))
    scheduler = warmup_cosine(optimizer, cfg.optim.warmup, max(cfg.steps, 1))  # --steps 0: saves the start
    lpips_fn = load_lpips(device) if cfg.loss.lpips > 0 else None
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)

    start_step = 0
    ckpt_dir = cfg.output / "checkpoints"
    if cfg.resume:
        ckpt = load_checkpoint(latest_checkpoint(ckpt_dir))
        model.load_state_dict(ckpt.model_state, strict=True)
        optimizer.load_state_dict(ckpt.optimizer_state)
        scheduler.load_state_dict(ckpt.scheduler_state)
        restore_rng(ckpt)
        start_step = ckpt.step
    if env.main:
        cfg.output.mkdir(parents=True, exist_ok=True)
        if cfg.resume:  # the rows logged after that checkpoint: the steps that follow run (and log) again
            _truncate_metrics(cfg.output / "metrics.jsonl", start_step)
        else:  # a fresh log, not the rows of a run that stopped before its first checkpoint followed by the new ones
            (cfg.output / "metrics.jsonl").unlink(missing_ok=True)
        write_json(cfg.output / "config.json", config_to_dict(cfg))
        console.print(
            f"training {cfg.train} of {model.config.model_name}: {n_train / 1e6:.2f} M trainable parameters, "
            f"{len(dataset)} samples from {len(dataset.scenes)} scenes, {env.world} process(es) on {device.type}; "
            f"LPIPS: {'used' if lpips_fn is not None else lpips_status() if cfg.loss.lpips > 0 else 'off'}",
            highlight=False,
        )
        if cfg.resume:
            console.print(f"resuming from step {start_step} ({ckpt.path})", highlight=False)
    # On resume TensorBoard hides what the stopped run logged after its checkpoint (purge_step), as metrics.jsonl.
    writer = _writer(cfg, console, purge_step=start_step + 1 if cfg.resume else None) if env.main else None
    val = validation_set(cfg) if env.main else None
    sampler = StepBatches(len(dataset), global_batch, env.rank, per_rank, start_step, cfg.steps)
    loader = torch.utils.data.DataLoader(
        EpochItems(dataset),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.workers,
        persistent_workers=False,
        pin_memory=False,
    )
    batches = iter(loader)
    pose_rng_seed = cfg.seed + 7919
    t0, cpu0, last = time.perf_counter(), time.process_time(), {}
    progress = progress_bar(console, cfg.progress and env.main, remaining=True, transient=False)
    task = progress.add_task("train", total=cfg.steps, completed=start_step)
    step = start_step
    with progress:
        while step < cfg.steps:
            epoch = step // sampler.per_epoch
            sample = next(batches)
            batch = SceneBatch.from_dataset(sample, device)
            draw = np.random.default_rng([pose_rng_seed, step])
            posed = bool(draw.random() < cfg.posed)
            reference = int(draw.integers(batch.context_images.shape[1]))
            train_mode(model, cfg)
            with _autocast(device, cfg.bf16):
                loss, parts, render = compute_loss(ddp_model, batch, cfg, posed, lpips_fn, reference)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip > 0:
                parts["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip))
            optimizer.step()
            scheduler.step()
            step += 1
            last = parts
            progress.update(task, advance=1, description=f"train loss {parts['loss']:.4f}")
            if env.main and (step % cfg.log_every == 0 or step == cfg.steps):
                _log(cfg, writer, step, {**parts, "lr": scheduler.get_last_lr()[0], "posed": float(posed)})
            if env.main and writer is not None and render is not None and (step % cfg.images_every == 0):
                _log_images(writer, step, batch, render)
            if env.main and val is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                _log(cfg, writer, step, validate(model, val, device))
            out_of_time = cfg.max_minutes is not None and (time.perf_counter() - t0) / 60 > cfg.max_minutes
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time:
                if env.main:
                    save_checkpoint(
                        ckpt_dir,
                        step,
                        model.state_dict(),
                        optimizer,
                        scheduler,
                        {"epoch": epoch, "config": config_to_dict(cfg)},
                        keep=cfg.keep_checkpoints,
                    )
                env.barrier()
            if out_of_time:
                break
    # CPU seconds (this process, all threads): on a shared machine, cpu_seconds / cores is the time the run
    # would have taken with the cores to itself.
    summary = {
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - cpu0,
        "last": last,
        "processes": env.world,
    }
    if env.main:
        model.save_pretrained(cfg.output / "model", overwrite=True)
        (cfg.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        console.print(f"done: {step} steps in {summary['seconds'] / 60:.1f} min; model in {cfg.output / 'model'}")
    if writer is not None:
        writer.close()
    env.barrier()
    return summary


def _truncate_metrics(path, step: int) -> None:
    """Keep the rows of ``path`` (metrics.jsonl) up to ``step``, dropping later ones and any torn row left by a
    kill; replaced atomically, so an interruption leaves the old file or the new one."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line + "\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)


def _log(cfg: TrainConfig, writer, step: int, scalars: dict) -> None:
    scalars = {k: v for k, v in scalars.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    with open(cfg.output / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **scalars}) + "\n")
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(k, v, step)


def _log_images(writer, step: int, batch, render: torch.Tensor) -> None:
    """One grid per logged step: first sample's context views, then targets over their renders."""
    ctx = batch.context_images[0]
    tgt, ren = batch.target_images[0], render[0].detach().clamp(0, 1)
    rows = [torch.cat(list(ctx), dim=-1), torch.cat(list(tgt), dim=-1), torch.cat(list(ren), dim=-1)]
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows]
    writer.add_image("views/context_target_render", torch.cat(rows, dim=-2).cpu(), step)
