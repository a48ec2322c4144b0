"""The compositor of engine/render/composite.py in torch, on whatever device the frames live: the device pipeline's.

Same masks, same blend, same colour match and the same GFPGAN head path, written with tensor ops so that on a
GPU nothing goes back to the host until the finished frame: cv2.resize becomes F.interpolate (bilinear, half-pixel
centres, as INTER_LINEAR), cv2.warpAffine becomes grid_sample (border replicate for the head, zeros for its mask).
It is tested against the cv2 compositor on the CPU: mean within 1 and max within 8 levels of 255.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from .composite import CompositeSteps, head_face_mask, head_footprint, lower_face_mask
from .presenter import Presenter
from .resident import ResidentFrames


@lru_cache(maxsize=8)
def _mask(kind: str, size: int, device: torch.device) -> torch.Tensor:
    mask = lower_face_mask(size) if kind == "crop" else head_face_mask(size)
    return torch.from_numpy(mask).to(device)


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H,W,C) or (H,W) float -> (height,width[,C]) float, as cv2.resize INTER_LINEAR."""
    planar = image.permute(2, 0, 1)[None] if image.ndim == 3 else image[None, None]
    out = F.interpolate(planar, size=(height, width), mode="bilinear", align_corners=False)[0]
    return out.permute(1, 2, 0) if image.ndim == 3 else out[0]


def blend(dst: torch.Tensor, src: torch.Tensor, mask: torch.Tensor) -> None:
    """dst = mask * src + (1 - mask) * dst, in place on a uint8 view, rounded like composite.blend."""
    m = mask[..., None]
    dst.copy_((src.float() * m + dst.float() * (1 - m) + 0.5).clamp_(0, 255).to(torch.uint8))


def match_colour(generated: torch.Tensor, original: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask[..., None]
    shift = ((original.float() - generated.float()) * weight).sum((0, 1)) / (weight.sum() + 1e-6)
    return torch.round(generated.float() + shift).clamp_(0, 255).to(torch.uint8)


class TorchCompositor(CompositeSteps):
    """compose(indices, faces) -> frames, all (…,3) uint8 BGR tensors on the frames' device."""
    on_device = True

    def __init__(self, presenter: Presenter, frames: ResidentFrames, enhance: str = "none", enhancer=None,
                 colour_match: bool = False):
        super().__init__(presenter, enhance, enhancer, colour_match)
        if enhance != "none" and frames.heads is None:
            raise ValueError(f"--enhance {enhance} needs the cached heads decoded (load_resident with_heads=True)")
        self.frames, self.device = frames, frames.device
        self.crop_mask = _mask("crop", presenter.face_size, self.device)
        self.head_forward = torch.from_numpy(presenter.head_affine.astype("float32")).to(self.device) \
            if enhance != "none" else None  # every frame's frame -> head affine, uploaded once

    def faces(self, indices: list[int]) -> torch.Tensor:
        return self.frames.face_batch(indices)

    def passthrough(self, index: int) -> torch.Tensor:
        return self.frames.background(index)

    _stack = staticmethod(torch.stack)

    def _restore(self, heads: torch.Tensor) -> torch.Tensor:
        return self.enhancer.enhance_tensors(heads)

    def _colour_matched(self, indices: list[int], faces: torch.Tensor) -> torch.Tensor:
        originals = self.frames.face_batch(indices)
        return torch.stack([match_colour(f, o, self.crop_mask) for f, o in zip(faces, originals)])

    def _paste_crop(self, index: int, face: torch.Tensor) -> torch.Tensor:
        return self._blend_face(self.frames.background(index).clone(), self.presenter.box[index], face)

    def _head_with_mouth(self, index: int, face: torch.Tensor) -> torch.Tensor:
        return self._blend_face(self.frames.head(index).clone(), self.presenter.head_box[index], face)

    def _blend_face(self, image: torch.Tensor, box, face: torch.Tensor) -> torch.Tensor:
        """The crop resized into its box of `image` under the feathered lower-face mask (in place)."""
        x1, y1, x2, y2 = (int(v) for v in box)
        blend(image[y1:y2, x1:x2], resize(face.float(), y2 - y1, x2 - x1), resize(self.crop_mask, y2 - y1, x2 - x1))
        return image

    def _lip_only(self, index: int, head: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """The restored pixels only under the crop's mask: blended over the crop's box alone (outside it the mask is
        0, so the head is unchanged there)."""
        x1, y1, x2, y2 = (int(v) for v in self.presenter.head_box[index])
        out = head.clone()
        blend(out[y1:y2, x1:x2], restored[y1:y2, x1:x2], resize(self.crop_mask, y2 - y1, x2 - x1))
        return out

    def _paste_head(self, index: int, head: torch.Tensor) -> torch.Tensor:
        """Sample the head back into its footprint in the frame (grid_sample through the frame -> head affine).

        The head and its mask are sampled in one call, as four channels with border padding: the mask is exactly 0
        on the head's border, so that equals sampling it alone with zero padding. The affine is indexed on the
        device: no per-frame upload, which would wait for every kernel queued before it (GFPGAN's included)."""
        frame = self.frames.background(index).clone()
        size = head.shape[0]
        footprint = head_footprint(self.presenter, index, size)
        if footprint is None:
            return frame
        x1, y1, x2, y2 = footprint
        forward = self.head_forward[index]
        ys = torch.arange(y1, y2, device=self.device, dtype=torch.float32)[:, None]
        xs = torch.arange(x1, x2, device=self.device, dtype=torch.float32)[None, :]
        sx = forward[0, 0] * xs + forward[0, 1] * ys + forward[0, 2]  # head pixel (centre-at-integer) per frame pixel
        sy = forward[1, 0] * xs + forward[1, 1] * ys + forward[1, 2]
        grid = torch.stack([(2 * sx + 1) / size - 1, (2 * sy + 1) / size - 1], dim=-1)[None]
        head_and_mask = torch.cat([head.permute(2, 0, 1).float(), _mask("head", size, self.device)[None]])[None]
        sampled = F.grid_sample(head_and_mask, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
        blend(frame[y1:y2, x1:x2], sampled[:3].permute(1, 2, 0), sampled[3])
        return frame
