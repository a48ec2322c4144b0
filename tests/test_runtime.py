"""models/runtime.py: OpenVINO fp32/int8 against torch fp32 on real presenter crops, the stored conversions, the
int8 self-check and the runtime/dtype rules."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

from audio.decode import load_audio
from audio.mel import frame_windows, melspectrogram
from engine.render.presenter import Presenter
from models import wav2lip96, wav2lip288, wav2lip384
from models.blocks import Wav2Lip
from models.openvino_cpu import int8_by_default
from models.predictor import LipSyncPredictor, pick_dtype
from models.runtime import Int8Check, OpenVinoStore, build_openvino, pick_runtime, weights_digest
from conftest import require
from test_models import randomise_batchnorm

require("openvino")


@pytest.fixture(scope="module")
def wide_generator() -> Wav2Lip:
    """Random weights give a near-constant grey face; a steeper output layer makes the outputs span the 8-bit range
    (std ~45 levels), so quantisation errors are as visible as on a trained model's faces. Seeded: unseeded draws
    spread 8-69 levels between runs. Seeds 0, 1, 2 gave spread 54.9 / 47.5 / 29.7 and int8 error mean 0.60 / 1.88 /
    0.56 (2026-11-30): seed 1 is within the engine's own limit (2.0) but not this test's tighter 1.5."""
    torch.manual_seed(0)
    model = randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR))
    with torch.no_grad():
        model.output_block[1].weight.mul_(20)
        model.output_block[1].bias.zero_()
    return model


@pytest.fixture(scope="module")
def crops(built, media):
    presenter = Presenter(built["cache"] / "clip25")
    faces = presenter.sample_faces(48)
    mels = frame_windows(melspectrogram(load_audio(media["speech"])))
    return faces[:16], faces[16:], mels[:len(faces) - 16]


@pytest.fixture(scope="module")
def int8_predictor(wide_generator, crops, tmp_path_factory):
    calibration, _, _ = crops
    store = tmp_path_factory.mktemp("ovstore")
    return LipSyncPredictor(wide_generator, "cpu", "int8", runtime="openvino", calibration_faces=calibration,
                            store_dir=store), store


@pytest.mark.slow
def test_int8_stays_within_its_stated_tolerance_of_torch_fp32(wide_generator, crops, int8_predictor):
    _, faces, mels = crops  # crops the calibration never saw, with other speech
    predictor, _ = int8_predictor
    assert predictor.precision == "int8"
    reference = LipSyncPredictor(wide_generator, "cpu", "fp32", runtime="torch").predict(mels, faces).astype(int)
    diff = np.abs(predictor.predict(mels, faces).astype(int) - reference)
    logging.getLogger("test").info("int8 vs torch fp32 on held-out crops: mean %.2f, p99 %.1f, max %d levels of 255",
                                   diff.mean(), np.percentile(diff, 99), diff.max())
    assert reference.std() > 20  # outputs really span the range
    assert diff.mean() <= 1.5 and np.percentile(diff, 99) <= 8


def test_stored_int8_model_is_reused_without_calibrating_again(wide_generator, crops, int8_predictor, monkeypatch):
    _, faces, mels = crops
    first, store = int8_predictor
    assert [p.name.rsplit("-", 1)[1] for p in store.iterdir()] == ["int8"]  # fp32 is only kept when it runs
    assert not list(store.glob(".*partial"))
    monkeypatch.setattr("models.runtime.quantize_int8", lambda *a: pytest.fail("calibrated again"))
    again = LipSyncPredictor(wide_generator, "cpu", "int8", runtime="openvino", calibration_faces=faces,
                             store_dir=store)
    assert np.array_equal(again.predict(mels[:8], faces[:8]), first.predict(mels[:8], faces[:8]))


def test_int8_that_fails_its_check_falls_back_to_fp32(wide_generator, int8_predictor, caplog):
    from models.predictor import fold_batchnorm
    import copy
    _, store = int8_predictor
    net = fold_batchnorm(copy.deepcopy(wide_generator))
    with caplog.at_level(logging.WARNING, "models"):
        _, precision = build_openvino(net, True, None, OpenVinoStore(store), Int8Check(0.0, 0.0))
    assert precision == "fp32"
    assert "running fp32" in caplog.text


def test_stored_models_are_keyed_by_their_weights(wide_generator, int8_predictor):
    import copy
    from models.predictor import fold_batchnorm
    _, store = int8_predictor
    digest = weights_digest(fold_batchnorm(copy.deepcopy(wide_generator)))
    assert {p.name for p in store.iterdir()} == {f"wav2lip96-{digest}-fp32", f"wav2lip96-{digest}-int8"}  # fp32
    # from the fallback of the test before
    other = fold_batchnorm(randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR), seed=1))
    assert weights_digest(other) != digest  # other weights never find this conversion


@pytest.mark.parametrize("spec", [wav2lip96.GENERATOR, wav2lip288.GENERATOR, wav2lip288.GENERATOR_PRELU_2021,
                                  wav2lip384.GENERATOR], ids=lambda s: s.name)
@pytest.mark.slow
def test_the_graph_built_from_the_layer_table_equals_the_torch_generator(spec):
    """models/openvino_graph.py builds each architecture (SAM, PReLU, tanh head, audio refine included) from the
    unfolded state dict, folding BatchNorm itself: its output equals the torch module's."""
    from models.openvino_cpu import OpenVinoRunner
    from models.openvino_graph import generator_graph
    torch.manual_seed(0)
    model = randomise_batchnorm(Wav2Lip(spec))
    mel, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 6, spec.size, spec.size)
    with torch.no_grad():
        expected = model(mel, faces).numpy()
    got = OpenVinoRunner(generator_graph(spec, {k: v.numpy() for k, v in model.state_dict().items()}))(
        mel.numpy(), faces.numpy())
    assert got.shape == expected.shape and expected.std() > 0.01
    assert np.abs(got - expected).max() < 1e-5


def test_runtime_and_dtype_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_runtime(cuda) == "torch"
    assert pick_runtime(cpu) == "openvino"
    with pytest.raises(ValueError, match="runs on the CPU"):
        pick_runtime(cuda, "openvino")
    with pytest.raises(ValueError, match="int8 runs under OpenVINO"):
        pick_dtype(cpu, "int8", "torch")
    with pytest.raises(ValueError, match="bf16 runs under torch"):
        pick_dtype(cpu, "bf16", "openvino")
    assert pick_dtype(cuda, None, "torch") == torch.float16
    assert pick_dtype(cpu, None, "openvino") == ("int8" if int8_by_default() else torch.float32)  # x86: in seconds


def test_generic_calibration_varies_like_presenters_and_checks_each_face_with_several_spoken_windows():
    from models.calibration import generic_faces, speech_windows
    faces = generic_faces(96)
    assert faces.shape == (40, 96, 96, 3) and faces.dtype == np.uint8
    assert np.array_equal(faces, generic_faces(96))  # deterministic: a conversion is reproducible
    means = faces.reshape(len(faces), -1).mean(axis=1)
    assert means.std() > 5  # light varies from crop to crop
    assert np.abs(faces[1:].astype(int) - faces[:-1].astype(int)).mean() > 10  # and so do position, tilt, mirror
    predictor = LipSyncPredictor(Wav2Lip(wav2lip96.GENERATOR), "cpu", "fp32", runtime="torch")
    calibrate, check, windows = predictor.calibration_batches()
    assert sum(len(m) for m, _ in calibrate) == 32 and windows == 4
    mels = np.concatenate([m for m, _ in check])[:, 0]
    faces_checked = np.concatenate([f for _, f in check])
    assert len(mels) == 8 * 4
    for face in range(8):  # one face, four different spoken windows
        rows = slice(face * 4, face * 4 + 4)
        assert (faces_checked[rows] == faces_checked[rows][:1]).all()
        assert len({m.tobytes() for m in mels[rows]}) == 4
    energy = mels.mean(axis=(1, 2))
    assert energy.min() > np.percentile(speech_windows().mean(axis=(1, 2)), 30)  # speech, not pauses


def test_the_int8_error_is_reported_beside_the_spread_of_the_fp32_output():
    from models.runtime import output_error
    rng = np.random.default_rng(0)
    faces = np.repeat(rng.random((4, 6, 4, 4)).astype(np.float32), 2, axis=0)  # each face in two rows...
    mels = rng.random((8, 1, 80, 16)).astype(np.float32)  # ...with different speech
    moving = lambda m, f: f[:, :3] * 0.5 + m[:, :, :1, :1] * 0.5  # noqa: E731
    still = lambda m, f: np.full((len(f), 3, 4, 4), 0.5, np.float32)  # noqa: E731
    noisy = lambda m, f: moving(m, f) + 2 / 255  # noqa: E731
    batch = [(mels, faces)]
    found = output_error(moving, noisy, batch, windows=2)
    assert found["mean"] == pytest.approx(2, abs=1e-3) and found["spread"] > 20 and found["speech_spread"] > 10
    flat = output_error(still, still, batch, windows=2)
    assert flat["spread"] == 0 and flat["speech_spread"] == 0 and flat["mean"] == 0


def test_an_int8_check_that_cannot_tell_anything_says_so(int8_predictor, wide_generator, caplog, tmp_path):
    """The stored check of the wide generator, with its spreads set as a trained model's and as random weights'
    (whose audio path barely moves the output: the real check of this generator measures 0.0 levels of speech)."""
    import copy
    import json
    import shutil
    from models.predictor import fold_batchnorm
    _, store = int8_predictor
    net = fold_batchnorm(copy.deepcopy(wide_generator))
    logs = {}
    for name, spread, speech in (("trained", 40.0, 3.0), ("random", 0.3, 0.0)):
        copy_of_store = tmp_path / name
        shutil.copytree(store, copy_of_store)
        info_path = next(copy_of_store.glob("*-int8")) / "info.json"
        info = json.loads(info_path.read_text())
        assert info["error_levels"]["spread"] > 20  # as measured: the wide generator's output spans the range
        info["error_levels"].update(spread=spread, speech_spread=speech)
        info_path.write_text(json.dumps(info))
        caplog.clear()
        with caplog.at_level(logging.INFO, "models"):
            _, precision = build_openvino(net, True, None, OpenVinoStore(copy_of_store))
        assert precision == "int8"
        logs[name] = caplog.text
    assert "spread 40.0 levels, of which speech moves 3.0" in logs["trained"] and "cannot tell" not in logs["trained"]
    assert "cannot tell anything" in logs["random"]


@pytest.mark.slow
def test_conversion_and_calibration_report_no_usage(tmp_path):
    """openvino-telemetry, with no consent file (a fresh home) and no CI variable, counts silence as consent: a
    conversion and an int8 calibration through models/runtime.py must send nothing; openvino's own converter
    called straight would, on any model (the control, on a small one, shows the check can see a send)."""
    import subprocess
    import sys
    from conftest import ROOT
    script = """
import os, sys
sys.path.insert(0, {root!r})
from openvino_telemetry.main import TelemetrySender
sent = []
TelemetrySender.send = lambda self, backend, message: sent.append(message)
import numpy as np, torch
from models import wav2lip96
from models.blocks import Wav2Lip
from models.runtime import convert, quantize_int8

if sys.argv[1] == "ours":
    net = Wav2Lip(wav2lip96.GENERATOR).eval()
    convert(net)
    quantize_int8(net, [(np.random.rand(2, 1, 80, 16).astype(np.float32),
                         np.random.rand(2, 6, 96, 96).astype(np.float32))])
else:
    import openvino as ov
    with torch.no_grad():
        ov.convert_model(torch.nn.Linear(4, 2).eval(), example_input=torch.zeros(1, 4))
print("SENT", len(sent))
""".format(root=str(ROOT))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    results = {}
    for way in ("ours", "straight"):
        home = tmp_path / way
        home.mkdir()
        done = subprocess.run([sys.executable, "-c", script, way], env={**env, "HOME": str(home)},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        results[way] = (int(done.stdout.split("SENT")[-1]), (home / "intel").exists())
    assert results["ours"] == (0, False)  # nothing sent, no client id written into the user's home
    assert results["straight"][0] > 0


def test_auto_takes_an_int8_conversion_prepared_before(int8_predictor, tmp_path):
    """`prepare --dtype int8` once: later renders on `auto` run it, and an explicit fp32 does not."""
    import shutil
    from models.contract import HostDevice, LipModel
    from models.stored import remember_conversion, stored_predictor
    predictor, store = int8_predictor
    copy_of_store = tmp_path / "store"
    shutil.copytree(store, copy_of_store)
    checkpoint = tmp_path / "wav2lip.pth"
    checkpoint.write_bytes(b"the index knows a checkpoint by its file's hash")
    assert stored_predictor(checkpoint, copy_of_store, "auto", 8) is None  # nothing prepared for this file yet
    remember_conversion(checkpoint, copy_of_store, predictor, "int8")
    stored = stored_predictor(checkpoint, copy_of_store, "auto", 8)
    assert stored.precision == "int8"
    assert isinstance(stored, LipModel)  # the engine runs it as any lip model: the contract's fields, declared
    assert (stored.name, stored.size, stored.window_frames, stored.batch_size, stored.device, stored.runtime,
            stored.device_tensors, stored.scheduled) == ("wav2lip96", 96, 1, 8, HostDevice(), "openvino", False, False)
    assert stored_predictor(checkpoint, copy_of_store, "fp32", 8) is None  # an explicit fp32 is not int8
