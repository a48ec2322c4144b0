"""models/iplap: IP_LAP's landmark generator and renderer load from the released layout and compute what the
reference's code computes (Weizhi-Zhong/IP_LAP models/landmark_generator.py, models/video_renderer.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.iplap import LandmarkGenerator, Renderer, load_landmark_generator, load_renderer
from models.loader import CheckpointError

KEYS = Path(__file__).resolve().parent / "data" / "keys"
# Parameter counts from the reference's layer facts (weights + biases; BatchNorm and LayerNorm weight + bias):
# landmark generator: mel encoder (Wav2Lip's audio encoder) 2,812,672; ref_encoder (1-D, 2->...->512 over 131
#   points) 1,120,828; pose_encoder (74 points, one more 256 residual) 1,318,204; the transformer's modality
#   embedding 2,048 and 4 layers of 2,102,784 (in_proj 787,968, out_proj 262,656, linear1 525,312, linear2 524,800,
#   two LayerNorms 2,048); the mouth map 512->80 41,040, the jaw map 512->34 17,442, the shared LayerNorm 1,024.
LANDMARK_PARAMETERS = 13_724_394
# renderer: flow_module 8,146,019 (conv1 + bn 9,504, conv2 + bn 74,496, two SPADE(256, 15) of 3,610,112,
#   SPADE(64, 15) 733,568, conv_4 6,274, conv_5 101,953); translation 10,817,216 (audio encoder 2,812,672,
#   conv1 + bn 28,288, conv2 + bn 74,240, SPADE(256, 256) 4,720,640, AdaIN(256, 512) 1,443,584, SPADE(64, 32)
#   811,904, AdaIN(64, 512) 238,208, SPADE(64, 3) 678,272, conv_last 9,408); the perceptual loss's VGG19 features
#   20,024,384.
RENDERER_PARAMETERS = 38_987_619


def key_table(name: str) -> list[tuple[str, list[int]]]:
    return [(key, [int(d) for d in shape.strip("[]").split(",") if d.strip()])
            for key, shape in (line.split(" ", 1) for line in (KEYS / f"{name}.txt").read_text().splitlines())]


@pytest.mark.parametrize("build, table, parameters", [(LandmarkGenerator, "iplap_landmark", LANDMARK_PARAMETERS),
                                                       (Renderer, "iplap_renderer", RENDERER_PARAMETERS)])
def test_key_tables_and_parameter_counts(build, table, parameters):
    with torch.device("meta"):
        model = build()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == key_table(table)
    assert sum(p.numel() for p in model.parameters()) == parameters


def randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights with the normalisation statistics and affine moved off their initial values, so that their
    use is tested; scaled so that activations stay moderate through the deep stacks."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean"):
                tensor.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif tensor.ndim == 1 and name.endswith("weight"):
                tensor.uniform_(0.8, 1.2)
            elif tensor.ndim == 1 and name.endswith("bias"):
                tensor.uniform_(-0.05, 0.05)
    return model.eval()


def released_file(model: torch.nn.Module, path: Path) -> Path:
    """The released layout: {'state_dict': DataParallel's `module.` keys, 'optimizer', 'global_step', ...}."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "optimizer": None,
                "global_step": 1000, "global_epoch": 3}, path)
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iplap")
    landmark, renderer = randomised(LandmarkGenerator(), 0), randomised(Renderer(), 1)
    return {"landmark": (released_file(landmark, folder / "landmarkgenerator_checkpoint.pth"), landmark),
            "renderer": (released_file(renderer, folder / "renderer_checkpoint.pth"), renderer)}


def test_released_files_load_on_the_cpu_in_eval_mode(released):
    for (path, model), load in ((released["landmark"], load_landmark_generator),
                                (released["renderer"], load_renderer)):
        loaded = load(path, "cpu")
        assert not loaded.training
        for (name, ours), theirs in zip(loaded.state_dict().items(), model.state_dict().values()):
            assert torch.equal(ours, theirs), name


# ---- a step-by-step copy of the reference's forward passes, from its published code's facts ----

def reference_conv_stack(stack: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """The reference's Conv1d/Conv2d wrappers: act(bn(conv(x)) (+ x))."""
    for block in stack:
        out = block.conv_block(x)
        if block.residual:
            out += x
        x = block.act(out)
    return x


def reference_landmarks(model: LandmarkGenerator, T_mels, T_pose, Nl_pose, Nl_content) -> torch.Tensor:
    B, T, N_l = T_mels.size(0), T_mels.size(1), Nl_content.size(1)
    Nl_ref = torch.cat([Nl_pose, Nl_content], dim=3)
    Nl_ref = torch.cat([Nl_ref[i] for i in range(Nl_ref.size(0))], dim=0)
    T_mels = torch.cat([T_mels[i] for i in range(T_mels.size(0))], dim=0)
    T_pose = torch.cat([T_pose[i] for i in range(T_pose.size(0))], dim=0)
    mel_embedding = model.Norm(reference_conv_stack(model.mel_encoder, T_mels).squeeze(-1).squeeze(-1))
    pose_embedding = model.Norm(reference_conv_stack(model.pose_encoder, T_pose).squeeze(-1))
    ref_embedding = model.Norm(reference_conv_stack(model.ref_encoder, Nl_ref).squeeze(-1))
    mel_embedding = torch.stack(torch.split(mel_embedding, T), dim=0)
    pose_embedding = torch.stack(torch.split(pose_embedding, T), dim=0)
    ref_embedding = torch.stack(torch.split(ref_embedding, N_l, dim=0), dim=0)
    fusion = model.fusion_transformer
    position_v_encoding = fusion.position_v.pe[:, :pose_embedding.size(1)]
    position_a_encoding = fusion.position_a.pe[:, :mel_embedding.size(1)]
    modality_v = fusion.modality(1 * torch.ones((pose_embedding.size(0), T), dtype=torch.int))
    modality_a = fusion.modality(2 * torch.ones((mel_embedding.size(0), T), dtype=torch.int))
    pose_tokens = pose_embedding + position_v_encoding + modality_v
    audio_tokens = mel_embedding + position_a_encoding + modality_a
    ref_tokens = ref_embedding + fusion.modality(3 * torch.ones((ref_embedding.size(0), ref_embedding.size(1)),
                                                                dtype=torch.int))
    output_tokens = fusion.transformer_encoder(torch.cat((ref_tokens, audio_tokens, pose_tokens), dim=1))
    lip_embedding = output_tokens[:, N_l:N_l + T, :]
    jaw_embedding = output_tokens[:, N_l + T:, :]
    output_mouse_landmark = model.mouse_keypoint_map(lip_embedding)
    output_jaw_landmark = model.jaw_keypoint_map(jaw_embedding)
    predict_content = torch.reshape(torch.cat([output_jaw_landmark, output_mouse_landmark], dim=2), (B, T, -1, 2))
    return torch.cat([predict_content[i] for i in range(predict_content.size(0))], dim=0).permute(0, 2, 1)


def reference_adain_layer(layer, input, modulation_input):
    normalized = F.instance_norm(input)
    actv = layer.mlp_shared(modulation_input.view(modulation_input.size(0), -1))
    gamma, beta = layer.mlp_gamma(actv), layer.mlp_beta(actv)
    return normalized * (1 + gamma.view(*gamma.size()[:2], 1, 1)) + beta.view(*beta.size()[:2], 1, 1)


def reference_spade_layer(layer, input, modulation):
    norm = F.instance_norm(input)
    conv_out = layer.conv1(modulation)
    return norm + norm * layer.gamma(conv_out) + layer.beta(conv_out)


def reference_block(block, x, modulation, layer_forward, prefix):
    x = layer_forward(getattr(block, f"{prefix}_layer_1"), x, modulation)
    x = block.conv_1(F.leaky_relu(x, 0.2))
    x = layer_forward(getattr(block, f"{prefix}_layer_2"), x, modulation)
    return block.conv_2(F.leaky_relu(x, 0.2))


def spade(block, x, modulation):
    return reference_block(block, x, modulation, reference_spade_layer, "spade")


def adain(block, x, modulation):
    return reference_block(block, x, modulation, reference_adain_layer, "adain")


def downsample(x, size):
    return F.interpolate(x, size=size, mode="nearest")


def convert_flow_to_deformation(flow):
    b, c, h, w = flow.shape
    flow_norm = 2 * torch.cat([flow[:, :1, ...] / (w - 1), flow[:, 1:, ...] / (h - 1)], 1)
    x = torch.arange(w).to(flow)
    y = torch.arange(h).to(flow)
    x = (2 * (x / (w - 1)) - 1)
    y = (2 * (y / (h - 1)) - 1)
    yy = y.view(-1, 1).repeat(1, w)
    xx = x.view(1, -1).repeat(h, 1)
    grid = torch.cat([xx.unsqueeze_(2), yy.unsqueeze_(2)], 2).expand(b, -1, -1, -1)
    return grid + flow_norm.permute(0, 2, 3, 1)


def warping(source_image, deformation):
    _, h_old, w_old, _ = deformation.shape
    _, _, h, w = source_image.shape
    if h_old != h or w_old != w:
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear").permute(0, 2, 3, 1)
    return F.grid_sample(source_image, deformation, align_corners=False)


def reference_render(model: Renderer, face_frame_img, target_sketches, ref_N_frame_img, ref_N_frame_sketch,
                     audio_mels):
    flow = model.flow_module
    driving_sketch = torch.cat([target_sketches[:, i] for i in range(target_sketches.size(1))], dim=1)
    wrapped_h1_sum, wrapped_h2_sum, wrapped_ref_sum, softmax_denominator = 0., 0., 0., 0.
    for ref_idx in range(ref_N_frame_img.size(1)):
        ref_img = ref_N_frame_img[:, ref_idx]
        ref_sketch = ref_N_frame_sketch[:, ref_idx]
        h1 = flow.conv1_relu(flow.conv1_bn(flow.conv1(torch.cat((ref_img, ref_sketch), dim=1))))
        h2 = flow.conv2_relu(flow.conv2_bn(flow.conv2(h1)))
        downsample_64 = downsample(driving_sketch, (64, 64))
        spade_layer = spade(flow.spade_layer_1, h2, downsample_64)
        spade_layer = spade(flow.spade_layer_2, spade_layer, downsample_64)
        spade_layer = flow.pixel_shuffle_1(spade_layer)
        spade_layer = spade(flow.spade_layer_4, spade_layer, driving_sketch)
        output_flow = flow.conv_4(spade_layer)
        output_weight = flow.conv_5(spade_layer)
        deformation = convert_flow_to_deformation(output_flow)
        softmax_denominator += output_weight
        wrapped_h1_sum += warping(h1, deformation) * output_weight
        wrapped_h2_sum += warping(h2, deformation) * downsample(output_weight, (64, 64))
        wrapped_ref_sum += warping(ref_img, deformation) * output_weight
    softmax_denominator += 0.00001
    wrapped_h1 = wrapped_h1_sum / softmax_denominator
    wrapped_h2 = wrapped_h2_sum / downsample(softmax_denominator, (64, 64))
    wrapped_ref = wrapped_ref_sum / softmax_denominator

    target_sketches = torch.cat([target_sketches[:, i] for i in range(target_sketches.size(1))], dim=1)
    gt_mask_face = face_frame_img.squeeze(1).clone()
    gt_mask_face[:, :, gt_mask_face.size(2) // 2:, :] = 0
    translation_input = torch.cat([gt_mask_face, target_sketches], dim=1)
    net = model.translation
    T_mels = torch.cat([audio_mels[i] for i in range(audio_mels.size(0))], dim=0)
    x = net.conv1_relu(net.conv1_bn(net.conv1(translation_input)))
    x = net.conv2_relu(net.conv2_bn(net.conv2(x)))
    audio_feature = reference_conv_stack(net.audio_encoder, T_mels).squeeze(-1).permute(0, 2, 1)
    x = spade(net.spade_1, x, wrapped_h2)
    x = adain(net.adain_1, x, audio_feature)
    x = net.pixel_suffle_1(x)
    x = spade(net.spade_2, x, wrapped_h1)
    x = adain(net.adain_2, x, audio_feature)
    x = spade(net.spade_4, x, wrapped_ref)
    return torch.sigmoid(net.conv_last(F.leaky_relu(x))), wrapped_ref


def test_landmark_generator_equals_the_reference_forward(released):
    model = load_landmark_generator(released["landmark"][0], "cpu")
    rng = torch.Generator().manual_seed(2)
    mels = torch.rand(2, 5, 1, 80, 16, generator=rng) * 8 - 4
    pose, ref_pose = torch.rand(2, 5, 2, 74, generator=rng), torch.rand(2, 15, 2, 74, generator=rng)
    ref_content = torch.rand(2, 15, 2, 57, generator=rng)
    with torch.no_grad():
        ours = model(mels, pose, ref_pose, ref_content)
        theirs = reference_landmarks(model, mels, pose, ref_pose, ref_content)
    assert ours.shape == (10, 2, 57)
    assert ours.std() > 0.05  # not a constant: the comparison below means something
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_renderer_equals_the_reference_forward(released):
    model = load_renderer(released["renderer"][0], "cpu")
    rng = torch.Generator().manual_seed(3)
    face = torch.rand(2, 1, 3, 128, 128, generator=rng)
    sketches = (torch.rand(2, 5, 3, 128, 128, generator=rng) > 0.9).float()
    ref_faces = torch.rand(2, 3, 3, 128, 128, generator=rng)
    ref_sketches = (torch.rand(2, 3, 3, 128, 128, generator=rng) > 0.9).float()
    mels = torch.rand(2, 1, 1, 80, 16, generator=rng) * 8 - 4
    with torch.no_grad():
        ours = model(face, sketches, ref_faces, ref_sketches, mels)
        theirs = reference_render(model, face, sketches, ref_faces, ref_sketches, mels)
    assert ours[0].shape == (2, 3, 128, 128) and ours[1].shape == (2, 3, 128, 128)
    assert ours[0].std() > 0.01
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case, load, says", [
    ("missing", load_landmark_generator, "no such file"),
    ("random bytes", load_renderer, "corrupt"),
    ("the other half", load_landmark_generator, "this is IP_LAP's renderer (renderer_checkpoint.pth), not IP_LAP's "
                                                "landmark generator"),
    ("the other half", load_renderer, "this is IP_LAP's landmark generator (landmarkgenerator_checkpoint.pth), not "
                                      "IP_LAP's renderer"),
    ("wav2lip", load_renderer, "this is a Wav2Lip generator, not IP_LAP's renderer"),
    ("syncnet", load_landmark_generator, "this is a SyncNet lip-sync expert, not IP_LAP's landmark generator"),
    ("syncnet_v2", load_renderer, "this is syncnet_python's SyncNet (syncnet_v2.model)"),
    ("one key removed", load_landmark_generator, "missing: jaw_keypoint_map.bias"),
    ("wrong shape", load_renderer, "wrong shape: translation.conv_last.weight (3, 64, 5, 5) (expected (3, 64, 7, 7))"),
])
def test_wrong_files_say_what_they_are_in_one_line(released, tmp_path, case, load, says):
    path = tmp_path / "checkpoint.pth"
    wanted = "landmark" if load is load_landmark_generator else "renderer"
    state = dict(torch.load(released[wanted][0])["state_dict"])
    if case == "random bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "the other half":
        path = released["renderer" if wanted == "landmark" else "landmark"][0]
    elif case == "wav2lip":
        torch.save({"state_dict": {"module.face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(16, 6, 7, 7)}},
                   path)
    elif case == "syncnet":
        torch.save({"state_dict": {"module.face_encoder.0.conv_block.0.weight": torch.zeros(32, 15, 7, 7),
                                   "module.audio_encoder.0.conv_block.0.weight": torch.zeros(32, 1, 3, 3)}}, path)
    elif case == "syncnet_v2":
        torch.save({"netcnnlip.0.weight": torch.zeros(96, 3, 5, 7, 7)}, path)
    elif case == "one key removed":
        del state["module.jaw_keypoint_map.bias"]
        torch.save({"state_dict": state}, path)
    elif case == "wrong shape":
        state["module.translation.conv_last.weight"] = torch.zeros(3, 64, 5, 5)
        torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as error:
        load(path, "cpu")
    message = str(error.value)
    assert says in message and "Weizhi-Zhong/IP_LAP" in message and "\n" not in message
