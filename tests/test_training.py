"""models/train.py, models/dataset.py and models/evaluate.py on a tiny lip-synced training set made here.

The set: the test presenter made to speak espeak-ng speech by the weight-free mouth animator (whose mouth opens
with the audio's energy), rendered to mp4, preprocessed and exported LRS2-style. So its lips really are in sync
with its audio, which is what a SyncNet has to learn.
"""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from conftest import ROOT
from demo.presenter import speak
from engine.audio import load_audio
from engine.composite import Compositor
from engine.loop import render_file
from engine.presenter import Presenter
from engine.sinks import Mp4Sink
from models import wav2lip96
from models.blocks import QualityDiscriminator, SyncNet
from models.dataset import DataError, Sampler, batch, read_split
from models.evaluate import sync_scores
from models.loader import load_generator, load_syncnet, read_checkpoint, save_checkpoint, what_is_it
from models.mouthwarp import MouthAnimator
from models.train import TrainConfig, cosine_loss, train_syncnet, train_wav2lip
from preprocess.pipeline import PreprocessConfig, run_batch

SPEECH = ("One, two, three, four. Open wide and say ah. The mouth moves with every word we say, then rests "
          "in the pauses. Five, six, seven, eight.")


@pytest.fixture(scope="module")
def synced_set(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("synced")
    speech = speak(SPEECH, root / "speech.wav")
    presenter = Presenter(built["cache"] / "clip30")  # a face on every frame
    video = root / "talking.mp4"
    render_file(load_audio(speech), presenter, MouthAnimator(presenter.face_size), Compositor(presenter),
                [Mp4Sink(video)], progress=False)
    run_batch([video], root / "cache", PreprocessConfig(train_dir=root / "train"), progress=False)
    return {"train": root / "train", "video": video, "root": root}


def eval_pairs(data_root, count: int = 48):
    sampler = Sampler(read_split(data_root, "val"), 96, seed=7)
    return batch([sampler.syncnet() for _ in range(count)])


def similarities(model: SyncNet, pairs) -> tuple[float, float, float]:
    """(loss, mean cosine in sync, mean cosine shifted) on fixed pairs."""
    faces, mel, label = pairs
    model.eval()
    with torch.no_grad():
        audio, face = model(mel, faces)
        cos = torch.nn.functional.cosine_similarity(audio, face)
        loss = cosine_loss(audio, face, label).item()
    in_sync = label[:, 0] == 1
    return loss, cos[in_sync].mean().item(), cos[~in_sync].mean().item()


def test_samples_follow_the_reference_layout(synced_set):
    clips = read_split(synced_set["train"], "train")
    sampler = Sampler(clips, 96, seed=0)
    faces, mel, label = sampler.syncnet()
    assert faces.shape == (15, 48, 96) and mel.shape == (1, 80, 16) and label.item() in (0.0, 1.0)
    assert 0 <= faces.min() and faces.max() <= 1
    x, per_frame, mel, truth = sampler.generator()
    assert x.shape == (6, 5, 96, 96) and per_frame.shape == (5, 1, 80, 16) and truth.shape == (3, 5, 96, 96)
    assert torch.all(x[:3, :, 48:] == 0) and torch.equal(x[:3, :, :48], truth[:, :, :48])


@pytest.fixture(scope="module")
def expert(synced_set, tmp_path_factory):
    """A SyncNet-96 trained here: 50 steps of 8 pairs (30-45 s on this CPU)."""
    folder = tmp_path_factory.mktemp("expert")
    cfg = TrainConfig(batch_size=8, steps=50, lr=6e-4, eval_interval=25, eval_batches=2, checkpoint_interval=50)
    evals = []
    last = train_syncnet(synced_set["train"], folder, cfg, progress=False, on_eval=lambda step, loss: evals.append(loss))
    return last, evals, folder


def test_syncnet_training_learns_in_sync_from_shifted(synced_set, expert):
    last, evals, folder = expert
    pairs = eval_pairs(synced_set["train"])
    torch.manual_seed(0)
    before = similarities(SyncNet(wav2lip96.SYNCNET), pairs)
    after = similarities(load_syncnet(last).model, pairs)
    logging.getLogger("test").info("syncnet: loss %.3f -> %.3f; cos in sync %.3f vs shifted %.3f", before[0],
                                   after[0], after[1], after[2])
    # measured: loss 0.746 -> 0.671, cosine in sync 0.46 vs shifted 0.31 (untrained: equal)
    assert after[0] < before[0] - 0.03
    assert after[1] > after[2] + 0.05  # in-sync pairs now clearly closer than shifted ones
    assert len(evals) == 2 and [p.name for p in folder.iterdir()] == ["checkpoint_step000000050.pth"]


def test_evaluate_finds_how_far_the_audio_was_shifted(synced_set, expert, tmp_path):
    """The issue's check: audio delayed by k frames -> the trained expert reports an offset of k (within 1).
    Measured with this expert: k = 3, -4, 6 -> +3, -4, +6; the unshifted clip -> +1."""
    k = 4
    audio = load_audio(synced_set["video"])
    delayed = np.concatenate([np.zeros(k * 640, np.float32), audio])[:len(audio)]
    soundfile.write(tmp_path / "delayed.wav", delayed, 16000)
    shifted = tmp_path / "shifted.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(synced_set["video"]), "-i",
                    str(tmp_path / "delayed.wav"), "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac",
                    str(shifted)], check=True)
    result = subprocess.run([sys.executable, "-m", "models.evaluate", str(shifted), "--syncnet", str(expert[0])],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    words = result.stdout.split()
    assert words[0] == "LSE-D" and words[2] == "LSE-C" and words[4] == "offset"
    assert 0 <= float(words[1]) <= 2 and float(words[3]) > 0
    assert abs(int(words[5]) - k) <= 1


def test_generator_steps_lower_l1_and_checkpoints_round_trip(synced_set, tmp_path, caplog):
    expert = save_checkpoint(SyncNet(wav2lip96.SYNCNET), tmp_path / "expert.pth")
    cfg = TrainConfig(batch_size=2, steps=4, lr=1e-3, eval_interval=1, eval_batches=1, checkpoint_interval=4)
    l1 = []
    last = train_wav2lip(synced_set["train"], tmp_path / "gen", str(expert), cfg, progress=False,
                         on_eval=lambda step, loss: l1.append(loss))
    assert l1[-1] < l1[0]
    loaded = load_generator(last)  # our loader recognises our checkpoint as the released 96 generator
    assert loaded.spec.name == "wav2lip96"
    state, extra = read_checkpoint(last)
    raw = torch.load(last, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"} and raw["global_step"] == 4
    assert all(k.startswith("module.") for k in raw["state_dict"])  # as DataParallel wrote the released files
    # a rerun with more steps resumes from step 4 instead of starting over
    with caplog.at_level(logging.INFO, "train"):
        train_wav2lip(synced_set["train"], tmp_path / "gen", str(expert), TrainConfig(**{**cfg.__dict__, "steps": 5}),
                      progress=False)
    assert "resumed from" in caplog.text and "step 4" in caplog.text
    assert torch.load(tmp_path / "gen" / "checkpoint_step000000005.pth", weights_only=True)["global_step"] == 5


def test_gan_training_writes_the_reference_discriminator(synced_set, tmp_path):
    disc = QualityDiscriminator(wav2lip96.DISCRIMINATOR)
    assert len(disc.state_dict()) == 28 and sum(p.numel() for p in disc.parameters()) == 14_113_793
    expert = save_checkpoint(SyncNet(wav2lip96.SYNCNET), tmp_path / "expert.pth")
    cfg = TrainConfig(batch_size=1, steps=1, eval_interval=1, eval_batches=1, checkpoint_interval=1)
    train_wav2lip(synced_set["train"], tmp_path / "gan", str(expert), cfg, gan=True, progress=False)
    state, _ = read_checkpoint(tmp_path / "gan" / "disc_checkpoint_step000000001.pth")
    assert what_is_it(state)[0] == "discriminator"
    assert list(state)[0] == "face_encoder_blocks.0.0.conv_block.0.weight" and state[list(state)[0]].shape == (32, 3, 7, 7)


def test_training_rejects_missing_data_and_a_wrong_expert(synced_set, tmp_path):
    with pytest.raises(DataError, match="--train_dir"):
        read_split(tmp_path, "train")
    generator_file = save_checkpoint(torch.nn.Module(), tmp_path / "empty.pth")
    result = subprocess.run([sys.executable, "-m", "models.train", "wav2lip", "--data_root", str(synced_set["train"]),
                             "--checkpoint_dir", str(tmp_path / "c"), "--syncnet", str(generator_file)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error:")


def test_sync_metric_finds_a_known_offset_with_constructed_embeddings():
    """The metric's arithmetic on embeddings built to agree at a known shift: face window i matches audio i+k."""
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(120, 16)).astype(np.float32)
    audio /= np.linalg.norm(audio, axis=1, keepdims=True)
    for k in (-4, 0, 3, 9):
        face = np.full_like(audio, np.nan)
        for i in range(len(face)):
            if 0 <= i + k < len(audio):
                face[i] = audio[i + k] + rng.normal(scale=0.05, size=16)
        face[50:55] = np.nan  # frames without a face
        score = sync_scores(face, audio)
        assert score.offset == k
        assert score.lse_d < 0.3 and score.lse_c > 1.0  # random unit vectors are ~1.4 apart
    unrelated = sync_scores(rng.normal(size=(120, 16)), audio)
    assert unrelated.lse_c < 0.3  # no offset stands out
