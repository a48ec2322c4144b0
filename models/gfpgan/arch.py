"""The GFPGANv1Clean network (GFPGAN v1.3 / v1.4), taken from spandrel rather than from the gfpgan package.

gfpgan needs torchvision (here: a 5.5 GB CUDA torch swap), basicsr (broken on current torchvision) and facexlib
(downloads detection weights when constructed). spandrel carries the same architecture with identical state-dict
keys in pure PyTorch; it is installed with --no-deps, and since importing it registers every architecture it
knows, two of which import torchvision names at module load, a stand-in for those names is provided when
torchvision is absent. The stand-in's functions are never called by GFPGAN; they raise if anything else calls them.
"""
from __future__ import annotations

import importlib.util
import sys
import types

from torch import nn


def _provide_torchvision_names() -> None:
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return

    def unavailable(*_args, **_kwargs):
        raise RuntimeError("torchvision is not installed; only GFPGAN is supported from spandrel here")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(NEAREST="nearest", BILINEAR="bilinear", BICUBIC="bicubic")
    functional.rotate = functional.normalize = unavailable
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    package = types.ModuleType("torchvision")
    package.transforms = transforms
    sys.modules.update({"torchvision": package, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def build_gfpgan() -> nn.Module:
    """GFPGANv1Clean with the released hyper-parameters (512 px, 512 style features, channel multiplier 2)."""
    _provide_torchvision_names()
    from spandrel.architectures.GFPGAN import GFPGAN
    return GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, num_mlp=8, input_is_latent=True,
                  different_w=True, narrow=1, sft_half=True)

