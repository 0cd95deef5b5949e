"""Training loop: rectified flow with diffusion forcing on Moving-digits clips.

Runs on a CPU, on one GPU (bf16 autocast) or on several through ``torchrun`` (DDP: one
process per GPU, each drawing its own clips). A run folder holds

- ``model.safetensors`` + ``model.json``: the EMA weights and config (what you ship),
- ``train_state.pt``: raw weights, EMA, optimizer, step and RNG states (to resume),
- ``log.jsonl``: one line per logging interval (loss, learning rate, throughput) and
  one per evaluation.

Checkpoints are written to a temporary name and renamed, so a crash mid-write leaves
the previous checkpoint intact; ``--resume`` continues from the last one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from .autoencoder import build_autoencoder
from .checkpoint import save_model
from .config import ModelConfig
from .data import MovingDigits
from .diffusion import NoiseLevels, flow_loss
from .dit import VideoDiT
from .grow import grow_into, load_source


@dataclass
class TrainArgs:
    out: str
    steps: int = 1000
    batch: int = 16
    lr: float = 3e-4
    warmup: int = 100
    ema: float = 0.999
    prompt_dropout: float = 0.1
    # every N-th step trains on single frames (image_batch of them) instead of clips: a
    # first frame has no past to copy, only the prompt, and a clip holds just one; these
    # steps give the same compute 8x more first frames (0: never)
    image_every: int = 0
    # the first image_steps steps train on single frames only (phase 1: learn to draw the
    # prompt), the rest on clips (with image_every); one schedule, resumable anywhere
    image_steps: int = 0
    image_batch: int = 0  # single frames per image step (0: batch x clip frames)
    # fraction of clips that are restoring clips (model.data.MovingDigits.restoring): a
    # digit appears mid-clip, or the first frames are blank or dimmed; those frames are
    # context (see NoiseLevels)
    restore: float = 0.0
    # noise levels (model.diffusion.NoiseLevels): logit-normal location/scale, uniform
    # fraction; context_loss False: no loss on the near-clean context frames
    t_mean: float = 0.0
    t_std: float = 1.0
    t_uniform: float = 0.5
    context_loss: bool = True
    seed: int = 0
    ckpt_every: int = 200
    keep_every: int = 0  # also keep model_step{N}.safetensors every N steps (0: never)
    log_every: int = 20
    eval_every: int = 0  # 0: evaluate only at the end (when eval_videos > 0)
    eval_videos: int = 0
    device: str = "auto"
    resume: bool = False
    max_minutes: float = 0.0  # stop (and checkpoint) after this long; 0 = no limit
    # start (not resume) from another run's train_state.pt or a model file, grown into
    # this config where it adds branches (model.grow); the optimizer starts afresh
    init_from: str = ""
    new_lr_mult: float = 1.0  # learning-rate factor of the tensors init_from lacked


def _setup_distributed(device: str) -> tuple[int, int, torch.device]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device("cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return 0, 1, torch.device(device)


def _lr_at(step: int, args: TrainArgs) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer(model: torch.nn.Module, args: TrainArgs, new_params: list[str]
               ) -> torch.optim.Optimizer:
    """AdamW; the tensors named in ``new_params`` (new branches of a grown model) in a
    second group whose learning rate is ``new_lr_mult`` times the schedule's."""
    new = set(new_params)
    old_group = [p for n, p in model.named_parameters() if n not in new]
    new_group = [p for n, p in model.named_parameters() if n in new]
    groups = [{"params": old_group, "lr_mult": 1.0}]
    if new_group:
        groups.append({"params": new_group, "lr_mult": args.new_lr_mult})
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)


def _append_log(out: Path, entry: dict) -> None:
    """One line in the run's log.jsonl, outside the training loop's open handle."""
    with (out / "log.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")


def make_batch(data: MovingDigits, ae, rng: np.random.Generator, batch: int, frames: int,
               prompt_dropout: float, restore: float = 0.0
               ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """(latents (B, F, C, h, w), prompts, prefix (B,)): ``prefix`` is the number of
    leading context frames of a restoring clip, -1 for an ordinary clip."""
    clips, prefix = [], []
    for _ in range(batch):
        if frames > 1 and restore and rng.random() < restore:
            clip, k = data.restoring(rng, frames)
        else:
            clip, k = data.sample(rng, frames), -1
        clips.append(clip)
        prefix.append(k)
    video = np.stack([c.frames for c in clips])  # (B, F, H, W) uint8
    x0 = ae.encode(video.reshape(-1, *video.shape[2:]))  # (B*F, C, H, W)
    x0 = x0.unflatten(0, (batch, frames))  # (B, F, C, H, W)
    prompts = ["" if rng.random() < prompt_dropout else c.prompt for c in clips]
    return x0, prompts, torch.tensor(prefix)


def step_shape(step: int, args: TrainArgs, clip_frames: int) -> tuple[int, int]:
    """(batch, frames) of training step ``step``: single frames or clips."""
    images = args.image_batch or args.batch * clip_frames
    if step < args.image_steps:
        return images, 1
    if args.image_every and step % args.image_every == args.image_every - 1:
        return images, 1
    return args.batch, clip_frames


def noise_levels(args: TrainArgs) -> NoiseLevels:
    return NoiseLevels(mean=args.t_mean, std=args.t_std, uniform=args.t_uniform,
                       context_loss=args.context_loss)


# options that change nothing about what is trained: they may differ on --resume
_RUN_OPTIONS = {"out", "steps", "ckpt_every", "keep_every", "log_every", "eval_every",
                "eval_videos", "device", "resume", "max_minutes"}


def train(cfg: ModelConfig, args: TrainArgs, evaluate_fn=None) -> Path:
    """Train ``cfg`` as ``args`` say; returns the path of the EMA model file."""
    rank, world, device = _setup_distributed(args.device)
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model = VideoDiT(cfg).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    state_path = out / "train_state.pt"
    new_params: list[str] = []  # tensors an --init-from source lacked (trained x new_lr_mult)
    step, elapsed_before = 0, 0.0
    np_rng = np.random.default_rng([args.seed, rank])
    t_rng = torch.Generator().manual_seed(args.seed * 1000 + rank)
    st = None
    if args.resume and state_path.exists():
        st = torch.load(state_path, map_location=device, weights_only=False)
        # compared as configs, not as text: a state saved before a field was added lacks
        # it, and means its default
        if ModelConfig.from_dict(json.loads(st["config"])) != cfg:
            raise ValueError(f"{state_path} was trained with another config; use another --out")
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        new_params = st.get("new_params", [])
        step, elapsed_before = st["step"], st.get("elapsed", 0.0)
        changed = {k: (v, getattr(args, k)) for k, v in st.get("args", {}).items()
                   if k not in _RUN_OPTIONS and getattr(args, k, v) != v}
        if changed and rank == 0:  # allowed (a recipe may change mid-run), but recorded
            tqdm.write(f"resuming at step {step} with changed options: {changed}")
            _append_log(out, {"step": step, "changed": changed})
        np_rng.bit_generator.state = st["np_rng"][rank] if rank < len(st["np_rng"]) else \
            np_rng.bit_generator.state
        t_rng.set_state(st["t_rng"].cpu())  # map_location moved it with the rest
    elif args.init_from:
        weights, ema_weights = load_source(args.init_from)
        new_params = grow_into(model, weights)
        grow_into(ema, ema_weights)
        if rank == 0:
            tqdm.write(f"started from {args.init_from}; new tensors: {len(new_params)}")
            _append_log(out, {"step": 0, "init_from": args.init_from, "new": new_params})
    opt = _optimizer(model, args, new_params)
    if st is not None:
        opt.load_state_dict(st["opt"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    data = MovingDigits("train", size=cfg.frame_size, order=cfg.prompt_order)
    ae = build_autoencoder(cfg, device)
    amp = device.type == "cuda"
    log = (out / "log.jsonl").open("a") if rank == 0 else None
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0, desc="train", unit="step")
    t_start, running, n_running = time.time(), 0.0, 0

    def checkpoint():
        if rank != 0:
            return
        elapsed = elapsed_before + time.time() - t_start
        save_model(ema, out / "model.safetensors",
                   extra={"step": step, "train_seconds": round(elapsed, 1),
                          "hardware": _hardware(device, world)})
        tmp = state_path.with_suffix(".tmp")
        torch.save({"config": cfg.to_json(), "model": model.state_dict(), "ema": ema.state_dict(),
                    "opt": opt.state_dict(), "step": step, "elapsed": elapsed,
                    "new_params": new_params,
                    "args": asdict(args),
                    "np_rng": [np_rng.bit_generator.state], "t_rng": t_rng.get_state()}, tmp)
        tmp.replace(state_path)

    levels = noise_levels(args)
    stop = _StopSignal()
    while step < args.steps and not stop.requested:
        for group in opt.param_groups:
            # an optimizer state saved before lr_mult existed loads groups without it
            group["lr"] = _lr_at(step, args) * group.get("lr_mult", 1.0)
        batch, frames = step_shape(step, args, cfg.train_clip_frames)
        x0, prompts, prefix = make_batch(data, ae, np_rng, batch, frames, args.prompt_dropout,
                                         args.restore)
        x0 = x0.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            cond = model.encode_prompts(prompts) if world == 1 else net.module.encode_prompts(
                prompts)
            loss = flow_loss(net, x0, cond, t_rng, levels, prefix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        step += 1
        running += loss.item()
        n_running += 1
        bar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            avg = running / n_running
            bar.set_postfix(loss=f"{avg:.4f}")
            if log:
                elapsed = elapsed_before + time.time() - t_start
                log.write(json.dumps({"step": step, "loss": round(avg, 5),
                                      "lr": _lr_at(step - 1, args),
                                      "elapsed_s": round(elapsed, 1)}) + "\n")
                log.flush()
            running, n_running = 0.0, 0
        if step % args.ckpt_every == 0:
            checkpoint()
        if rank == 0 and args.keep_every and step % args.keep_every == 0:
            save_model(ema, out / f"model_step{step}.safetensors", extra={"step": step})
        if evaluate_fn and rank == 0 and args.eval_every and step % args.eval_every == 0:
            _log_eval(log, step, evaluate_fn(ema, args.eval_videos))
        if args.max_minutes and time.time() - t_start > args.max_minutes * 60:
            bar.write(f"time limit reached at step {step}")
            break
    if stop.requested:
        bar.write(f"stopped by signal at step {step}; --resume continues from here")
    checkpoint()
    stop.restore()
    bar.close()
    if evaluate_fn and rank == 0 and args.eval_videos:
        _log_eval(log, step, evaluate_fn(ema, args.eval_videos))
    if world > 1:
        dist.destroy_process_group()
    return out / "model.safetensors"


class _StopSignal:
    """SIGTERM / SIGINT ask the loop to stop after the current step and checkpoint."""

    def __init__(self):
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # a second signal: stop now
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _log_eval(log, step: int, scores: dict) -> None:
    tqdm.write(f"eval at step {step}: {json.dumps(scores)}")
    if log:
        log.write(json.dumps({"step": step, "eval": scores}) + "\n")
        log.flush()


def _hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world} x {torch.cuda.get_device_name(device)}"
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
