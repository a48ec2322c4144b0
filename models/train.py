"""Train a SyncNet lip expert or a Wav2Lip generator on an LRS2-style folder (`preprocess --train_dir`).

python -m models.train syncnet --size 96|288|384 --data_root TRAIN --checkpoint_dir CKPT [--pre_path X.pth]
python -m models.train wav2lip --size 96|288|384 --data_root TRAIN --checkpoint_dir CKPT --syncnet EXPERT.pth
                               [--gan (96 only)] [--pre_path X.pth]

The recipes are the reference ones (Adam 1e-4; SyncNet: BCE on the cosine similarity, half the pairs in sync;
generator: L1, plus the frozen expert's sync loss once the eval sync loss drops below 0.75, plus the optional
quality discriminator). Checkpoints are the released layout (`checkpoint_step{N:09d}.pth`, written whole or not
at all), and a run started again in the same --checkpoint_dir resumes from its newest one.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import wav2lip96, wav2lip288, wav2lip384
from .blocks import QualityDiscriminator, SyncNet, Wav2Lip
from .checkpoint import CheckpointError, read_checkpoint
from .dataset import Sampler, batch, read_split
from .loader import load_generator, load_syncnet, save_checkpoint
from .predictor import pick_device

log = logging.getLogger("train")
ARCH = {96: wav2lip96, 288: wav2lip288, 384: wav2lip384}


@dataclass(frozen=True)
class TrainConfig:
    size: int = 96
    batch_size: int = 64            # reference: 64 for SyncNet, 16 for the generator
    lr: float = 1e-4
    steps: int = 200_000
    checkpoint_interval: int = 3000
    eval_interval: int = 3000
    eval_batches: int = 50
    syncnet_wt: Optional[float] = None  # sync loss weight once enabled; None: the reference's (sync_weight())
    sync_enable_below: float = 0.75  # eval sync loss below which the sync loss is switched on
    disc_wt: float = 0.07           # GAN perceptual loss weight (with --gan)
    seed: int = 0


def sync_weight(cfg: TrainConfig, gan: bool) -> float:
    """The sync loss weight once it is switched on: --syncnet_wt when given, else the reference scripts' value,
    0.01 in wav2lip_train.py and 0.03 in hq_wav2lip_train.py (the GAN one)."""
    if cfg.syncnet_wt is not None:
        return cfg.syncnet_wt
    return 0.03 if gan else 0.01


def cosine_loss(audio: torch.Tensor, face: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The reference `cosine_loss`: BCE of the embeddings' cosine similarity (in [0,1] after ReLU) vs in-sync."""
    similarity = F.cosine_similarity(audio.float(), face.float()).clamp(1e-7, 1 - 1e-7).unsqueeze(1)
    return F.binary_cross_entropy(similarity, label)


def lower_half_window(frames: torch.Tensor) -> torch.Tensor:
    """(B,3,5,S,S) generated frames -> (B,15,S/2,S): the SyncNet input, frames concatenated on channels."""
    half = frames[:, :, :, frames.size(3) // 2:]
    return torch.cat([half[:, :, t] for t in range(half.size(2))], dim=1)


class Trainer:
    """Shared loop: steps, mixed precision on CUDA, periodic eval and checkpoints, resume."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, checkpoint_dir: Path, device: torch.device,
                 prefix: str = "checkpoint", betas: tuple[float, float] = (0.9, 0.999)):
        self.model, self.cfg, self.device, self.prefix = model.to(device), cfg, device, prefix
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self.optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=betas)
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step = 0
        self.epoch = 0
        self.companions: list["Trainer"] = []  # trained alongside (the discriminator): saved at the same steps

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp)

    def newest_checkpoint(self) -> Optional[Path]:
        found = sorted(self.checkpoint_dir.glob(f"{self.prefix}_step*.pth"))
        return found[-1] if found else None

    def resume(self) -> bool:
        """Continue from the newest checkpoint in checkpoint_dir (weights, optimizer, step); False if none."""
        path = self.newest_checkpoint()
        if path is None:
            return False
        state, extra = read_checkpoint(path)
        self.model.load_state_dict(state)
        if extra.get("optimizer"):
            self.optimizer.load_state_dict(extra["optimizer"])
        self.step, self.epoch = int(extra.get("global_step", 0)), int(extra.get("global_epoch", 0))
        log.info("resumed from %s (step %d)", path, self.step)
        return True

    def backward(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def save(self) -> Path:
        for other in self.companions:
            other.step, other.epoch = self.step, self.epoch
            other.save()
        return save_checkpoint(self.model, self.checkpoint_dir / f"{self.prefix}_step{self.step:09d}.pth",
                               self.optimizer, self.step, self.epoch)


def load_initial(model: nn.Module, path: Optional[str], kind: str) -> None:
    """--pre_path: start from a checkpoint of the same architecture (checked by our loader)."""
    if not path:
        return
    loaded = (load_syncnet if kind == "syncnet" else load_generator)(path)
    if loaded.spec.name != model.spec.name:
        raise CheckpointError(f"{path}: is {loaded.spec.name}, but this run trains {model.spec.name}")
    model.load_state_dict(loaded.model.state_dict())
    log.info("starting from %s", path)


def train_syncnet(data_root: Path, checkpoint_dir: Path, cfg: TrainConfig = TrainConfig(),
                  pre_path: Optional[str] = None, device: Optional[str] = None, progress: bool = True,
                  on_eval: Optional[Callable[[int, float], None]] = None) -> Path:
    """Train the lip expert; returns the last checkpoint written."""
    torch.manual_seed(cfg.seed)
    train, val = read_split(data_root, "train"), read_split(data_root, "val")
    model = SyncNet(ARCH[cfg.size].SYNCNET)
    load_initial(model, pre_path, "syncnet")
    trainer = Trainer(model, cfg, checkpoint_dir, pick_device(device))
    trainer.resume()
    samples = Sampler(train, cfg.size, cfg.seed + trainer.step)

    def loss_of(sampler: Sampler) -> torch.Tensor:
        faces, mel, label = (t.to(trainer.device) for t in batch([sampler.syncnet() for _ in range(cfg.batch_size)]))
        with trainer.autocast():
            audio, face = model(mel, faces)
        return cosine_loss(audio, face, label)

    def evaluate() -> float:
        model.eval()
        sampler = Sampler(val, cfg.size, 12345)  # the same eval batches every time
        with torch.no_grad():
            value = float(np.mean([loss_of(sampler).item() for _ in range(cfg.eval_batches)]))
        model.train()
        return value

    def step() -> torch.Tensor:
        loss = loss_of(samples)
        trainer.backward(loss)
        return loss

    return run_steps(trainer, step, evaluate, "syncnet", progress, on_eval)


def run_steps(trainer: Trainer, step: Callable[[], torch.Tensor], evaluate: Callable[[], float], name: str,
              progress: bool, on_eval: Optional[Callable[[int, float], None]]) -> Path:
    from tqdm import tqdm
    cfg, last = trainer.cfg, trainer.newest_checkpoint()
    trainer.model.train()
    with tqdm(total=cfg.steps, initial=trainer.step, desc=name, unit="step", disable=not progress) as bar:
        while trainer.step < cfg.steps:
            loss = step()  # one optimiser step; returns the loss it took
            trainer.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if trainer.step % cfg.eval_interval == 0 or trainer.step == cfg.steps:
                value = evaluate()
                log.info("step %d: eval loss %.4f", trainer.step, value)
                if on_eval:
                    on_eval(trainer.step, value)
            if trainer.step % cfg.checkpoint_interval == 0 or trainer.step == cfg.steps:
                last = trainer.save()
    return last


def train_wav2lip(data_root: Path, checkpoint_dir: Path, syncnet_path: str, cfg: TrainConfig = TrainConfig(),
                  pre_path: Optional[str] = None, gan: bool = False, device: Optional[str] = None,
                  progress: bool = True, on_eval: Optional[Callable[[int, float], None]] = None) -> Path:
    """Train the generator against a frozen expert (and optionally the quality discriminator)."""
    torch.manual_seed(cfg.seed)
    train, val = read_split(data_root, "train"), read_split(data_root, "val")
    arch = ARCH[cfg.size]
    expert = load_syncnet(syncnet_path)
    if expert.spec.size != cfg.size:
        raise CheckpointError(f"{syncnet_path}: is a {expert.spec.size}px expert; this run trains {cfg.size}px")
    model = Wav2Lip(arch.GENERATOR)
    load_initial(model, pre_path, "generator")
    if gan and not hasattr(arch, "DISCRIMINATOR"):
        raise ValueError(f"--gan: no reference quality discriminator for {cfg.size}px; train without --gan")
    betas = (0.5, 0.999) if gan else (0.9, 0.999)  # hq_wav2lip_train.py's Adam betas for G and D
    trainer = Trainer(model, cfg, checkpoint_dir, pick_device(device), betas=betas)
    trainer.resume()
    syncnet = expert.model.to(trainer.device).eval()
    for p in syncnet.parameters():
        p.requires_grad_(False)
    disc = None
    if gan:
        disc = Trainer(QualityDiscriminator(arch.DISCRIMINATOR), cfg, checkpoint_dir, trainer.device,
                       "disc_checkpoint", betas)
        disc.resume()
        trainer.companions.append(disc)
    state = {"sync_wt": 0.0}
    full_sync_wt = sync_weight(cfg, gan)
    samples = Sampler(train, cfg.size, cfg.seed + trainer.step)

    def losses(sampler: Sampler):
        x, per_frame, mel, truth = (t.to(trainer.device) for t in batch([sampler.generator()
                                                                          for _ in range(cfg.batch_size)]))
        with trainer.autocast():
            generated = model(per_frame, x)
            audio, face = syncnet(mel, lower_half_window(generated))
        sync = cosine_loss(audio, face, torch.ones(len(audio), 1, device=trainer.device))
        l1 = F.l1_loss(generated.float(), truth)
        return generated, truth, sync, l1

    def step() -> torch.Tensor:
        generated, truth, sync, l1 = losses(samples)
        disc_wt = cfg.disc_wt if disc else 0.0
        loss = state["sync_wt"] * sync + (1 - state["sync_wt"] - disc_wt) * l1
        if disc:
            with trainer.autocast():
                fake = disc.model(generated)
            loss = loss + disc_wt * F.binary_cross_entropy(fake.float(), torch.ones_like(fake, dtype=torch.float32))
        trainer.backward(loss)
        if disc:  # then the discriminator, on real frames and the (detached) generated ones
            with trainer.autocast():
                real, fake = disc.model(truth), disc.model(generated.detach())
            disc_loss = (F.binary_cross_entropy(real.float(), torch.ones_like(real, dtype=torch.float32))
                         + F.binary_cross_entropy(fake.float(), torch.zeros_like(fake, dtype=torch.float32)))
            disc.backward(disc_loss)
        return loss

    def evaluate() -> float:
        model.eval()
        sampler = Sampler(val, cfg.size, 12345)
        with torch.no_grad():
            results = [losses(sampler) for _ in range(cfg.eval_batches)]
        model.train()
        sync = float(np.mean([r[2].item() for r in results]))
        l1 = float(np.mean([r[3].item() for r in results]))
        if state["sync_wt"] == 0 and sync < cfg.sync_enable_below:
            state["sync_wt"] = full_sync_wt
            log.info("eval sync loss %.3f < %.2f: sync loss on (weight %.2f)", sync, cfg.sync_enable_below, full_sync_wt)
        log.info("eval: L1 %.4f, sync %.4f", l1, sync)
        return l1

    return run_steps(trainer, step, evaluate, "wav2lip", progress, on_eval)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every training command shares: where the data and checkpoints are, the schedule, the device."""
    p.add_argument("--data_root", required=True, help="folder with train.txt/val.txt (preprocess --train_dir)")
    p.add_argument("--checkpoint_dir", required=True, help="checkpoints go here; a rerun resumes from the newest")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--checkpoint_interval", type=int, default=TrainConfig.checkpoint_interval)
    p.add_argument("--eval_interval", type=int, default=TrainConfig.eval_interval)
    p.add_argument("--eval_batches", type=int, default=TrainConfig.eval_batches)
    p.add_argument("--device", default="auto")


def run_schedule(args: argparse.Namespace) -> dict:
    """TrainConfig's fields from add_run_flags' flags."""
    return {"lr": args.lr, "steps": args.steps, "checkpoint_interval": args.checkpoint_interval,
            "eval_interval": args.eval_interval, "eval_batches": args.eval_batches}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.train", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["syncnet", "wav2lip"])
    p.add_argument("--size", type=int, default=96, choices=sorted(ARCH))
    add_run_flags(p)
    p.add_argument("--syncnet", help="wav2lip: the trained lip expert (released layout)")
    p.add_argument("--pre_path", help="start from this checkpoint (same architecture)")
    p.add_argument("--gan", action="store_true", help="wav2lip: add the quality discriminator (96 only)")
    p.add_argument("--batch_size", type=int, help="default 64 (syncnet) / 16 (wav2lip), as the reference")
    p.add_argument("--syncnet_wt", type=float, help="sync loss weight once on (default: the reference's, 0.01; 0.03 "
                                                    "with --gan)")
    p.add_argument("--disc_wt", type=float, default=TrainConfig.disc_wt)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = TrainConfig(size=args.size, batch_size=args.batch_size or (64 if args.what == "syncnet" else 16),
                      syncnet_wt=args.syncnet_wt, disc_wt=args.disc_wt, **run_schedule(args))
    if args.what == "syncnet":
        last = train_syncnet(Path(args.data_root), Path(args.checkpoint_dir), cfg, args.pre_path, args.device)
    else:
        if not args.syncnet:
            raise ValueError("wav2lip training needs --syncnet EXPERT.pth (train one with `models.train syncnet`)")
        last = train_wav2lip(Path(args.data_root), Path(args.checkpoint_dir), args.syncnet, cfg, args.pre_path,
                             args.gan, args.device)
    print(f"last checkpoint: {last}")
    return 0


if __name__ == "__main__":
    from core.cli import exit_with, run_command
    exit_with(run_command(main))
