"""models/iplap: IP_LAP's landmark generator and renderer load from the released layout and compute what the
reference's code computes (Weizhi-Zhong/IP_LAP models/landmark_generator.py, models/video_renderer.py)."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import CheckpointError
from models.iplap import LandmarkGenerator, Renderer, load_landmark_generator, load_renderer

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
    """Every entry as saved; the renderer's perceptual VGG19 only when loaded for training."""
    for (path, model), load in ((released["landmark"], load_landmark_generator),
                                (released["renderer"], lambda p, d: load_renderer(p, d, training=True))):
        loaded = load(path, "cpu")
        assert not loaded.training
        for (name, ours), theirs in zip(loaded.state_dict().items(), model.state_dict().values()):
            assert torch.equal(ours, theirs), name
    inference = load_renderer(released["renderer"][0], "cpu").state_dict()
    assert not any(k.startswith("perceptual.") for k in inference)
    assert len(inference) == len(released["renderer"][1].state_dict()) - 32  # VGG19's 16 convolutions


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


@pytest.mark.slow
def test_renderer_equals_the_reference_forward(released):
    model = load_renderer(released["renderer"][0], "cpu")
    rng = torch.Generator().manual_seed(3)
    face = torch.rand(2, 1, 3, 128, 128, generator=rng)
    sketches = (torch.rand(2, 5, 3, 128, 128, generator=rng) > 0.9).float()
    ref_faces = torch.rand(2, 2, 3, 128, 128, generator=rng)
    ref_sketches = (torch.rand(2, 2, 3, 128, 128, generator=rng) > 0.9).float()
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


# ---- the reference's inference_single.py around the networks, step by step ----

ORI_SEQUENCE_IDX = [162, 127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288,
                    361, 323, 454, 356, 389, 70, 63, 105, 66, 107, 55, 65, 52, 53, 46, 336, 296, 334, 293, 300, 276,
                    283, 282, 295, 285, 168, 6, 197, 195, 5, 48, 115, 220, 45, 4, 275, 440, 344, 278, 33, 246, 161,
                    160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7, 362, 398, 384, 385, 386, 387, 388,
                    466, 263, 249, 390, 373, 374, 380, 381, 382, 61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291,
                    375, 321, 405, 314, 17, 84, 181, 91, 146, 78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324,
                    318, 402, 317, 14, 87, 178, 88, 95]
FULL_FACE_LANDMARK_SEQUENCE = [*range(0, 4), *range(21, 25), *range(25, 91), *range(4, 21), *range(91, 131)]


def reference_groups():
    from models.iplap import mesh  # the edge sets are data, copied from the reference into mesh.py
    groups = [mesh.LIPS, mesh.LEFT_EYE, mesh.LEFT_EYEBROW, mesh.RIGHT_EYE, mesh.RIGHT_EYEBROW, mesh.FACE_OVAL,
              mesh.NOSE]
    connection = frozenset().union(*groups)

    def summarize_landmark(edge_set):
        return {p for a, b in edge_set for p in (a, b)}
    all_idx = summarize_landmark(connection)
    pose_idx = summarize_landmark(mesh.NOSE.union(*[mesh.RIGHT_EYEBROW, mesh.RIGHT_EYE, mesh.LEFT_EYE,
                                                     mesh.LEFT_EYEBROW])).union([162, 127, 234, 93, 389, 356, 454,
                                                                                  323])
    return connection, all_idx, pose_idx, all_idx - pose_idx


def reference_draw(full_landmarks, h, w, connection):
    """The sketch of inference_single.py with draw_landmark.draw_landmarks."""
    import math
    image = np.zeros((int(h * 128 / min(h, w)), int(w * 128 / min(h, w)), 3))
    rows, cols, _ = image.shape
    coordinates = {}
    for idx in range(full_landmarks.shape[1]):
        x, y = full_landmarks[0, idx], full_landmarks[1, idx]
        valid = [(v > 0 or math.isclose(0, v)) and (v < 1 or math.isclose(1, v)) for v in (x, y)]
        if all(valid):
            coordinates[ORI_SEQUENCE_IDX[FULL_FACE_LANDMARK_SEQUENCE[idx]]] = (
                min(math.floor(x * cols), cols - 1), min(math.floor(y * rows), rows - 1))
    for start, end in connection:
        if start in coordinates and end in coordinates:
            cv2.line(image, coordinates[start], coordinates[end], (224, 224, 224), 1)
    return cv2.resize(image, (128, 128))


def reference_inference_frame(frames, normalised, landmark_model, renderer, mels, centre, ref_img_N, Nl=15):
    """inference_single.py from the detected landmarks (mediapipe's normalised x, y per mesh point) to the face
    drawn for frame `centre` (its window centre-2 .. centre+2; mels: the chunks already chosen for it)."""
    connection, all_idx, pose_idx, content_idx = reference_groups()
    boxes, lip_dists, all_pose, all_content = [], [], [], []
    for frame_idx, (frame, marks) in enumerate(zip(frames, normalised)):
        h, w = frame.shape[:2]
        dx, dy = marks[0] - marks[17]
        lip_dists.append((frame_idx, np.linalg.norm((dx, dy))))
        x_min, x_max, y_min, y_max = 999, -999, 999, -999
        for idx, (x, y) in enumerate(marks):
            if idx in all_idx:
                x_min, x_max, y_min, y_max = min(x_min, x), max(x_max, x), min(y_min, y), max(y_max, y)
        x_min, x_max = max(x_min - 25 / w, 0), min(x_max + 25 / w, 1)
        y_min, y_max = max(y_min - 25 / h, 0), min(y_max + 25 / h, 1)
        boxes.append((int(y_min * h), int(y_max * h), int(x_min * w), int(x_max * w)))
        y1, y2, x1, x2 = boxes[-1]
        pose = [[idx, (w * x - x1) / (x2 - x1), (h * y - y1) / (y2 - y1)] for idx, (x, y) in enumerate(marks)
                if idx in pose_idx]
        content = [[idx, (w * x - x1) / (x2 - x1), (h * y - y1) / (y2 - y1)] for idx, (x, y) in enumerate(marks)
                   if idx in content_idx]
        all_pose.append(sorted(pose, key=lambda t: ORI_SEQUENCE_IDX.index(t[0])))
        all_content.append(sorted(content, key=lambda t: ORI_SEQUENCE_IDX.index(t[0])))
    crops = [frame[y1:y2, x1:x2] for frame, (y1, y2, x1, x2) in zip(frames, boxes)]

    def as_tensor(rows, count):
        out = torch.zeros((len(rows), 2, count))
        for i, row in enumerate(rows):
            out[i, 0, :] = torch.FloatTensor([p[1] for p in row])
            out[i, 1, :] = torch.FloatTensor([p[2] for p in row])
        return out

    lip_dist_idx = np.asarray([idx for idx, _ in sorted(lip_dists, key=lambda x: x[1])])
    n = len(frames)
    Nl_idxs = [lip_dist_idx[int(i)] for i in torch.linspace(0, n - 1, steps=Nl)]
    Nl_pose = as_tensor([all_pose[i] for i in Nl_idxs], 74).unsqueeze(0)
    Nl_content = as_tensor([all_content[i] for i in Nl_idxs], 57).unsqueeze(0)
    ref_img_idx = [int(lip_dist_idx[int(i)]) for i in torch.linspace(0, n - 1, steps=ref_img_N)]
    ref_full = torch.cat([as_tensor([all_pose[i] for i in ref_img_idx], 74),
                          as_tensor([all_content[i] for i in ref_img_idx], 57)], dim=2).numpy()
    ref_img_sketches = [reference_draw(ref_full[k], *crops[i].shape[:2], connection) for k, i in enumerate(ref_img_idx)]
    ref_img_sketches = torch.FloatTensor(np.asarray(ref_img_sketches) / 255.0).unsqueeze(0).permute(0, 1, 4, 2, 3)
    ref_imgs = [cv2.resize(crops[i].copy(), (128, 128)) for i in ref_img_idx]
    ref_imgs = torch.FloatTensor(np.asarray(ref_imgs) / 255.0).unsqueeze(0).permute(0, 1, 4, 2, 3)

    window = list(range(centre - 2, centre + 3))
    T_mels = torch.FloatTensor(np.asarray(mels)).unsqueeze(1).unsqueeze(0)
    T_pose = as_tensor([all_pose[i] for i in window], 74).unsqueeze(0)
    with torch.no_grad():
        predict_content = landmark_model(T_mels, T_pose, Nl_pose, Nl_content)
    full = torch.cat([T_pose[0], predict_content], dim=2).cpu().numpy()
    sketches = [torch.FloatTensor(reference_draw(full[t], *crops[i].shape[:2], connection)) / 255
                for t, i in enumerate(window)]
    target_sketches = torch.stack(sketches, dim=0).permute(0, 3, 1, 2).unsqueeze(0)
    ori_face_img = torch.FloatTensor(cv2.resize(crops[centre], (128, 128)) / 255).permute(2, 0, 1)[None, None]
    with torch.no_grad():
        generated_face, _ = renderer(ori_face_img, target_sketches, ref_imgs, ref_img_sketches,
                                     T_mels[:, 2].unsqueeze(0))
    return {"face": generated_face, "boxes": boxes, "Nl": Nl_idxs, "refs": ref_img_idx,
            "ref_sketches": ref_img_sketches, "target_sketches": target_sketches, "content": predict_content}


def test_sketches_equal_the_reference_drawing_at_every_crop_size():
    """Crop sizes whose canvas rounds differently if h * (128 / m) is computed instead of h * 128 / m (98, 130 x 107,
    ...) among random ones; points outside the crop are left out with their edges."""
    from models.iplap.mesh import draw_sketch
    connection = reference_groups()[0]
    rng = np.random.default_rng(5)
    sizes = [(98, 120), (130, 107), (49, 60), (161, 187), (196, 196)] + [tuple(rng.integers(40, 400, 2))
                                                                        for _ in range(25)]
    for h, w in sizes:
        pose = rng.uniform(-0.03, 1.03, (2, 74)).astype(np.float32)
        content = rng.uniform(-0.03, 1.03, (2, 57)).astype(np.float32)
        theirs = reference_draw(np.concatenate([pose, content], axis=1), int(h), int(w), connection) / 255.0
        assert np.abs(draw_sketch(pose, content, int(h), int(w)) - theirs).max() < 1e-6, (h, w)


@pytest.mark.slow
def test_one_frame_equals_the_reference_inference_from_the_same_landmarks(built, released):
    """A real presenter (the astronaut clip's cache: frames and MediaPipe meshes): boxes, reference choices,
    sketches, predicted landmarks and the drawn face equal the reference's inference_single.py on the same
    landmarks and frames (3 reference faces instead of 25, to keep the CPU time small)."""
    from models.iplap.mesh import crop_box, crop_landmarks, draw_sketch, lip_openness
    from models.iplap.prior import FrameLandmarks, IplapGenerator, pick_references, spread_by_openness
    from preprocess import cache
    folder = built["cache"] / "clip30"
    det = cache.read_face_det(folder)
    assert det["has_face"].all() and det["landmarks"].shape[1] == 478
    frames = [cv2.imread(str(folder / "bg" / cache.frame_name(i, "bg"))) for i in range(len(det["has_face"]))]
    height, width = frames[0].shape[:2]
    normalised = [marks.astype(np.float64) / (width, height) for marks in det["landmarks"]]
    landmark_model = load_landmark_generator(released["landmark"][0], "cpu")
    renderer = load_renderer(released["renderer"][0], "cpu")
    rng = np.random.default_rng(4)
    mels = (rng.random((5, 80, 16)) * 8 - 4).astype(np.float32)
    centre = 40
    expected = reference_inference_frame(frames, normalised, landmark_model, renderer, mels, centre, ref_img_N=3)

    points = [normalised_marks * (width, height) for normalised_marks in normalised]
    boxes = [crop_box(p, width, height) for p in points]
    assert boxes == expected["boxes"]
    ours = []
    for p, box in zip(points, boxes):
        pose, content = crop_landmarks(p, box)
        ours.append(FrameLandmarks(pose, content, (box[1] - box[0], box[3] - box[2]), lip_openness(p, width, height)))
    faces = [cv2.resize(f[y1:y2, x1:x2], (128, 128)) for f, (y1, y2, x1, x2) in zip(frames, boxes)]
    assert spread_by_openness([f.openness for f in ours], 15) == [int(i) for i in expected["Nl"]]
    assert spread_by_openness([f.openness for f in ours], 3) == expected["refs"]
    references = pick_references(ours, faces.__getitem__, torch.device("cpu"), face_count=3)
    torch.testing.assert_close(references.sketches, expected["ref_sketches"], rtol=0, atol=1e-6)
    assert references.sketches.max() > 0.5  # lines were drawn
    generator = IplapGenerator(landmark_model, renderer)
    window = [ours[centre - 2:centre + 3]]
    drawn = generator.render(mels[None], window, faces[centre][None], references)
    torch.testing.assert_close(drawn, expected["face"], rtol=1e-5, atol=1e-5)
    content = expected["content"].numpy()
    for t, frame in enumerate(window[0]):
        np.testing.assert_allclose(draw_sketch(frame.pose, content[t], *frame.crop_size),
                                   expected["target_sketches"][0, t].permute(1, 2, 0).numpy(), atol=1e-6)
    face = generator.generate(mels[None], window, faces[centre][None], references)[0]
    assert face.dtype == np.uint8 and face.shape == (128, 128, 3)
    assert np.abs(face.astype(int) - (expected["face"][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).max() <= 1


# ---- in the engine: --model iplap from a presenter cache ----

@pytest.fixture(scope="module")
def iplap_cache(media, tmp_path_factory) -> Path:
    """clip25 at IP_LAP's face size: 100 frames, a card hiding the face from 2.0 s to 2.6 s."""
    from preprocess.pipeline import PreprocessConfig, preprocess_video
    root = tmp_path_factory.mktemp("iplap_cache")
    return root / preprocess_video(media["clip25"], root, PreprocessConfig(face_size=128), progress=False).name


def iplap_args(released, cache: Path, *more: str):
    from engine.cli import parse_args
    return parse_args(["--model", "iplap", "--landmark_checkpoint", str(released["landmark"][0]),
                                      "--renderer_checkpoint", str(released["renderer"][0]), "--data_dir",
                                      str(cache), "--device", "cpu", *more])


def test_the_cache_holds_iplaps_crops_and_boxes(iplap_cache):
    from models.iplap.mesh import crop_box
    from engine.render.presenter import Presenter
    presenter = Presenter(iplap_cache, 128, load_iplap=True)
    faces = np.flatnonzero(presenter.has_face)
    assert 0 < len(faces) < presenter.frames  # the card hides the face on some frames
    assert not presenter.iplap_box[~presenter.has_face].any()
    for i in faces[::20]:
        y1, y2, x1, x2 = presenter.iplap_box[i]
        assert (y1, y2, x1, x2) == crop_box(presenter.landmarks[i], presenter.width, presenter.height)
        expected = cv2.resize(presenter.background(i)[y1:y2, x1:x2], (128, 128))
        assert np.abs(presenter.iplap_face(i).astype(int) - expected).mean() < 3  # the same crop, JPEG apart


def test_the_model_stage_hands_a_window_model_five_mel_windows_and_the_frames_around(built, media):
    """For frame f: the mel windows of frames f-4 .. f (the first standing in before the start) and the cache frames
    shown at f-2 .. f+2 (clamped at the start), along the presenter's ping-pong from start_frame."""
    from audio.decode import load_audio
    from engine.render.loop import lip_sync
    from engine.render.presenter import Presenter, ping_pong
    from engine.render.timeline import FrameTimeline

    class Recorder:
        window_frames, scheduled = 5, False

        def __init__(self):
            self.calls = []

        def predict(self, windows, faces, landmarks=None, frames=None, due=float("inf")):
            self.calls.append((windows.copy(), frames.copy()))
            return faces

    presenter = Presenter(built["cache"] / "clip30")  # a face on every frame
    timeline = FrameTimeline()
    units = timeline.push(load_audio(media["speech"])[:32000]) + timeline.finish()
    recorder = Recorder()
    list(lip_sync(units, presenter, recorder, batch_size=3, start_frame=70))
    windows = np.concatenate([w for w, _ in recorder.calls])
    shown = np.concatenate([f for _, f in recorder.calls])
    speaking = [u for u in units if u.speaking]
    assert 10 < len(speaking) == len(windows) and windows.shape[1:] == (5, 80, 16)
    for unit, window, frames in zip(speaking, windows, shown):
        assert np.array_equal(window, np.stack([units[max(0, unit.index - 4 + t)].window for t in range(5)]))
        assert frames.tolist() == [ping_pong(max(0, unit.index + d) + 70, presenter.frames) for d in range(-2, 3)]


def test_the_crop_warp_maps_pixel_centres_through_the_frame():
    """By hand: IP_LAP's crop at x 30..158, y 40..168 (128 px, so 1:1) and a Wav2Lip box at x 20..276, y 30..286
    (256 px into a 128 crop, so 2:1). Crop pixel c's centre is frame x = 2 (c + 0.5) - 0.5 + 20 = 2c + 20.5, which is
    IP_LAP pixel 2c - 9.5; down, frame y = 2c + 30.5 is IP_LAP pixel 2c - 9.5 as well."""
    from engine.render.iplap import into_crop
    u, v = np.meshgrid(np.arange(128, dtype=np.float32), np.arange(128, dtype=np.float32))
    face = np.stack([u, v, np.zeros_like(u)], axis=2)  # each pixel holds its own coordinates
    crop = np.full((128, 128, 3), -1.0, np.float32)
    warped = into_crop(crop, face, (40, 168, 30, 158), (20, 30, 276, 286))
    inside = np.arange(10, 60)  # crop pixels whose IP_LAP position 2c - 9.5 lies well inside 0 .. 127
    np.testing.assert_allclose(warped[inside[0], inside, 0], 2 * inside - 9.5, atol=1e-3)
    np.testing.assert_allclose(warped[inside, inside[0], 1], 2 * inside - 9.5, atol=1e-3)
    assert (warped[100:, 100:] == -1).all()  # beyond IP_LAP's crop: the cached pixels stay


def test_the_face_goes_from_iplaps_crop_into_the_wav2lip_crop_in_place(iplap_cache):
    """IP_LAP's own crop of a frame, warped into the frame's Wav2Lip crop, lands on that crop's pixels."""
    from engine.render.iplap import into_crop
    from engine.render.presenter import Presenter
    presenter = Presenter(iplap_cache, 128, load_iplap=True)
    for i in np.flatnonzero(presenter.has_face)[::30]:
        cached = presenter.face(i)
        warped = into_crop(np.zeros_like(cached), presenter.iplap_face(i), presenter.iplap_box[i], presenter.box[i])
        covered = warped.any(axis=2)
        assert covered.mean() > 0.8  # IP_LAP's crop spans most of the Wav2Lip one
        assert np.abs(warped[covered].astype(int) - cached[covered]).mean() < 4  # JPEG and resampling apart
        shifted = into_crop(np.zeros_like(cached), presenter.iplap_face(i), presenter.iplap_box[i] + (3, 3, 3, 3),
                            presenter.box[i])
        assert np.abs(shifted[covered].astype(int) - cached[covered]).mean() > 6  # 3 pixels off shows


@pytest.mark.slow
def test_a_render_draws_only_speech_inside_the_face_box(released, iplap_cache, media):
    """Random-weight checkpoints in the released layout, one reference face (CPU time): frame and audio counts
    follow the input, silence and faceless frames are the cached frames untouched, speech changes only the face
    box of each frame."""
    from audio.decode import load_audio
    from conftest import CollectSink
    from engine.assemble import Parts
    from engine.render.iplap import IplapLipSync
    from engine.render.loop import render_file
    from engine.render.presenter import ping_pong
    from engine.render.timeline import FrameTimeline
    from models.contract import LipModel
    presenter, predictor, compositor, cfg = Parts().build(
        iplap_args(released, iplap_cache, "--iplap_references", "1", "--batch_size", "3"), live=False)
    assert isinstance(predictor, IplapLipSync) and presenter.face_size == 128
    assert isinstance(predictor, LipModel)  # the contract's fields, declared
    assert (predictor.name, predictor.size, predictor.window_frames, predictor.batch_size, predictor.runtime,
            predictor.device_tensors, predictor.scheduled) == ("iplap", 128, 5, None, "torch", False, False)
    assert predictor.device == torch.device("cpu")
    speech = load_audio(media["speech"])
    loud = int(np.argmax(np.convolve(speech ** 2, np.ones(640), "valid")))  # the loudest 40 ms
    audio = np.concatenate([np.zeros(6400, np.float32), speech[loud:loud + 640], np.zeros(9600, np.float32)])
    sink = CollectSink()
    stats = render_file(audio, presenter, predictor, compositor, [sink], cfg, progress=False)
    timeline = FrameTimeline()
    units = timeline.push(audio) + timeline.finish()
    assert stats.frames == len(sink.frames) == len(units) == -(-len(audio) // 640)
    assert np.array_equal(np.concatenate(sink.audio)[:len(audio)], audio)
    drawn = 0
    for unit in units:
        index = ping_pong(unit.index, presenter.frames)
        diff = np.abs(sink.frames[unit.index].astype(int) - presenter.background(index).astype(int)).max(axis=2)
        if not (unit.speaking and presenter.has_face[index]):
            assert diff.max() == 0
            continue
        x1, y1, x2, y2 = presenter.box[index]
        assert diff[y1:y2, x1:x2].max() > 0
        diff[y1:y2, x1:x2] = 0
        assert diff.max() == 0
        drawn += 1
    assert drawn == stats.inferred and 4 <= drawn < len(units) - 8


@pytest.mark.parametrize("change, says", [
    (("--renderer_checkpoint", ""), "--model iplap needs --renderer_checkpoint (renderer_checkpoint.pth"),
    (("--checkpoint_path", "wav2lip.pth"), "--checkpoint_path is a Wav2Lip checkpoint"),
    (("live",), "--model iplap cannot run live on the CPU"),
])
def test_iplap_flags_are_checked_before_anything_loads(released, iplap_cache, change, says):
    from engine.assemble import Parts
    args = iplap_args(released, iplap_cache, *(change if change[0] != "live" else ()))
    with pytest.raises(ValueError, match=re.escape(says)):
        Parts().build(args, live=change[0] == "live")


def test_iplap_references_out_of_range_is_refused_on_the_command_line(capsys):
    from engine.cli import parse_args
    for value in ("0", "101"):
        with pytest.raises(SystemExit) as exited:
            parse_args(["--model", "iplap", "--iplap_references", value])
        assert exited.value.code == 2 and "argument --iplap_references" in capsys.readouterr().err


def test_the_preset_preprocesses_at_128_without_smoothing_and_preprocess_loads_no_torch():
    import subprocess
    import sys
    from conftest import ROOT
    from preprocess.__main__ import parse_args
    args = parse_args(["clip.mp4", "--out", "cache", "--config", "iplap"])
    assert (args.face_size, args.nosmooth, args.detector) == (128, True, "mediapipe")
    probe = "import sys, preprocess.pipeline, preprocess.export; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_a_cache_at_another_face_size_is_told_to_rebuild(released, built):
    from engine.assemble import Parts
    from engine.render.presenter import PresenterError
    with pytest.raises(PresenterError, match="rebuild it with `preprocess --config iplap`"):
        Parts().build(iplap_args(released, built["cache"] / "clip25"), live=False)


# ---- training on our LRS2-style export ----

@pytest.fixture(scope="module")
def training_root(built, tmp_path_factory) -> Path:
    """The export's one clip with sound (clip25) as both splits."""
    root = tmp_path_factory.mktemp("iplap_train")
    for split in ("train", "val"):
        (root / f"{split}.txt").write_text(f"{built['train'] / 'clip25'}\n")
    return root


def test_the_training_export_holds_iplaps_crops_and_landmarks(built, training_root):
    from audio.mel import melspectrogram
    from audio.decode import load_audio
    from core.timebase import mel_start
    from models.dataset import batch
    from models.iplap.data import IplapSampler, read_iplap_split
    from models.iplap.mesh import crop_landmarks
    from preprocess import cache
    clip, det = read_iplap_split(training_root, "train")[0], cache.read_face_det(built["cache"] / "clip25")
    assert clip.folder.name == "clip25"
    assert np.array_equal(np.isfinite(clip.pose).all(axis=(1, 2)), det["has_face"])
    assert len(list((clip.folder / "iplap").glob("*.jpg"))) == det["has_face"].sum()
    i = int(np.flatnonzero(det["has_face"])[7])
    pose, content = crop_landmarks(det["landmarks"][i], det["iplap_box"][i])
    assert np.array_equal(clip.pose[i], pose) and np.array_equal(clip.content[i], content)
    mel = melspectrogram(load_audio(clip.folder / "audio.wav"))
    assert np.array_equal(clip.mel_window(9), mel[:, mel_start(7):mel_start(7) + 16]) and clip.mel_window(1) is None
    sampler = IplapSampler([clip], 0)
    mels, pose, content, ref_pose, ref_content = batch([sampler.landmark() for _ in range(2)])
    assert (mels.shape, pose.shape, content.shape, ref_pose.shape, ref_content.shape) == (
        (2, 5, 1, 80, 16), (2, 5, 2, 74), (2, 5, 2, 57), (2, 15, 2, 74), (2, 15, 2, 57))
    face, sketches, ref_faces, ref_sketches, mel = sampler.renderer()
    assert (face.shape, sketches.shape, ref_faces.shape, mel.shape) == ((1, 3, 128, 128), (5, 3, 128, 128),
                                                                       (3, 3, 128, 128), (1, 1, 80, 16))
    assert 0 <= face.min() and face.max() <= 1 and sketches.max() > 0.5


@pytest.mark.slow
def test_landmark_training_lowers_the_loss_in_the_released_layout_and_resumes(training_root, tmp_path):
    from models.dataset import batch
    from models.iplap.data import IplapSampler, read_iplap_split
    from models.iplap.train import landmark_loss, train_landmark
    from models.checkpoint import read_checkpoint
    from models.train import TrainConfig
    validation = IplapSampler(read_iplap_split(training_root, "val"), 99)
    held_out = batch([validation.landmark() for _ in range(8)])
    torch.manual_seed(0)  # the training's own seed: the same initial weights
    with torch.no_grad():
        before = landmark_loss(LandmarkGenerator().eval(), held_out, torch.device("cpu")).item()
    cfg = TrainConfig(batch_size=4, steps=10, lr=1e-3, eval_interval=10, eval_batches=1, checkpoint_interval=10)
    last = train_landmark(training_root, tmp_path, cfg, device="cpu", progress=False)
    with torch.no_grad():
        after = landmark_loss(load_landmark_generator(last, "cpu"), held_out, torch.device("cpu")).item()
    assert after < 0.7 * before, (before, after)
    state, extra = read_checkpoint(last)
    raw = torch.load(last, weights_only=True)
    assert all(k.startswith("module.") for k in raw["state_dict"]) and extra["global_step"] == 10
    assert set(raw) == {"state_dict", "optimizer", "global_step", "global_epoch"}
    resumed = train_landmark(training_root, tmp_path, TrainConfig(**{**cfg.__dict__, "steps": 11}), device="cpu",
                             progress=False)
    assert read_checkpoint(resumed)[1]["global_step"] == 11


@pytest.mark.slow
def test_renderer_training_lowers_the_warp_loss_and_writes_both_checkpoints(training_root, tmp_path):
    """A step of the reference's first phase (the warped reference's perceptual loss) on a batch of two lowers
    that loss on the samples it saw, and writes the renderer and the discriminator in the released layout. One
    reference face and a VGG19 of random weights in torchvision's layout, to keep the CPU time small (a step takes
    seconds here)."""
    from models.dataset import batch
    from models.iplap.arch import vgg19_features
    from models.iplap.data import IplapSampler, read_iplap_split
    from models.iplap.train import WARP_WEIGHT, load_vgg19, train_renderer
    from models.train import TrainConfig
    vgg = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, vgg)
    with pytest.raises(ValueError, match="needs VGG19's ImageNet weights"):
        train_renderer(training_root, tmp_path / "ckpt", TrainConfig(), device="cpu", progress=False)
    # seed 12345 is the evaluation's: with the one clip as both splits, the evaluation after the step sees the
    # step's own samples
    cfg = TrainConfig(batch_size=2, steps=1, lr=1e-3, eval_interval=1, eval_batches=1, checkpoint_interval=1,
                      seed=12345)
    sampler = IplapSampler(read_iplap_split(training_root, "train"), cfg.seed)
    seen = batch([sampler.renderer(1) for _ in range(2)])
    torch.manual_seed(cfg.seed)
    initial = Renderer().eval()
    load_vgg19(initial, str(vgg))
    with torch.no_grad():
        before = (WARP_WEIGHT * initial.perceptual(initial(*seen)[1], seen[0][:, 0])).item()
    evals = []
    last = train_renderer(training_root, tmp_path / "ckpt", cfg, vgg19=str(vgg), device="cpu", progress=False,
                          references=1, on_eval=lambda step, loss: evals.append(loss))
    assert evals[0] < before, (before, evals)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint_step000000001.pth",
                                                                      "disc_checkpoint_step000000001.pth"]
    assert all(k.startswith("module.") for k in torch.load(last, weights_only=True)["state_dict"])


def test_the_later_renderer_loss_adds_the_reference_terms():
    """After the first epochs: 2.5 x warp + 4 x (perceptual + 250 x style) of the drawn face + 0.1 x 2.5 x LSGAN
    (MSE to 1 at each scale's last output) + feature matching (L1 of the other outputs, x 4 / 4 / 2 x 2.5); the
    discriminator's loss is half the LSGAN of fake (to 0) and real (to 1)."""
    from models.iplap.train import MultiscaleDiscriminator, renderer_losses
    torch.manual_seed(0)
    model, disc = Renderer().eval(), MultiscaleDiscriminator()
    drawn, warped, truth = (torch.rand(2, 3, 128, 128) for _ in range(3))
    drawn.requires_grad_(True)
    warp_only, _ = renderer_losses(model, disc, drawn, warped, truth, full=False)
    full, disc_loss = renderer_losses(model, disc, drawn, warped, truth, full=True)
    fake, real = disc(drawn), disc(truth)
    assert len(fake) == 2 and [f.shape[1] for f in fake[0]] == [64, 128, 256, 512, 1]
    gan = sum(((scale[-1] - 1) ** 2).mean() for scale in fake)
    matching = sum(1.0 * 0.5 * 2.5 * (f - r).abs().mean()
                   for fs, rs in zip(fake, real) for f, r in zip(fs[:-1], rs[:-1]))
    expected = warp_only + 4 * model.perceptual(drawn, truth, 250.0) + 0.25 * gan + matching
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-5)
    expected_disc = 0.5 * (sum((scale[-1] ** 2).mean() for scale in disc(drawn.detach()))
                           + sum(((scale[-1] - 1) ** 2).mean() for scale in real))
    torch.testing.assert_close(disc_loss, expected_disc, rtol=1e-5, atol=1e-5)
    full.backward()
    assert drawn.grad is not None and drawn.grad.abs().sum() > 0


@pytest.mark.cuda
def test_cuda_gives_the_cpu_landmarks_and_face(released, monkeypatch):
    """Both networks on the GPU, as the engine runs them there, in full fp32 (no TF32): the landmarks equal the
    CPU's, and from the same sketches so does the face (a sketch is drawn on whole pixels, so a landmark a hair
    apart could move a line: the renderer is compared on the CPU's sketches)."""
    from models.iplap.mesh import draw_sketch
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    rng = torch.Generator().manual_seed(6)
    mels, pose = torch.rand(2, 5, 1, 80, 16, generator=rng) * 8 - 4, torch.rand(2, 5, 2, 74, generator=rng)
    ref_pose, ref_content = torch.rand(2, 15, 2, 74, generator=rng), torch.rand(2, 15, 2, 57, generator=rng)
    face, ref_faces = torch.rand(2, 1, 3, 128, 128, generator=rng), torch.rand(2, 3, 3, 128, 128, generator=rng)
    content, drawn = {}, {}
    for device in ("cpu", "cuda"):
        landmarks = load_landmark_generator(released["landmark"][0], device)
        with torch.no_grad():
            content[device] = landmarks(*(t.to(device) for t in (mels, pose, ref_pose, ref_content))).cpu()
    torch.testing.assert_close(content["cuda"], content["cpu"], rtol=1e-4, atol=1e-4)
    sketches = torch.from_numpy(np.stack([draw_sketch(p.numpy(), c.numpy(), 150, 130) for p, c in
                                          zip(pose.flatten(0, 1), content["cpu"])])).permute(0, 3, 1, 2)
    sketches = sketches.reshape(2, 5, 3, 128, 128)
    for device in ("cpu", "cuda"):
        renderer = load_renderer(released["renderer"][0], device)
        with torch.no_grad():
            drawn[device] = renderer(*(t.to(device) for t in (face, sketches, ref_faces, sketches[:, :3],
                                                              mels[:, 2:3])))[0].cpu()
    torch.testing.assert_close(drawn["cuda"], drawn["cpu"], rtol=1e-4, atol=1e-4)
