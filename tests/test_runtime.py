"""models/runtime.py: OpenVINO fp32/int8 against torch fp32 on real presenter crops, the stored conversions, the
int8 self-check and the runtime/dtype rules."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from audio.decode import load_audio
from audio.mel import frame_windows, melspectrogram
from engine.presenter import Presenter
from models import wav2lip96
from models.blocks import Wav2Lip
from models.predictor import LipSyncPredictor, pick_dtype
from models.runtime import Int8Check, OpenVinoStore, build_openvino, pick_runtime, weights_digest
from conftest import require
from test_models import randomise_batchnorm

require("openvino")


@pytest.fixture(scope="module")
def wide_generator() -> Wav2Lip:
    """Random weights give a near-constant grey face; a steeper output layer makes the outputs span the 8-bit range
    (std ~45 levels), so quantisation errors are as visible as on a trained model's faces."""
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
    assert sorted(p.name.rsplit("-", 1)[1] for p in store.iterdir()) == ["fp32", "int8"]
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
        _, precision = build_openvino(net, "wav2lip96", 96, True, None, OpenVinoStore(store), Int8Check(0.0, 0.0))
    assert precision == "fp32"
    assert "running fp32" in caplog.text


def test_stored_models_are_keyed_by_their_weights(wide_generator, int8_predictor):
    import copy
    from models.predictor import fold_batchnorm
    _, store = int8_predictor
    digest = weights_digest(fold_batchnorm(copy.deepcopy(wide_generator)))
    assert sorted(p.name for p in store.iterdir()) == [f"wav2lip96-{digest}-fp32", f"wav2lip96-{digest}-int8"]
    other = fold_batchnorm(randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR), seed=1))
    assert weights_digest(other) != digest  # other weights never find this conversion


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
    with pytest.raises(ValueError, match="needs the presenter's face crops"):
        LipSyncPredictor(Wav2Lip(wav2lip96.GENERATOR), "cpu", "int8", runtime="openvino")
