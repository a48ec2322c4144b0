"""models/registry.py: every family recognised from its weights as released, named, and an unknown file refused
with its family's one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import CheckpointError, read_checkpoint
from models.registry import ARCHITECTURES, GFPGAN, identify, load

KEYS = Path(__file__).resolve().parent / "data" / "keys"


def key_table(name: str) -> dict[str, torch.Tensor]:
    """A state dict with the keys and shapes of a reference key table, as zeros that take no memory."""
    state = {}
    for line in (KEYS / f"{name}.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        state[key] = torch.zeros(()).expand([int(v) for v in shape.strip("[]").split(",") if v.strip()])
    return state


def prefixed(state: dict) -> dict:
    return {f"module.{key}": value for key, value in state.items()}


def gfpgan_state() -> dict[str, torch.Tensor]:
    """GFPGANv1Clean's keys as the release has them (spandrel's network carries them unchanged)."""
    with torch.device("meta"):
        shapes = {key: value.shape for key, value in GFPGAN.build().state_dict().items()}
    return {key: torch.zeros(()).expand(shape) for key, shape in shapes.items()}


# (reference key table, the file as the release writes it, the architecture the registry must name)
RELEASED = [
    ("wav2lip96", lambda s: {"state_dict": prefixed(s), "optimizer": None, "global_step": 1, "global_epoch": 0},
     "wav2lip96"),
    ("wav2lip288", lambda s: {"state_dict": prefixed(s), "global_step": 1}, "wav2lip288"),
    ("wav2lip288_prelu2021", lambda s: {"state_dict": prefixed(s), "global_step": 1}, "wav2lip288_prelu2021"),
    ("wav2lip384sam", lambda s: {"state_dict": prefixed(s), "global_step": 1}, "wav2lip384"),
    ("syncnet96", lambda s: {"state_dict": prefixed(s), "optimizer": None, "global_step": 1, "global_epoch": 0},
     "syncnet96"),
    ("syncnet288_prelu2021", lambda s: {"state_dict": prefixed(s)}, "syncnet288_prelu2021"),
    ("syncnet384", lambda s: {"state_dict": prefixed(s)}, "syncnet384"),
    ("iplap_landmark", lambda s: {"state_dict": prefixed(s)}, "iplap_landmark"),
    ("iplap_renderer", lambda s: {"state_dict": prefixed(s)}, "iplap_renderer"),
    # a bare state dict from before BatchNorm counted its batches
    ("syncnet_v2", lambda s: {k: v for k, v in s.items() if not k.endswith(".num_batches_tracked")}, "syncnet_v2"),
    # saved from the DistributedDataParallel wrapper, with a later release's training-only entry beside it
    ("rife_ifnet_hdv3", lambda s: {**prefixed(s), "teacher.block.conv0.weight": torch.zeros(())}, "rife4.6"),
    ("gfpgan", lambda s: {"params_ema": s}, "gfpgan"),
]


@pytest.mark.parametrize("table, released, name", RELEASED, ids=[r[0] for r in RELEASED])
def test_each_family_is_recognised_from_its_released_layout_and_named(tmp_path, table, released, name):
    path = tmp_path / "checkpoint.pth"
    torch.save(released(gfpgan_state() if table == "gfpgan" else key_table(table)), path)
    found = identify(read_checkpoint(path)[0])
    assert found is not None and found.name == name


def test_every_architecture_has_its_own_signature():
    signatures = [frozenset(architecture.signature.items()) for architecture in ARCHITECTURES]
    assert len(set(signatures)) == len(signatures) == len({a.name for a in ARCHITECTURES})


def test_the_one_loader_says_what_it_loaded(tmp_path):
    """Through the one path (read, signature, identify, build, strict load): syncnet_v2 as released, its 14
    BatchNorm counters absent and kept as built."""
    from models.syncnet_v2 import FAMILY
    table = key_table("syncnet_v2")
    torch.save({k: v for k, v in table.items() if not k.endswith(".num_batches_tracked")}, tmp_path / "sync.model")
    loaded = load(tmp_path / "sync.model", FAMILY)
    assert loaded.architecture.name == "syncnet_v2" and loaded.absent == 14 and loaded.ignored == 0
    assert loaded.describe().startswith("sync.model: syncnet_python's SyncNet S (102 entries")
    assert "14 entries absent" in loaded.describe() and not loaded.model.training


def unknown_loaders():
    from models import gfpgan, iplap, loader, rife, syncnet_v2
    from models.iplap import loader as iplap_loader
    # each family's own line for a state dict it does not know, as its loader has always said it: (start, end)
    return [(loader.load_generator, "unknown generator architecture: 1 entries; closest known is ", " …"),
            (loader.load_syncnet, "unknown syncnet architecture: 1 entries; closest known is ", " …"),
            (iplap.load_landmark_generator, "not IP_LAP's landmark generator (landmarkgenerator_checkpoint.pth) "
             "(1 entries): unexpected: odd.weight; ", f" …; {iplap_loader.WHERE_FROM}"),
            (iplap.load_renderer, "not IP_LAP's renderer (renderer_checkpoint.pth) (1 entries): unexpected: "
                                  "odd.weight; ", f" …; {iplap_loader.WHERE_FROM}"),
            (syncnet_v2.load_syncnet_v2, "not syncnet_python's S (1 entries): unexpected: odd.weight; ",
             f" …; {syncnet_v2.WHERE_FROM}"),
            (rife.load_rife, "not a RIFE v4.6 flownet (1 entries): unexpected: odd.weight; ",
             f" …; {rife.WHERE_FROM}"),
            (gfpgan.load_gfpgan, "not a GFPGAN v1.3/v1.4 (GFPGANv1Clean, 512 px) checkpoint: "
             "unexpected: odd.weight; ", " …")]


UNKNOWN = unknown_loaders()


@pytest.mark.parametrize("loader, start, end", UNKNOWN, ids=[loader.__name__ for loader, _, _ in UNKNOWN])
def test_an_unknown_state_dict_is_refused_with_its_familys_line(tmp_path, loader, start, end):
    path = tmp_path / "odd.pth"
    torch.save({"odd.weight": torch.zeros(3)}, path)
    assert identify(read_checkpoint(path)[0]) is None
    with pytest.raises(CheckpointError) as error:
        loader(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {start}") and message.endswith(end) and "\n" not in message
