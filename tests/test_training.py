"""models/train.py, models/dataset.py and models/evaluate.py on a tiny lip-synced training set made here.

The set: the test presenter made to speak espeak-ng speech by the weight-free mouth animator (whose mouth opens
with the audio's energy), rendered to mp4, preprocessed and exported LRS2-style. So its lips really are in sync
with its audio, which is what a SyncNet has to learn.
"""
from __future__ import annotations

import logging
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from core.cli import run_command
from demo.presenter import speak
from audio.decode import load_audio
from engine.render.composite import Compositor
from engine.render.loop import render_file
from engine.render.presenter import Presenter
from engine.outputs.sinks import Mp4Sink
from models import wav2lip96
from models.blocks import QualityDiscriminator, SyncNet
from models.checkpoint import read_checkpoint
from models.dataset import DataError, Sampler, batch, read_split
from models.loader import load_generator, load_syncnet, save_checkpoint
from models.mouthwarp import MouthAnimator
from models.registry import what_is_it
from models.train import TrainConfig, cosine_loss, main as train_main, sync_weight, train_syncnet, train_wav2lip
from stream_out import main as stream_out_main
from preprocess.pipeline import PreprocessConfig, run_batch

SPEECH = ("One, two, three, four. Open wide and say ah. The mouth moves with every word we say, then rests "
          "in the pauses. Five, six, seven, eight.")


HELD_OUT = "Seven ate nine. Blue moon, wide open, closed again, then quiet."


@pytest.fixture(scope="module")
def synced_set(built, tmp_path_factory):
    """Two clips of the presenter speaking: 'talking' to train on, 'heldout' (other words) to validate on."""
    root = tmp_path_factory.mktemp("synced")
    presenter = Presenter(built["cache"] / "clip30")  # a face on every frame
    videos = []
    for name, text in (("talking", SPEECH), ("heldout", HELD_OUT)):
        video = root / f"{name}.mp4"
        render_file(load_audio(speak(text, root / f"{name}.wav")), presenter, MouthAnimator(presenter.face_size),
                    Compositor(presenter), [Mp4Sink(video)], progress=False)
        videos.append(video)
    run_batch(videos, root / "cache", PreprocessConfig(train_dir=root / "train"), progress=False)
    (root / "train" / "train.txt").write_text("talking\n")  # the split is ours to choose: never validate on
    (root / "train" / "val.txt").write_text("heldout\n")    # the clip the model trained on
    return {"train": root / "train", "video": videos[0], "root": root}


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


@pytest.mark.slow
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
    """A SyncNet-96 trained here: 80 steps of 8 pairs (about 60 s on this CPU)."""
    folder = tmp_path_factory.mktemp("expert")
    cfg = TrainConfig(batch_size=8, steps=80, lr=6e-4, eval_interval=40, eval_batches=2, checkpoint_interval=80)
    evals = []
    last = train_syncnet(synced_set["train"], folder, cfg, progress=False, on_eval=lambda step, loss: evals.append(loss))
    return last, evals, folder


@pytest.mark.slow
def test_syncnet_training_learns_in_sync_from_shifted(synced_set, expert):
    last, evals, folder = expert
    pairs = eval_pairs(synced_set["train"])
    torch.manual_seed(0)
    before = similarities(SyncNet(wav2lip96.SYNCNET), pairs)
    after = similarities(load_syncnet(last).model, pairs)
    logging.getLogger("test").info("syncnet on the held-out clip: loss %.3f -> %.3f; cosine in sync vs shifted "
                                   "%.3f vs %.3f untrained, %.3f vs %.3f trained", before[0], after[0], before[1],
                                   before[2], after[1], after[2])
    assert after[0] < before[0] - 0.03
    assert after[1] > after[2] + 0.05  # in-sync pairs now clearly closer than shifted ones
    assert len(evals) == 2 and [p.name for p in folder.iterdir()] == ["checkpoint_step000000080.pth"]


@pytest.mark.slow
def test_evaluate_finds_how_far_the_audio_was_shifted(synced_set, expert, tmp_path, capsys):
    """The issue's check: audio delayed by k frames -> the trained expert, scored as syncnet_python scores, reports
    an AV offset of -k (within 1; the reference's sign: negative when the sound comes after the lips)."""
    k = 4
    audio = load_audio(synced_set["video"])
    delayed = np.concatenate([np.zeros(k * 640, np.float32), audio])[:len(audio)]
    soundfile.write(tmp_path / "delayed.wav", delayed, 16000)
    shifted = tmp_path / "shifted.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(synced_set["video"]), "-i",
                    str(tmp_path / "delayed.wav"), "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac",
                    "-t", "7", str(shifted)], check=True)  # the first 7 s of the 12 s it trained on
    assert stream_out_main(["evaluate", str(shifted), "--syncnet", str(expert[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    logging.getLogger("test").info("audio delayed by %d frames: %s", k, "; ".join(" ".join(l.split()) for l in lines))
    assert [line.split(":")[0] for line in lines] == ["AV offset", "Min dist", "Confidence"]
    offset, min_dist, confidence = (float(line.split()[-1]) for line in lines)
    assert 0 <= min_dist <= 2 and confidence > 0
    assert abs(offset + k) <= 1


@pytest.mark.slow
def test_generator_steps_lower_l1_and_checkpoints_round_trip(synced_set, tmp_path, caplog):
    expert = save_checkpoint(SyncNet(wav2lip96.SYNCNET), tmp_path / "expert.pth")
    cfg = TrainConfig(batch_size=1, steps=3, lr=1e-3, eval_interval=1, eval_batches=1, checkpoint_interval=3)
    l1 = []
    last = train_wav2lip(synced_set["train"], tmp_path / "gen", str(expert), cfg, progress=False,
                         on_eval=lambda step, loss: l1.append(loss))
    assert len(l1) == 3 and l1[-1] < l1[0]
    loaded = load_generator(last)  # our loader recognises our checkpoint as the released 96 generator
    assert loaded.spec.name == "wav2lip96"
    raw = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"} and raw["global_step"] == 3
    assert all(k.startswith("module.") for k in raw["state_dict"])  # as DataParallel wrote the released files
    # a rerun with more steps resumes from step 3 instead of starting over: its only step is step 4
    rerun_steps = []
    with caplog.at_level(logging.INFO, "train"):
        train_wav2lip(synced_set["train"], tmp_path / "gen", str(expert), TrainConfig(**{**cfg.__dict__, "steps": 4}),
                      progress=False, on_eval=lambda step, loss: rerun_steps.append(step))
    assert "resumed from" in caplog.text and "(step 3)" in caplog.text and rerun_steps == [4]
    resumed = torch.load(tmp_path / "gen" / "checkpoint_step000000004.pth", weights_only=True, mmap=True)
    assert resumed["global_step"] == 4


@pytest.mark.slow
def test_gan_training_writes_the_reference_discriminator_and_honours_syncnet_wt(synced_set, tmp_path, caplog):
    disc = QualityDiscriminator(wav2lip96.DISCRIMINATOR)
    assert len(disc.state_dict()) == 28 and sum(p.numel() for p in disc.parameters()) == 14_113_793
    expert = save_checkpoint(SyncNet(wav2lip96.SYNCNET), tmp_path / "expert.pth")
    cfg = TrainConfig(batch_size=1, steps=1, eval_interval=1, eval_batches=1, checkpoint_interval=1,
                      syncnet_wt=0.05, sync_enable_below=2.0)  # the sync loss switches on at the first eval
    with caplog.at_level(logging.INFO, "train"):
        train_wav2lip(synced_set["train"], tmp_path / "gan", str(expert), cfg, gan=True, progress=False)
    assert "sync loss on (weight 0.05)" in caplog.text  # --syncnet_wt is used with --gan too
    state, _ = read_checkpoint(tmp_path / "gan" / "disc_checkpoint_step000000001.pth")
    assert what_is_it(state)[0] == "discriminator"
    assert list(state)[0] == "face_encoder_blocks.0.0.conv_block.0.weight" and state[list(state)[0]].shape == (32, 3, 7, 7)


def test_sync_weight_follows_the_flag_or_the_reference_schedule():
    assert sync_weight(TrainConfig(), gan=False) == 0.01  # wav2lip_train.py
    assert sync_weight(TrainConfig(), gan=True) == 0.03   # hq_wav2lip_train.py
    assert sync_weight(TrainConfig(syncnet_wt=0.05), gan=True) == 0.05  # an explicit --syncnet_wt wins, GAN or not
    assert sync_weight(TrainConfig(syncnet_wt=0.0), gan=False) == 0.0


@pytest.mark.slow
def test_training_rejects_missing_data_and_a_wrong_expert(synced_set, tmp_path, capsys):
    with pytest.raises(DataError, match="--train_dir"):
        read_split(tmp_path, "train")
    generator_file = save_checkpoint(torch.nn.Module(), tmp_path / "empty.pth")
    code = run_command(train_main, ["wav2lip", "--data_root", str(synced_set["train"]), "--checkpoint_dir",
                                    str(tmp_path / "c"), "--syncnet", str(generator_file)])  # as `python -m models.train`
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and "empty.pth" in err[0]
