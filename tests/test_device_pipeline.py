"""The device pipeline (engine/render/resident.py, engine/render/torch_composite.py, the predictor's tensor path), run on the CPU
here and against the host path it must equal; the tests marked cuda run the same on a GPU where one exists."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import CollectSink
from engine.assemble import pick_pipeline
from engine.render.composite import Compositor
from engine.render.loop import render_file
from engine.render.presenter import Presenter
from engine.render.resident import load_resident, resident_bytes
from engine.render.torch_composite import TorchCompositor
from models import wav2lip96
from models.blocks import Wav2Lip
from models.mouthwarp import MouthAnimator
from models.predictor import LipSyncPredictor
from test_models import randomise_batchnorm


class ContrastCurve:
    """A real, cheap head enhancer for the compositor tests: a fixed contrast curve on every pixel, on numpy arrays
    and on tensors alike. (GFPGAN itself costs seconds a head on a CPU and is tested in tests/test_gfpgan.py.)"""
    realtime = True

    @staticmethod
    def _curve(x):
        return (x - 128) * 1.3 + 128

    def enhance(self, heads: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(self._curve(heads.astype(np.float32))), 0, 255).astype(np.uint8)

    def enhance_tensors(self, heads: torch.Tensor) -> torch.Tensor:
        return torch.round(self._curve(heads.float())).clamp_(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def presenter(built) -> Presenter:
    return Presenter(built["cache"] / "clip25", 96, load_heads=True)


@pytest.fixture(scope="module")
def resident(presenter):
    return load_resident(presenter, torch.device("cpu"), with_heads=True)


def close_enough(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    diff = np.abs(a.astype(int) - b.astype(int))
    return float(diff.mean()), int(diff.max())


@pytest.mark.parametrize("mode", ["none", "lip", "face"])
def test_torch_compositor_equals_the_cv2_compositor(presenter, resident, mode):
    indices = [int(i) for i in np.flatnonzero(presenter.has_face)[[0, 7, 40]]]
    rng = np.random.default_rng(1)
    faces = np.stack([np.clip(presenter.face(i).astype(int) + rng.integers(-40, 40, (96, 96, 3)), 0, 255)
                      for i in indices]).astype(np.uint8)  # a changed mouth region, as a model would make it
    host = Compositor(presenter, mode, ContrastCurve(), colour_match=True).compose(indices, faces)
    device = TorchCompositor(presenter, resident, mode, ContrastCurve(), colour_match=True)
    on_device = [f.numpy() for f in device.compose(indices, torch.from_numpy(faces))]
    for a, b, i in zip(host, on_device, indices):
        assert not np.array_equal(a, presenter.background(i))  # something was pasted
        mean, worst = close_enough(a, b)
        assert mean <= 1 and worst <= 8, (mode, i, mean, worst)
    assert np.array_equal(device.passthrough(indices[0]).numpy(), presenter.background(indices[0]))


@pytest.mark.slow
def test_the_whole_device_pipeline_on_cpu_torch_equals_the_host_path(presenter, resident, media):
    from audio.decode import load_audio
    torch.manual_seed(0)
    model = randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR))
    predictor = LipSyncPredictor(model, "cpu", "fp32", runtime="torch", batch_size=8)
    audio = load_audio(media["speech"])[: 16000]
    outputs = []
    for compositor in (Compositor(presenter), TorchCompositor(presenter, resident)):
        sink = CollectSink()
        stats = render_file(audio, presenter, predictor, compositor, [sink], progress=False)
        outputs.append((sink, stats))
    (host, host_stats), (device, device_stats) = outputs
    assert host_stats.inferred == device_stats.inferred > 10 and len(host.frames) == len(device.frames) == 25
    mean, worst = close_enough(np.stack(host.frames), np.stack(device.frames))
    assert mean <= 1 and worst <= 8, (mean, worst)
    assert all(np.array_equal(a, b) for a, b in zip(host.audio, device.audio))


def test_the_pipeline_choice_follows_the_model_and_device(presenter):
    torch_predictor = LipSyncPredictor(Wav2Lip(wav2lip96.GENERATOR), "cpu", "fp32", runtime="torch")
    assert pick_pipeline("auto", torch_predictor) == "host"  # the CPU keeps cv2 (and OpenVINO by default)
    assert pick_pipeline("device", torch_predictor) == "device"
    with pytest.raises(ValueError, match="needs a Wav2Lip checkpoint under --runtime torch"):
        pick_pipeline("device", MouthAnimator(96))
    assert resident_bytes(presenter, with_heads=True) == presenter.frames * (
        presenter.width * presenter.height * 3 + 96 * 96 * 3 + 512 * 512 * 3)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["none", "face"])
def test_the_device_pipeline_on_cuda_equals_the_host_path(presenter, media, mode):
    """On a GPU: frames resident in GPU memory, Wav2Lip fp16 and GFPGAN fp16 on the device, one copy per frame."""
    from audio.decode import load_audio
    from models.gfpgan import GfpganEnhancer
    from models.gfpgan.arch import build_gfpgan
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    resident = load_resident(presenter, cuda, with_heads=True)
    assert resident.backgrounds.device.type == "cuda"
    model = randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR))
    predictor = LipSyncPredictor(model, cuda, "fp16", runtime="torch", batch_size=8)
    enhancer = GfpganEnhancer(build_gfpgan(), cuda) if mode == "face" else None
    audio = load_audio(media["speech"])[: 16000 * 2]
    sinks = []
    for compositor in (Compositor(presenter, mode, enhancer), TorchCompositor(presenter, resident, mode, enhancer)):
        sinks.append(CollectSink())
        render_file(audio, presenter, predictor, compositor, [sinks[-1]], progress=False)
    mean, worst = close_enough(np.stack(sinks[0].frames), np.stack(sinks[1].frames))
    assert mean <= 1 and worst <= 8, (mean, worst)


@pytest.mark.slow
def test_a_compiled_model_runs_eagerly_until_its_graph_is_ready_and_equal_after():
    """The swap logic of models/compiled.py, with torch's 'eager' compile backend (CI has no GPU for CUDA graphs)."""
    from models.compiled import CompiledSwap
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.inference_mode():
        expected = net(x)
    swap = CompiledSwap(net, lambda b: (torch.rand(b, 3, 8, 8),), [2], backend="eager", name="tiny")
    with torch.inference_mode():
        early = swap(x)  # served at once, whether or not the graph is ready yet
    swap.wait(timeout=120)
    with torch.inference_mode():
        assert 2 in swap.ready and 3 not in swap.ready
        assert torch.allclose(early, expected) and torch.allclose(swap(x), expected)
        assert swap(torch.rand(3, 3, 8, 8)).shape == (3, 4, 6, 6)  # a batch nothing compiled for runs eagerly


def test_cuda_graphs_and_compile_are_one_choice_and_neither_runs_on_the_cpu(caplog, capsys):
    from engine.assemble import cuda_speedups
    from engine.cli import parse_args
    from models.graphed import graph_batches
    with pytest.raises(SystemExit) as exited:
        parse_args(["--compile", "--cuda_graphs"])
    assert exited.value.code == 2 and "choose one" in capsys.readouterr().err
    spec = parse_args(["--cuda_graphs", "--device", "cpu"]).engine()
    assert cuda_speedups(spec, 16) == {"compile_batches": (), "graph_batches": ()}
    assert "--cuda_graphs is for CUDA GPUs" in caplog.text
    # every call of up to the batch in use replays a graph at most twice its size
    assert graph_batches(16) == (1, 2, 4, 8, 16) and graph_batches(6) == (1, 2, 4, 6) and graph_batches(1) == (1,)


@pytest.mark.cuda
def test_captured_cuda_graphs_replay_the_eager_steps_padded_and_never_overwrite_a_result():
    """models/graphed.py on a GPU: Wav2Lip's and GFPGAN's whole uint8 steps, graphed against eager."""
    from models.gfpgan import GfpganEnhancer
    from models.gfpgan.arch import build_gfpgan
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    predictor = LipSyncPredictor(randomise_batchnorm(Wav2Lip(wav2lip96.GENERATOR)), cuda, "fp16", runtime="torch",
                                 batch_size=8, graph_batches=(1, 4, 8))
    assert sorted(predictor.device_step.graphs) == [1, 4, 8]
    mel = torch.randn(12, 80, 16, device=cuda)
    faces = torch.randint(0, 256, (12, 96, 96, 3), dtype=torch.uint8, device=cuda)
    with torch.inference_mode():
        for rows in (1, 3, 8, 12):  # captured, padded into 4, captured, eager (larger than any graph)
            graphed, eager = predictor.device_step(mel[:rows], faces[:rows]), predictor._device_step(mel[:rows],
                                                                                                  faces[:rows])
            assert graphed.shape == eager.shape == (rows, 96, 96, 3)
            assert (graphed.int() - eager.int()).abs().max() <= 2, rows
        kept = predictor.device_step(mel[:1], faces[:1])
        copy = kept.clone()
        predictor.device_step(mel[5:6], faces[5:6])  # the same graph again, other inputs
        assert torch.equal(kept, copy)
        enhancer = GfpganEnhancer(build_gfpgan(), cuda, batch_size=2, graph_batches=(2,))
        heads = torch.randint(0, 256, (3, 512, 512, 3), dtype=torch.uint8, device=cuda)
        graphed, eager = enhancer.enhance_tensors(heads), torch.cat([enhancer._step(heads[:2]), enhancer._step(heads[2:])])
        assert (graphed.int() - eager.int()).abs().max() <= 2


@pytest.mark.cuda
def test_presenter_images_fall_back_to_pinned_host_memory_when_they_do_not_fit(presenter):
    frames = load_resident(presenter, torch.device("cuda"), with_heads=False, max_gib=1e-6)
    assert frames.backgrounds.device.type == "cpu" and frames.backgrounds.is_pinned()
    assert frames.background(0).device.type == "cuda" and frames.face_batch([0, 1]).device.type == "cuda"
