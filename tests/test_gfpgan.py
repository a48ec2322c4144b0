"""models/gfpgan: released GFPGAN file layout loads; enhancement follows GFPGANer's pre/post-processing."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch

from models.blocks import Wav2Lip
from models.checkpoint import CheckpointError
from models.gfpgan import GfpganEnhancer, load_gfpgan
from models.gfpgan.arch import build_gfpgan
from models.loader import save_checkpoint
from models import wav2lip96
from preprocess import cache


@pytest.fixture(scope="module")
def released_gfpgan(tmp_path_factory):
    """A GFPGANv1.4-layout file from random weights: {'params_ema': state_dict}, keys as the release has them.
    The noise strengths start at zero; they are set as a trained decoder has them, so the noise maps matter."""
    torch.manual_seed(0)
    model = build_gfpgan().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("stylegan_decoder.style_conv") and param.shape == (1,):
                param.fill_(0.1)
    path = tmp_path_factory.mktemp("gfpgan") / "GFPGANv1.4.pth"
    torch.save({"params_ema": model.state_dict()}, path)
    return path, model


@pytest.fixture(scope="module")
def head(built) -> np.ndarray:
    folder = built["cache"] / "clip25"
    first_face = int(np.flatnonzero(cache.read_face_det(folder)["has_face"])[0])
    return cv2.imread(str(folder / "heads" / cache.frame_name(first_face, "heads")))


def test_released_layout_loads_strictly(released_gfpgan):
    path, model = released_gfpgan
    loaded = load_gfpgan(path)
    assert len(loaded.state_dict()) == 285
    assert sum(p.numel() for p in loaded.parameters()) == 86_444_252
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_enhance_follows_gfpganer_pre_and_post_processing(released_gfpgan, head, caplog):
    path, _ = released_gfpgan
    model = load_gfpgan(path)
    with caplog.at_level(logging.WARNING, logger="models"):
        enhancer = GfpganEnhancer(model, device="cpu")
    assert "Live enhancement needs a CUDA GPU" in caplog.text and not enhancer.realtime
    out = enhancer.enhance(head[None])
    assert out.shape == (1, 512, 512, 3) and out.dtype == np.uint8
    # GFPGANer: BGR->RGB, normalise to [-1,1], net, clamp, (y+1)/2*255 rounded, RGB->BGR; with the fixed noise
    # maps (randomize_noise=False), so the same head gives the same result every time
    x = torch.from_numpy(cv2.cvtColor(head, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None].contiguous().float() / 255
    with torch.no_grad():
        y = model((x - 0.5) / 0.5, return_rgb=False, randomize_noise=False)[0].clamp(-1, 1)
    expected = cv2.cvtColor(((y[0].permute(1, 2, 0).numpy() + 1) / 2 * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    assert np.abs(out[0].astype(int) - expected.astype(int)).max() <= 1


def test_wrong_and_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="GFPGANv1.4.pth"):
        load_gfpgan(tmp_path / "missing.pth")
    generator = save_checkpoint(Wav2Lip(wav2lip96.GENERATOR), tmp_path / "wav2lip.pth")
    with pytest.raises(CheckpointError, match="this is a Wav2Lip generator; expected a GFPGAN checkpoint"):
        load_gfpgan(generator)
    torch.save({"params_ema": {"conv_body_first.weight": torch.zeros(32, 3, 1, 1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a GFPGAN v1.3/v1.4"):
        load_gfpgan(tmp_path / "other.pth")
