"""stream_out.py prepare --checkpoint_path X: convert a Wav2Lip checkpoint for this CPU ahead of the first render.

The conversion (OpenVINO, int8 calibrated on generic face crops and checked against fp32) is what makes a first
render slow; it is stored in the runtime cache under the checkpoint's weights, and every later render with any
presenter starts from it."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Optional

from configs import flags
from configs.spec import PrepareSpec

STEPS = ("load", "convert", "calibrate", "check", "save")


def parse_args(argv: list[str]) -> PrepareSpec:
    return flags.parse_spec(PrepareSpec, argv, "prepare", argparse.ArgumentParser(
        prog="stream_out.py prepare", description=__doc__.splitlines()[0]))


def main(argv: Optional[list[str]] = None) -> int:
    from tqdm import tqdm

    from models.loader import load_generator
    from models.predictor import LipSyncPredictor
    from models.openvino_cpu import default_runtime_cache
    from models.stored import remember_conversion

    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    store = Path(args.runtime_cache) if args.runtime_cache else default_runtime_cache()
    started = time.perf_counter()
    spent: dict[str, float] = {}
    current = ["load", time.perf_counter()]
    with tqdm(total=len(STEPS), desc="prepare", unit="step", bar_format="{desc}: {n}/{total} {postfix}") as bar:
        def step(name: str) -> None:
            """A step starts: the one before it ends (its time is printed at the end)."""
            now = time.perf_counter()
            spent[current[0]] = spent.get(current[0], 0.0) + now - current[1]
            current[:] = [name, now]
            bar.n = STEPS.index(name)
            bar.set_postfix_str(name)
            bar.refresh()

        step("load")
        generator = load_generator(args.checkpoint_path, args.trust_checkpoint)
        predictor = LipSyncPredictor(generator.model, "cpu", args.dtype, runtime="openvino", store_dir=store,
                                     progress=step, own_model=True)
        remember_conversion(args.checkpoint_path, store, predictor, args.dtype)
        step("load")  # closes the last step's time
        bar.n = len(STEPS)
        bar.set_postfix_str("done")
    steps = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in spent.items())
    print(f"prepared {generator.spec.name} ({predictor.precision}) in {store} in "
          f"{time.perf_counter() - started:.1f} s ({steps}): renders with any presenter start from it")
    return 0
