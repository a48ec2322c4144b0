"""models/rife: Practical-RIFE v4.6's flownet.pkl loads as released and gives the reference's in-between frame."""
from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from demo.presenter import astronaut_bgr
from models.checkpoint import CheckpointError
from models.rife import IFNet, RifeInterpolator, load_rife

KEY_TABLE = Path(__file__).resolve().parent / "data" / "keys" / "rife_ifnet_hdv3.txt"
# Per block of input channels i and width c: conv0 9*i*c/2 + c/2 + 9*(c/2)*c + c, eight ResConv 8*(9c^2 + c + c),
# lastconv 16*24*c + 24; for (i, c) = (7, 192), (12, 128), (12, 96), (12, 64): 2,903,256 + 1,311,704 + 748,776 +
# 342,520.
PARAMETERS = 5_306_256
BLOCK_SCALES = (8, 4, 2, 1)


def reference_forward(sd: dict, img0: torch.Tensor, img1: torch.Tensor, timestep: float = 0.5) -> torch.Tensor:
    """IFNet_HDv3 v4.6's inference forward, step by step on the state-dict tensors (fast mode, no ensemble)."""
    def block(name: str, x: torch.Tensor, flow, scale: float):
        x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            small_flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
            x = torch.cat((x, small_flow * 1.0 / scale), 1)
        for j in range(2):
            x = F.leaky_relu(F.conv2d(x, sd[f"{name}.conv0.{j}.0.weight"], sd[f"{name}.conv0.{j}.0.bias"],
                                      stride=2, padding=1), 0.2)
        for j in range(8):
            layer = f"{name}.convblock.{j}"
            y = F.conv2d(x, sd[f"{layer}.conv.weight"], sd[f"{layer}.conv.bias"], stride=1, padding=1)
            x = F.leaky_relu(y * sd[f"{layer}.beta"] + x, 0.2)
        tmp = F.conv_transpose2d(x, sd[f"{name}.lastconv.0.weight"], sd[f"{name}.lastconv.0.bias"], stride=2, padding=1)
        tmp = F.interpolate(F.pixel_shuffle(tmp, 2), scale_factor=scale, mode="bilinear", align_corners=False)
        return tmp[:, :4] * scale, tmp[:, 4:5]

    def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        n, _, h, w = flow.shape
        horizontal = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(n, -1, h, -1)
        vertical = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(n, -1, -1, w)
        grid = torch.cat([horizontal, vertical], 1)
        flow = torch.cat([flow[:, 0:1] / ((image.shape[3] - 1.0) / 2.0),
                          flow[:, 1:2] / ((image.shape[2] - 1.0) / 2.0)], 1)
        return F.grid_sample(image, (grid + flow).permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                             align_corners=True)

    t = (img0[:, :1].clone() * 0 + 1) * timestep
    warped0, warped1, flow, mask = img0, img1, None, None
    for i, scale in enumerate(BLOCK_SCALES):
        if flow is None:
            flow, mask = block(f"block{i}", torch.cat((img0, img1, t), 1), None, scale)
        else:
            f0, m0 = block(f"block{i}", torch.cat((warped0, warped1, t, mask), 1), flow, scale)
            flow, mask = flow + f0, mask + m0
        warped0, warped1 = warp(img0, flow[:, :2]), warp(img1, flow[:, 2:4])
    mask = torch.sigmoid(mask)
    return warped0 * mask + warped1 * (1 - mask)


def random_ifnet(seed: int = 0) -> IFNet:
    """Random weights, with the ResConv betas moved off their initial ones so that their use is tested."""
    torch.manual_seed(seed)
    model = IFNet().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("beta"):
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[Path, IFNet]:
    """A flownet.pkl in the released layout: a bare state dict with DistributedDataParallel's `module.` keys."""
    model = random_ifnet()
    path = tmp_path_factory.mktemp("rife") / "flownet.pkl"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    return path, model


def set_heads(net: IFNet, flow: tuple[float, float, float, float], mask: float) -> None:
    """Every block's head constant: its transposed convolution's weights zeroed, its biases set so that after
    PixelShuffle (channel k <- 4k..4k+3) the flow is `flow` / 15 and the mask logit `mask` / 4 (the blocks add up,
    their flows multiplied by their scales 8 + 4 + 2 + 1). The sixth channel, unused in v4.6, gets 5."""
    per_channel = [v / sum(BLOCK_SCALES) for v in flow] + [mask / len(BLOCK_SCALES), 5.0]
    with torch.no_grad():
        for block in (net.block0, net.block1, net.block2, net.block3):
            block.lastconv[0].weight.zero_()
            block.lastconv[0].bias.copy_(torch.tensor(per_channel).repeat_interleave(4))


def test_key_table_and_parameter_count():
    with torch.device("meta"):
        model = IFNet()
    table = [(key, [int(d) for d in shape.strip("[]").split(",")])
             for key, shape in (line.split(" ", 1) for line in KEY_TABLE.read_text().splitlines())]
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == table
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS


def test_forward_equals_the_reference_steps():
    model = random_ifnet(1)
    generator = torch.Generator().manual_seed(2)
    img0, img1 = torch.rand(2, 1, 3, 64, 96, generator=generator)
    with torch.inference_mode():
        ours = model(img0, img1)
        expected = reference_forward(model.state_dict(), img0, img1)
    assert ours.shape == (1, 3, 64, 96)
    assert (ours - expected).abs().max() <= 1e-5


def test_released_file_loads_and_midpoint_follows_the_reference(released):
    path, model = released
    interpolator = RifeInterpolator(path, device="cpu")
    for ours, theirs in zip(interpolator.net.state_dict().values(), model.state_dict().values()):
        assert torch.equal(ours, theirs)
    photo = astronaut_bgr()
    a, b = photo[100:228, 150:278], photo[102:230, 154:282]  # the camera moving 4 px right, 2 px down
    middle = interpolator.midpoint(a, b)
    assert middle.shape == (128, 128, 3) and middle.dtype == np.uint8
    # a size that is not a multiple of 32: RGB, [0, 1], zero padding right and bottom, crop, rounding
    a, b = photo[40:110, 200:300], photo[43:113, 198:298]
    rgb = [F.pad(torch.from_numpy(f[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255.0, (0, 28, 0, 26))
           for f in (a, b)]
    with torch.inference_mode():
        reference = reference_forward(model.state_dict(), *rgb)[0, :, :70, :100]
    expected = (reference.permute(1, 2, 0).numpy()[..., ::-1] * 255).round()
    assert np.abs(interpolator.midpoint(a, b).astype(int) - expected).max() <= 1


def test_mask_blends_the_frames_and_flow_moves_each_halfway(released):
    interpolator = RifeInterpolator(released[0], device="cpu")
    photo = astronaut_bgr()
    a, b = photo[100:228, 150:278], photo[102:230, 154:282]
    set_heads(interpolator.net, flow=(0, 0, 0, 0), mask=math.log(3))  # sigmoid: 3/4 of the first frame
    assert np.abs(interpolator.midpoint(a, a).astype(int) - a).max() <= 1
    blend = 0.75 * a + 0.25 * b.astype(float)
    assert np.abs(interpolator.midpoint(a, b) - blend).max() <= 1
    # backward warps: the first frame read 2 px right and 1 px down, the second 2 px left and 1 px up
    set_heads(interpolator.net, flow=(2, 1, -2, -1), mask=0)
    truth = photo[101:229, 152:280]
    assert np.abs(interpolator.midpoint(a, b)[1:-1, 2:-2].astype(int) - truth[1:-1, 2:-2]).max() <= 1


@pytest.mark.parametrize("case, says", [
    ("missing", "no such file"),
    ("random bytes", "corrupt"),
    ("wav2lip", "this is a Wav2Lip generator, not a RIFE flownet"),
    ("one key removed", "missing: block3.lastconv.0.bias"),
    ("v4.5 head", "wrong shape: block0.lastconv.0.weight (192, 20, 4, 4) (expected (192, 24, 4, 4))"),
])
def test_wrong_files_say_what_they_are_in_one_line(released, tmp_path, case, says):
    path = tmp_path / "flownet.pkl"
    state = {f"module.{k}": v for k, v in released[1].state_dict().items()}
    if case == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "wav2lip":
        torch.save({"state_dict": {"module.face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(16, 6, 7, 7)},
                    "global_step": 1}, path)
    elif case == "one key removed":
        del state["module.block3.lastconv.0.bias"]
        torch.save(state, path)
    elif case == "v4.5 head":
        state["module.block0.lastconv.0.weight"] = torch.zeros(192, 20, 4, 4)
        torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        load_rife(path, "cpu")
    message = str(error.value)
    assert says in message and "flownet.pkl" in message and "\n" not in message


@pytest.mark.cuda
def test_cuda_gives_the_cpu_frame(released):
    photo = astronaut_bgr()
    a, b = photo[100:228, 150:278], photo[102:230, 154:282]
    on_cpu = RifeInterpolator(released[0], device="cpu").midpoint(a, b)
    assert np.abs(RifeInterpolator(released[0]).midpoint(a, b).astype(int) - on_cpu).max() <= 1


@pytest.mark.slow
def test_a_50_fps_render_makes_its_in_between_frames_with_rife(released, built, media, tmp_path, capsys):
    """Wired into the engine: a flownet whose heads say "no motion, all of the first frame" (mask logit +40) makes
    every in-between frame a copy of the frame before it, which DIS's midpoint never is."""
    import soundfile

    from audio.decode import load_audio
    from stream_out import main as stream_out
    net = random_ifnet()
    net.load_state_dict(released[1].state_dict())
    set_heads(net, flow=(0, 0, 0, 0), mask=40)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "first.pkl")
    soundfile.write(str(tmp_path / "talk.wav"), load_audio(media["speech"])[:6400], 16000)
    common = ["--data_dir", str(built["cache"] / "clip25"), "--audio_files", str(tmp_path / "talk.wav"),
              "--outfile", str(tmp_path / "50.mp4"), "--fps", "50", "--interpolator", "rife"]
    assert stream_out([*common, "--rife_path", str(tmp_path / "first.pkl")]) == 0
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "50.mp4"), "-f", "rawvideo", "-pix_fmt",
                          "gray", "-"], capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 360, 640).astype(int)
    assert len(frames) == 20
    for k in range(1, 18, 2):  # in-between k repeats frame k - 1, while frame k + 1 has moved on
        assert np.abs(frames[k] - frames[k - 1]).mean() < 0.5 < np.abs(frames[k + 1] - frames[k - 1]).mean(), k
    assert stream_out(common) == 2  # no --rife_path: one line saying where the file comes from
    assert "needs --rife_path flownet.pkl" in capsys.readouterr().err
