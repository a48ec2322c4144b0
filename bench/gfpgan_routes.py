"""GFPGAN through spandrel (what we ship) against the `gfpgan` package: start-up cost and numerical agreement.

python bench/gfpgan_routes.py
- spandrel route: seconds to import it and build GFPGANv1Clean in a fresh interpreter; its state-dict key count;
- gfpgan package route: the same, then both networks with the same random weights on one 512 head, max difference
  of the outputs. The package is not in requirements.txt (it wants torchvision, which swaps torch for a 5.5 GB CUDA
  build, and basicsr and facexlib): install it in a separate environment, `pip install gfpgan`, and run this there.
  Without it that row says so and is skipped.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import header  # noqa: E402

SPANDREL = "from models.gfpgan.arch import build_gfpgan; print(len(build_gfpgan().state_dict()))"
PACKAGE = ("from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean; "
           "net = GFPGANv1Clean(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, "
           "fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True); "
           "print(len(net.state_dict()))")


def startup(code: str) -> tuple[float, str]:
    """Seconds for a fresh interpreter to run `code` (imports included), and what it printed (or its error)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    took = time.perf_counter() - started
    said = result.stdout.strip() if result.returncode == 0 else result.stderr.strip().splitlines()[-1]
    return took, said if result.returncode == 0 else f"failed: {said}"


def agreement() -> str:
    """Max |difference| between the two networks' outputs on the same weights and input, in [0,1] output units."""
    import numpy as np
    import torch
    from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

    from models.gfpgan.arch import build_gfpgan
    torch.manual_seed(0)
    ours = build_gfpgan().eval()
    theirs = GFPGANv1Clean(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                           fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1,
                           sft_half=True).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    head = torch.from_numpy(np.random.default_rng(0).random((1, 3, 512, 512), np.float32) * 2 - 1)
    with torch.no_grad():
        a = ours(head, return_rgb=False, randomize_noise=False)[0]
        b = theirs(head, return_rgb=False, randomize_noise=False)[0]
    return f"{float((a - b).abs().max()):.2e}"


def main() -> None:
    print(header())
    print("route | start-up (import + build, fresh interpreter) | state-dict entries | max output difference")
    took, entries = startup(SPANDREL)
    print(f"spandrel (shipped) | {took:.1f} s | {entries} | reference")
    try:
        import gfpgan  # noqa: F401
    except ImportError as exc:
        print(f"gfpgan package | skipped: {exc}; see this script's docstring | - | -")
        return
    took, entries = startup(PACKAGE)
    print(f"gfpgan package | {took:.1f} s | {entries} | {agreement()}")


if __name__ == "__main__":
    main()
