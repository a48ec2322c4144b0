"""Train IP_LAP's two halves on our LRS2-style export (`preprocess --train_dir`), with the reference's losses.

python -m models.iplap.train landmark --data_root TRAIN --checkpoint_dir CKPT [--pre_path landmark.pth]
python -m models.iplap.train renderer --data_root TRAIN --checkpoint_dir CKPT
                                      (--vgg19 vgg19-dcbb9e9d.pth | --pre_path renderer_checkpoint.pth)

Read in the reference's train_landmarks_generator.py, train_video_renderer.py, loss.py and
models/pix2pixHD_disc.py:
- landmark generator: Adam 1e-4, batches of 128; loss = L1 between the predicted and true jaw and lip landmarks
  + the velocity loss (the mean distance between predicted and true frame-to-frame differences).
- renderer: Adam 1e-4, batches of 96 with 3 reference faces. For the first 25 epochs the loss is 2.5 x the
  perceptual loss of the warped reference alone; after, 2.5 x that + 4 x the perceptual loss with the style (Gram)
  term at 250 of the drawn face + 0.25 x the LSGAN loss + the discriminator's feature matching (L1 of each
  intermediate feature, x 2.5 / 2 per scale). The discriminator is pix2pixHD's two-scale PatchGAN (3 layers,
  instance norm, LSGAN), Adam 1e-4 with betas 0.5, 0.999, trained every step on its own loss (the reference's
  discriminator step also carries the generator loss's gradients, which its shared backward leaves in .grad). An
  epoch is as many samples as the training clips (the reference's loader length: one sample per video).
- the perceptual loss needs VGG19's ImageNet weights: torchvision's vgg19 file (--vgg19), or the renderer
  checkpoint you start from (it holds them). Nothing is downloaded.
Checkpoints are the released layout ({'state_dict' with module. keys, 'optimizer', 'global_step',
'global_epoch'}), written whole or not at all; a rerun in the same --checkpoint_dir resumes from the newest.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CheckpointError, read_checkpoint
from ..dataset import batch
from ..predictor import pick_device
from ..train import TrainConfig, Trainer, add_run_flags, run_schedule, run_steps
from .arch import LandmarkGenerator, Renderer
from .loader import load_landmark_generator, load_renderer
from .data import TRAINING_REFERENCES, IplapSampler, read_iplap_split

log = logging.getLogger("train")
WARP_WEIGHT, GENERATION_WEIGHT, GAN_WEIGHT, FEATURE_WEIGHT = 2.5, 4.0, 0.1 * 2.5, 2.5
STYLE_WEIGHT = 250.0
GAN_AFTER_EPOCH = 25
DISC_SCALES, DISC_LAYERS = 2, 3


def landmark_loss(model: LandmarkGenerator, samples: tuple[torch.Tensor, ...], device: torch.device) -> torch.Tensor:
    """L1 + velocity loss of a batch of IplapSampler.landmark() samples."""
    mels, pose, content, ref_pose, ref_content = (t.to(device) for t in samples)
    predicted = model(mels, pose, ref_pose, ref_content).float()
    truth = content.flatten(0, 1)
    return F.l1_loss(predicted, truth) + velocity_loss(predicted, truth, pose.size(1))


def velocity_loss(predicted: torch.Tensor, truth: torch.Tensor, frames: int) -> torch.Tensor:
    """(B*T, 2, 57) each: the mean Euclidean distance between their frame-to-frame differences (x, y per point)."""
    def steps(points: torch.Tensor) -> torch.Tensor:
        per_frame = points.reshape(-1, frames, 2, points.size(2)).transpose(2, 3).flatten(2)  # (B, T, 114)
        return (per_frame[:, 1:] - per_frame[:, :-1]).flatten(0, 1)
    return F.pairwise_distance(steps(predicted), steps(truth)).mean()


class MultiscaleDiscriminator(nn.Module):
    """pix2pixHD's PatchGAN at two scales, returning every block's features (getIntermFeat)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = DISC_LAYERS, scales: int = DISC_SCALES):
        super().__init__()
        self.scales, self.depth = scales, layers + 2
        for scale in range(scales):
            for index, block in enumerate(patch_blocks(channels, width, layers)):
                setattr(self, f"scale{scale}_layer{index}", block)
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)

    def forward(self, image: torch.Tensor) -> list[list[torch.Tensor]]:
        results = []
        for step in range(self.scales):
            scale = self.scales - 1 - step  # the finest input meets the last-built scale, as in pix2pixHD
            features, x = [], image
            for index in range(self.depth):
                x = getattr(self, f"scale{scale}_layer{index}")(x)
                features.append(x)
            results.append(features)
            if step != self.scales - 1:
                image = self.downsample(image)
        return results


def patch_blocks(channels: int, width: int, layers: int) -> list[nn.Sequential]:
    blocks = [nn.Sequential(nn.Conv2d(channels, width, 4, 2, 2), nn.LeakyReLU(0.2, True))]
    features = width
    for index in range(1, layers + 1):
        previous, features = features, min(features * 2, 512)
        blocks.append(nn.Sequential(nn.Conv2d(previous, features, 4, 2 if index < layers else 1, 2),
                                    nn.InstanceNorm2d(features), nn.LeakyReLU(0.2, True)))
    blocks.append(nn.Sequential(nn.Conv2d(features, 1, 4, 1, 2)))
    return blocks


def lsgan_loss(outputs: list[list[torch.Tensor]], real: bool) -> torch.Tensor:
    """The sum over scales of the MSE between each scale's last output and 1 (real) or 0."""
    return sum(F.mse_loss(scale[-1], torch.full_like(scale[-1], float(real))) for scale in outputs)


def feature_matching(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    weight = 4.0 / (DISC_LAYERS + 1) / DISC_SCALES * FEATURE_WEIGHT
    return sum(weight * F.l1_loss(f, r.detach()) for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1]))


def renderer_losses(model: Renderer, disc: MultiscaleDiscriminator, drawn: torch.Tensor, warped: torch.Tensor,
                    truth: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(the renderer's loss, the discriminator's) for a batch: the warped reference's perceptual loss alone, or with
    `full` the whole generator loss of the reference's later epochs."""
    fake_detached, real = disc(drawn.detach()), disc(truth)
    disc_loss = 0.5 * (lsgan_loss(fake_detached, False) + lsgan_loss(real, True))
    loss = WARP_WEIGHT * model.perceptual(warped, truth)
    if full:
        fake = disc(drawn)
        loss = loss + GENERATION_WEIGHT * model.perceptual(drawn, truth, STYLE_WEIGHT) \
            + GAN_WEIGHT * lsgan_loss(fake, True) + feature_matching(fake, real)
    return loss, disc_loss


def load_vgg19(model: Renderer, path: str) -> None:
    """torchvision's vgg19 ImageNet file (`features.N.weight` ...) into the perceptual loss's VGG19."""
    state, _ = read_checkpoint(path)
    features = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
    expected = model.perceptual.model.network.state_dict()
    if {k: tuple(v.shape) for k, v in features.items()} != {k: tuple(v.shape) for k, v in expected.items()}:
        raise CheckpointError(f"{path}: not torchvision's VGG19 (its features.* entries differ from vgg19's); "
                              f"use vgg19-dcbb9e9d.pth from torchvision's model zoo")
    model.perceptual.model.network.load_state_dict(features)
    log.info("perceptual loss: VGG19 weights from %s", path)


def train_landmark(data_root: Path, checkpoint_dir: Path, cfg: TrainConfig, pre_path: Optional[str] = None,
                   device: Optional[str] = None, progress: bool = True,
                   on_eval: Optional[Callable[[int, float], None]] = None) -> Path:
    """Train the landmark generator; returns the last checkpoint written."""
    torch.manual_seed(cfg.seed)
    train, val = read_iplap_split(data_root, "train"), read_iplap_split(data_root, "val")
    model = load_landmark_generator(pre_path, "cpu").train() if pre_path else LandmarkGenerator()
    trainer = Trainer(model, cfg, checkpoint_dir, pick_device(device))
    trainer.resume()
    samples = IplapSampler(train, cfg.seed + trainer.step)

    def loss_of(sampler: IplapSampler) -> torch.Tensor:
        with trainer.autocast():
            return landmark_loss(model, batch([sampler.landmark() for _ in range(cfg.batch_size)]), trainer.device)

    def step() -> torch.Tensor:
        loss = loss_of(samples)
        trainer.backward(loss)
        return loss

    return run_steps(trainer, step, evaluator(model, lambda: IplapSampler(val, 12345), loss_of, cfg), "landmark",
                     progress, on_eval)


def train_renderer(data_root: Path, checkpoint_dir: Path, cfg: TrainConfig, vgg19: Optional[str] = None,
                   pre_path: Optional[str] = None, device: Optional[str] = None, progress: bool = True,
                   on_eval: Optional[Callable[[int, float], None]] = None,
                   gan_after_epoch: int = GAN_AFTER_EPOCH, references: int = TRAINING_REFERENCES) -> Path:
    """Train the renderer and its discriminator; returns the last renderer checkpoint written."""
    if not (vgg19 or pre_path or any(Path(checkpoint_dir).glob("checkpoint_step*.pth"))):
        raise ValueError("the renderer's perceptual loss needs VGG19's ImageNet weights: --vgg19 vgg19-dcbb9e9d.pth "
                         "(torchvision's file) or --pre_path renderer_checkpoint.pth (it holds them)")
    torch.manual_seed(cfg.seed)
    train, val = read_iplap_split(data_root, "train"), read_iplap_split(data_root, "val")
    model = load_renderer(pre_path, "cpu", training=True).train() if pre_path else Renderer()
    if vgg19:
        load_vgg19(model, vgg19)
    trainer = Trainer(model, cfg, checkpoint_dir, pick_device(device))
    trainer.resume()
    disc = Trainer(MultiscaleDiscriminator(), cfg, checkpoint_dir, trainer.device, "disc_checkpoint", (0.5, 0.999))
    disc.resume()
    trainer.companions.append(disc)
    samples = IplapSampler(train, cfg.seed + trainer.step)

    def draw(sampler: IplapSampler):
        face, sketches, ref_faces, ref_sketches, mel = (t.to(trainer.device) for t in batch(
            [sampler.renderer(references) for _ in range(cfg.batch_size)]))
        with trainer.autocast():
            drawn, warped = model(face, sketches, ref_faces, ref_sketches, mel)
        return drawn.float(), warped.float(), face[:, 0]

    def step() -> torch.Tensor:
        full = trainer.step * cfg.batch_size // len(train) > gan_after_epoch
        loss, disc_loss = renderer_losses(model, disc.model, *draw(samples), full)
        trainer.backward(loss)
        disc.backward(disc_loss)
        return loss

    def eval_loss(sampler: IplapSampler) -> torch.Tensor:
        _, warped, truth = draw(sampler)
        return WARP_WEIGHT * model.perceptual(warped, truth)

    return run_steps(trainer, step, evaluator(model, lambda: IplapSampler(val, 12345), eval_loss, cfg), "renderer",
                     progress, on_eval)


def evaluator(model: nn.Module, sampler: Callable[[], IplapSampler], loss_of: Callable, cfg: TrainConfig):
    """The mean loss over the same `eval_batches` validation batches every time."""
    def evaluate() -> float:
        model.eval()
        validation = sampler()
        with torch.no_grad():
            value = float(np.mean([loss_of(validation).item() for _ in range(cfg.eval_batches)]))
        model.train()
        return value
    return evaluate


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.iplap.train", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["landmark", "renderer"])
    add_run_flags(p)
    p.add_argument("--pre_path", help="start from this checkpoint (the same half of IP_LAP)")
    p.add_argument("--vgg19", help="renderer: torchvision's VGG19 ImageNet file for the perceptual loss")
    p.add_argument("--batch_size", type=int, help="default 128 (landmark) / 96 (renderer), as the reference")
    p.add_argument("--references", type=int, default=TRAINING_REFERENCES,
                   help="renderer: reference faces per training sample (the reference's ref_N, 3)")
    p.add_argument("--gan_after_epoch", type=int, default=GAN_AFTER_EPOCH,
                   help="renderer: epochs of warp loss alone before the full loss (the reference's 25)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = TrainConfig(batch_size=args.batch_size or (128 if args.what == "landmark" else 96), **run_schedule(args))
    if args.what == "landmark":
        last = train_landmark(Path(args.data_root), Path(args.checkpoint_dir), cfg, args.pre_path, args.device)
    else:
        last = train_renderer(Path(args.data_root), Path(args.checkpoint_dir), cfg, args.vgg19, args.pre_path,
                              args.device, gan_after_epoch=args.gan_after_epoch, references=args.references)
    print(f"last checkpoint: {last}")
    return 0


if __name__ == "__main__":
    from core.cli import exit_with, run_command
    exit_with(run_command(main))
