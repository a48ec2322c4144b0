"""models/: state dicts identical to the released layouts, loading in every released form, clear errors, predictor."""
from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models import wav2lip96, wav2lip288, wav2lip384
from models.blocks import SyncNet, Wav2Lip
from models.checkpoint import CheckpointError
from models.loader import GENERATORS, SYNCNETS, load_generator, load_syncnet, save_checkpoint
from models.predictor import LipSyncPredictor, fold_batchnorm

# The reference state-dict key lists (name and shape, in order), copied from the team's shared reference.
KEYS = Path(__file__).resolve().parent / "data" / "keys"
REFERENCE_FILES = {"wav2lip96": "wav2lip96", "wav2lip288": "wav2lip288", "wav2lip288_prelu2021": "wav2lip288_prelu2021",
                   "wav2lip384": "wav2lip384sam", "syncnet96": "syncnet96", "syncnet288_prelu2021": "syncnet288_prelu2021",
                   "syncnet384": "syncnet384"}
# Parameter counts published in the reference digest (BatchNorm running statistics excluded).
PARAMS = {"wav2lip96": 36_298_035, "wav2lip288": 48_520_755, "wav2lip288_prelu2021": 48_520_815,
          "wav2lip384": 159_218_413, "syncnet96": 16_435_072, "syncnet288_prelu2021": 19_881_059,
          "syncnet288": 65_235_072, "syncnet384": 65_054_464}


def reference_keys(name: str, file: str = "") -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) rows of a reference state dict: of architecture `name`, or of the key file `file`."""
    rows = []
    for line in (KEYS / f"{file or REFERENCE_FILES[name]}.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        rows.append((key, tuple(int(v) for v in shape.strip("[]").split(",") if v.strip())))
    return rows


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm non-trivial statistics, as trained weights have, so folding and loading are really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


@pytest.mark.parametrize("spec", [s for s in (*GENERATORS, *SYNCNETS) if s.name in REFERENCE_FILES], ids=lambda s: s.name)
def test_state_dict_keys_and_shapes_equal_the_reference_in_order(spec):
    with torch.device("meta"):
        model = Wav2Lip(spec) if spec in GENERATORS else SyncNet(spec)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == reference_keys(spec.name)


@pytest.mark.parametrize("spec", [*GENERATORS, *SYNCNETS], ids=lambda s: s.name)
def test_parameter_counts_match_the_published_models(spec):
    with torch.device("meta"):
        model = Wav2Lip(spec) if spec in GENERATORS else SyncNet(spec)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[spec.name]


@pytest.mark.parametrize("spec", [wav2lip96.SYNCNET, wav2lip288.SYNCNET, wav2lip288.SYNCNET_PRELU_2021,
                                  wav2lip384.SYNCNET], ids=lambda s: s.name)
def test_syncnets_embed_their_lower_half_faces_as_the_reference(spec):
    """The reference forward: each encoder ends in a 1x1 map, which is flattened and L2-normalised; (audio, face)."""
    net = randomise_batchnorm(SyncNet(spec))
    mel, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 15, spec.size // 2, spec.size)
    with torch.no_grad():
        audio, face = net(mel, faces)
        audio_map, face_map = net.audio_encoder(mel), net.face_encoder(faces)
    assert audio_map.shape[2:] == face_map.shape[2:] == (1, 1)  # the lower half of a face crop becomes one vector
    assert audio.shape == face.shape == (2, audio_map.shape[1]) and audio.shape[1] in (512, 1024)
    assert torch.allclose(audio, torch.nn.functional.normalize(audio_map.flatten(1), dim=1), atol=1e-6)
    assert torch.allclose(face, torch.nn.functional.normalize(face_map.flatten(1), dim=1), atol=1e-6)
    with torch.no_grad():  # a whole face, not its lower half, does not come out as one vector
        assert net.face_encoder(torch.rand(1, 15, spec.size, spec.size)).shape[2:] != (1, 1)


def test_generator_sequence_input_is_flattened_time_major():
    net = randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR))
    mel, faces = torch.randn(2, 3, 1, 80, 16), torch.rand(2, 6, 3, 96, 96)
    with torch.no_grad():
        seq = net(mel, faces)
        one = net(mel[:, 1], faces[:, :, 1])
    assert seq.shape == (2, 3, 3, 96, 96)
    assert torch.allclose(seq[:, :, 1], one, atol=1e-5)


def _outputs(model, size):
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(1, 1, 80, 16), torch.rand(1, 6, size, size))


@pytest.mark.slow
def test_released_96_checkpoint_with_optimizer_and_module_prefix_loads_unchanged(tmp_path):
    model = randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96)).mean().backward()
    optimizer.step()
    model.eval()
    path = save_checkpoint(model, tmp_path / "wav2lip_gan.pth", optimizer, global_step=2500, global_epoch=3)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    loaded = load_generator(path)
    assert loaded.spec.name == "wav2lip96" and loaded.global_step == 2500
    assert "Wav2Lip 96x96" in loaded.describe() and "352 entries" in loaded.describe()
    assert torch.equal(_outputs(loaded.model, 96), _outputs(model, 96))
    # the 2020 release files predate torch's zip format
    legacy = tmp_path / "wav2lip_legacy.pth"
    torch.save(raw, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(_outputs(load_generator(legacy).model, 96), _outputs(model, 96))


# the 384 in the released layout only: its bare copy would test the same prefix stripping again, for 4 s more
@pytest.mark.parametrize("spec, bare", [(wav2lip288.GENERATOR, True), (wav2lip288.GENERATOR_PRELU_2021, True),
                                        (wav2lip384.GENERATOR, False)],
                         ids=["wav2lip288", "wav2lip288_prelu2021", "wav2lip384_prefixed_only"])
@pytest.mark.slow
def test_high_resolution_generators_load_from_bare_and_prefixed_state_dicts(spec, bare, tmp_path):
    model = randomise_batchnorm(Wav2Lip(spec))
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "prefixed.pth")
    if bare:
        torch.save(model.state_dict(), tmp_path / "bare.pth")
    for name in ("prefixed.pth", "bare.pth")[:2 if bare else 1]:
        loaded = load_generator(tmp_path / name)
        assert loaded.spec.name == spec.name
        for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b)


@pytest.mark.parametrize("spec", SYNCNETS, ids=lambda s: s.name)
def test_syncnets_load_from_the_released_layout(spec, tmp_path):
    model = randomise_batchnorm(SyncNet(spec))
    loaded = load_syncnet(save_checkpoint(model, tmp_path / "expert.pth", global_step=7))
    assert loaded.spec.name == spec.name and loaded.global_step == 7


def test_torchscript_archives_load_through_their_state_dict_once_trusted(tmp_path):
    model = randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR))
    traced = torch.jit.trace(model, (torch.randn(1, 1, 80, 16), torch.rand(1, 6, 96, 96)))
    traced.save(str(tmp_path / "Wav2Lip-SD-GAN.pt"))
    message = _error(load_generator, tmp_path / "Wav2Lip-SD-GAN.pt")  # loading one runs its program: trust first
    assert "TorchScript" in message and "--trust_checkpoint" in message
    loaded = load_generator(tmp_path / "Wav2Lip-SD-GAN.pt", trust_pickle=True)
    assert loaded.spec.name == "wav2lip96"
    assert torch.equal(_outputs(loaded.model, 96), _outputs(model, 96))


@pytest.fixture(scope="module")
def good_96(tmp_path_factory) -> Path:
    return save_checkpoint(Wav2Lip(wav2lip96.GENERATOR), tmp_path_factory.mktemp("ckpt") / "wav2lip.pth")


def _error(loader, path) -> str:
    with pytest.raises(CheckpointError) as info:
        loader(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_clear_errors_for_missing_empty_truncated_and_corrupt_files(tmp_path, good_96):
    assert "no such file" in _error(load_generator, tmp_path / "nope.pth")
    assert "wav2lip.pth" in _error(load_generator, tmp_path / "nope.pth")  # says where such a file comes from
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "empty" in _error(load_generator, tmp_path / "empty.pth")
    data = good_96.read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in _error(load_generator, tmp_path / "half.pth")
    for seed in range(40):  # random bytes make torch raise UnpicklingError, IndexError or UnicodeDecodeError
        rng = np.random.default_rng(seed)
        (tmp_path / "noise.pth").write_bytes(rng.integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
        assert "truncated or corrupt" in _error(load_generator, tmp_path / "noise.pth")


def test_wrong_kind_of_checkpoint_is_named(tmp_path, good_96):
    expert = save_checkpoint(SyncNet(wav2lip96.SYNCNET), tmp_path / "lipsync_expert.pth")
    assert "SyncNet lip-sync expert; expected a Wav2Lip generator" in _error(load_generator, expert)
    assert "Wav2Lip generator; expected a SyncNet" in _error(load_syncnet, good_96)
    # the visual-quality discriminator's first and last layers, as in wav2lip_gan training checkpoints
    disc = {"face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(32, 3, 7, 7),
            "face_encoder_blocks.0.0.conv_block.0.bias": torch.zeros(32),
            "binary_pred.0.weight": torch.zeros(1, 512, 1, 1), "binary_pred.0.bias": torch.zeros(1)}
    torch.save({"state_dict": disc, "optimizer": None, "global_step": 1, "global_epoch": 0}, tmp_path / "disc.pth")
    assert "discriminator" in _error(load_generator, tmp_path / "disc.pth")
    torch.save({"params_ema": {"conv_body_first.weight": torch.zeros(32, 3, 1, 1)}}, tmp_path / "GFPGANv1.4.pth")
    assert "GFPGAN" in _error(load_generator, tmp_path / "GFPGANv1.4.pth")


def test_a_sam_192_checkpoint_is_named_and_refused(tmp_path):
    """Wav2Lip_SAM-192 (a refine variant with spatial attention) has its own key set; we name it, we do not load it."""
    keys = [key for key, _ in reference_keys("", "wav2lip192sam_refine")]
    torch.save({"state_dict": {f"module.{k}": torch.zeros(1) for k in keys}}, tmp_path / "sam192.pth")
    message = _error(load_generator, tmp_path / "sam192.pth")
    assert "Wav2Lip_SAM-192 generator (507 entries)" in message and "does not load" in message


def test_unknown_architecture_lists_the_differences(tmp_path):
    state = Wav2Lip(wav2lip96.GENERATOR).state_dict()
    state = {("face_encoder_blocks.9.9." + k.split(".", 3)[3] if k.startswith("face_encoder_blocks.6.1.") else k): v
             for k, v in state.items()}
    state["output_block.1.weight"] = torch.zeros(3, 64, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "odd.pth")
    message = _error(load_generator, tmp_path / "odd.pth")
    assert "unknown generator architecture" in message and "closest known is wav2lip96" in message
    assert "unexpected: face_encoder_blocks.9.9." in message and "missing: face_encoder_blocks.6.1." in message
    assert "output_block.1.weight (3, 64, 1, 1) (expected (3, 32, 1, 1))" in message


def test_pickled_python_objects_need_explicit_trust(tmp_path):
    state = {f"module.{k}": v for k, v in Wav2Lip(wav2lip96.GENERATOR).state_dict().items()}
    torch.save({"state_dict": state, "hparams": np.array([1.0])}, tmp_path / "old.pth")
    message = _error(load_generator, tmp_path / "old.pth")
    assert "--trust_checkpoint" in message and "numpy" in message  # says what it found
    assert load_generator(tmp_path / "old.pth", trust_pickle=True).spec.name == "wav2lip96"


class RunsCode:
    """An object whose unpickling runs a shell command: what a hostile checkpoint carries."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("layout", ["zip", "legacy pickle"])
def test_a_checkpoint_that_runs_code_is_refused_with_what_it_calls(tmp_path, layout):
    marker, path = tmp_path / "ran", tmp_path / "evil.pth"
    payload = {"state_dict": {"x": torch.zeros(1)}, "exploit": RunsCode(marker)}
    if layout == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    message = _error(load_generator, path)
    assert "refused" in message and f"{os.system.__module__}.system" in message and "--trust_checkpoint" in message
    assert "corrupt" not in message and not marker.exists()


def reference_inference(model, mels, faces):
    """Rudrabha's inference.py for one batch, step by step (numpy masking, FloatTensor, *255, astype uint8)."""
    size = faces.shape[1]
    img_masked = faces.copy()
    img_masked[:, size // 2:] = 0
    img_batch = np.concatenate((img_masked, faces), axis=3) / 255.
    mel_batch = np.reshape(mels, [len(mels), mels.shape[1], mels.shape[2], 1])
    img = torch.FloatTensor(np.transpose(img_batch, (0, 3, 1, 2)))
    mel = torch.FloatTensor(np.transpose(mel_batch, (0, 3, 1, 2)))
    with torch.no_grad():
        pred = model(mel, img)
    if model.spec.head == "tanh":  # the reference runtime forgot this for 384; the right mapping is (y+1)/2
        pred = (pred + 1) / 2
    return (pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.).astype(np.uint8)


@pytest.fixture(scope="module")
def face_batch():
    from demo.presenter import astronaut_bgr
    face = astronaut_bgr()[60:180, 165:285]  # the astronaut's face, padded box
    rng = np.random.default_rng(0)
    return rng.normal(0, 1.5, (5, 80, 16)).astype(np.float32).clip(-4, 4), face


@pytest.mark.parametrize("spec, runtime", [(wav2lip96.GENERATOR, "torch"), (wav2lip384.GENERATOR, "torch"),
                                           (wav2lip96.GENERATOR, "openvino")], ids=["96-torch", "384-torch", "96-openvino"])
@pytest.mark.slow
def test_predictor_matches_the_reference_inference(spec, runtime, face_batch):
    import cv2
    mels, face = face_batch
    n = 5 if spec.size == 96 else 1
    faces = np.stack([cv2.resize(face, (spec.size, spec.size))] * n)
    faces[1:] = np.roll(faces[1:], 3, axis=2)  # different crops in one batch
    model = randomise_batchnorm(Wav2Lip(spec))
    expected = reference_inference(model, mels[:n], faces)
    got = LipSyncPredictor(model, "cpu", "fp32", batch_size=2, runtime=runtime).predict(mels[:n], faces)
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # BN folding moves values by ~1e-7: rare truncation flips
    assert got.std() > 1  # not a constant image


def test_batchnorm_folding_is_exact_to_1e5():
    model = randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR))
    folded = fold_batchnorm(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    mel, faces = torch.randn(3, 1, 80, 16), torch.rand(3, 6, 96, 96)
    with torch.no_grad():
        assert (model(mel, faces) - folded(mel, faces)).abs().max() < 1e-5


@pytest.mark.slow
def test_bf16_stays_within_its_measured_bound(face_batch):
    import cv2
    mels, face = face_batch
    faces = np.stack([cv2.resize(face, (96, 96))] * 5)
    model = randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR))
    fp32 = LipSyncPredictor(model, "cpu", "fp32", runtime="torch").predict(mels, faces).astype(int)
    bf16 = LipSyncPredictor(model, "cpu", "bf16", runtime="torch").predict(mels, faces).astype(int)
    diff = np.abs(fp32 - bf16)
    assert diff.max() <= 4 and diff.mean() < 1.0  # measured here: max 1, mean 0.17 (README)


def test_predictor_rejects_crops_of_another_size():
    predictor = LipSyncPredictor(Wav2Lip(wav2lip96.GENERATOR), "cpu", "fp32", runtime="torch")
    with pytest.raises(ValueError, match="--face_size 96"):
        predictor.predict(np.zeros((1, 80, 16), np.float32), np.zeros((1, 288, 288, 3), np.uint8))


def test_every_lip_model_the_engine_runs_declares_the_contract():
    """The model stage reads these fields and never probes for them (models/contract.py). IP_LAP's adapter is
    checked where its cache is built (tests/test_iplap.py), the stored OpenVINO runner beside its store
    (tests/test_runtime.py)."""
    from engine.render.model_worker import ModelWorker, SharedModel
    from models.contract import HostDevice, LipModel
    from models.mouthwarp import MouthAnimator
    generator = Wav2Lip(wav2lip96.GENERATOR)
    on_torch = LipSyncPredictor(generator, "cpu", "fp32", runtime="torch", batch_size=4)
    on_openvino = LipSyncPredictor(generator, "cpu", "fp32", runtime="openvino", batch_size=4)
    animator = MouthAnimator(96)
    worker = ModelWorker(animator, "animator")
    shared = SharedModel(worker, animator)
    try:
        declared = [(on_torch, ("wav2lip96", 96, 1, 4, torch.device("cpu"), "torch", True, False)),
                    (on_openvino, ("wav2lip96", 96, 1, 4, torch.device("cpu"), "openvino", False, False)),
                    (animator, ("mouthwarp", 96, 1, None, HostDevice(), "numpy", False, False)),
                    (shared, ("mouthwarp", 96, 1, None, HostDevice(), "numpy", False, True))]
        for model, fields in declared:
            assert isinstance(model, LipModel), model
            assert (model.name, model.size, model.window_frames, model.batch_size, model.device, model.runtime,
                    model.device_tensors, model.scheduled) == fields, model
        faces = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3), dtype=np.uint8)
        out = shared.predict(np.zeros((2, 80, 16), np.float32), faces, np.zeros((2, 5, 2), np.float32), due=1e12)
        assert np.array_equal(out, faces) and worker.rows == 2  # through the worker (an unknown layout: unchanged)
    finally:
        worker.close()
    assert not isinstance(object(), LipModel)
