"""IP_LAP's two networks (Weizhi-Zhong/IP_LAP, CVPR 2023), with the key names, shapes and state-dict order of the
released landmarkgenerator_checkpoint.pth and renderer_checkpoint.pth.

Layer facts read in the reference's models/landmark_generator.py and models/video_renderer.py:
- `LandmarkGenerator` (the reference's Landmark_generator, built with T=5, d_model=512, nlayers=4, nhead=4,
  dim_feedforward=1024, dropout=0.1): a mel encoder (Wav2Lip's audio encoder, its last activation Tanh), two 1-D
  convolution encoders for the 74 pose landmarks of each of the T frames and the 131 landmarks of each of the Nl
  reference frames, a LayerNorm shared by the three, and a 4-layer transformer over [Nl reference tokens, T audio
  tokens, T pose tokens] (sinusoidal positions on the audio and pose tokens, a learned modality embedding on all).
  The audio tokens' outputs give the 40 mouth landmarks, the pose tokens' the 17 jaw landmarks.
- `Renderer`: `flow_module` (DenseFlowNetwork) warps each of the N reference faces and their encoder features
  towards the target sketches and blends them with predicted weights; `translation` (TranslationNetwork) draws the
  128 x 128 face from the upper half of the current face and the target sketches, modulated by the warped features
  (SPADE) and the audio (AdaIN). `perceptual` is the VGG19 of the training loss: the released file holds its
  weights, so the module is here with torchvision's layer layout, and only training runs it.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..blocks import Layer, audio_encoder_512, conv, stack
from .mesh import T_FRAMES

MOUTH_POINTS, JAW_POINTS = 40, 17  # the 57 content landmarks: jaw first, then the lips
D_MODEL = 512
FLOW_SIZE = 64        # the renderer's half-resolution feature maps


def conv1d(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1, residual: bool = False,
           act: str = "relu") -> Layer:
    return Layer(cin, cout, kernel, stride, padding, residual=residual, act=act, dims=1)


def res1d(channels: int, count: int) -> list[Layer]:
    return [conv1d(channels, channels, residual=True) for _ in range(count)]


def reference_encoder() -> list[Layer]:
    """(N, 2, 131) landmarks of a reference frame -> (N, 512, 1)."""
    return [conv1d(2, 4), conv1d(4, 8, stride=2), *res1d(8, 2), conv1d(8, 16, stride=2), *res1d(16, 2),
            conv1d(16, 32, stride=2), *res1d(32, 2), conv1d(32, 64, stride=2), *res1d(64, 2),
            conv1d(64, 128, stride=2), *res1d(128, 2), conv1d(128, 256, stride=2), *res1d(256, 1),
            conv1d(256, 512, padding=0), conv1d(512, 512, 1, 1, 0, act="tanh")]


def pose_encoder() -> list[Layer]:
    """(N, 2, 74) pose landmarks of a frame -> (N, 512, 1)."""
    return [conv1d(2, 4), conv1d(4, 8), *res1d(8, 2), conv1d(8, 16, stride=2), *res1d(16, 2),
            conv1d(16, 32, stride=2), *res1d(32, 2), conv1d(32, 64, stride=2), *res1d(64, 2),
            conv1d(64, 128, stride=2), *res1d(128, 2), conv1d(128, 256, stride=2), *res1d(256, 2),
            conv1d(256, 512, padding=0), conv1d(512, 512, 1, 1, 0, residual=True, act="tanh")]


class PositionalEmbedding(nn.Module):
    """The fixed sinusoidal table (1, 512, d_model), kept in the state dict as the reference keeps it."""

    def __init__(self, d_model: int = D_MODEL, max_len: int = 512):
        super().__init__()
        position = torch.arange(max_len).float()[:, None]
        rate = (torch.arange(0, d_model, 2).float() * -(math.log(10000.0) / d_model)).exp()
        table = torch.zeros(max_len, d_model)
        table[:, 0::2] = torch.sin(position * rate)
        table[:, 1::2] = torch.cos(position * rate)
        self.register_buffer("pe", table[None])

    def forward(self, length: int) -> torch.Tensor:
        return self.pe[:, :length]


POSE, AUDIO, REFERENCE = 1, 2, 3  # modality ids (0 is padding)


class FusionTransformer(nn.Module):
    def __init__(self, d_model: int, layers: int, heads: int, feedforward: int, dropout: float):
        super().__init__()
        self.position_v = PositionalEmbedding(D_MODEL)
        self.position_a = PositionalEmbedding(D_MODEL)
        self.modality = nn.Embedding(4, D_MODEL, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.transformer_encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(d_model, heads, feedforward, dropout, batch_first=True), layers,
            enable_nested_tensor=False)

    def kind(self, ids: int, like: torch.Tensor) -> torch.Tensor:
        return self.modality(torch.full(like.shape[:2], ids, dtype=torch.long, device=like.device))

    def forward(self, reference: torch.Tensor, audio: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """(B, Nl, 512), (B, T, 512), (B, T, 512) -> (B, Nl + 2T, 512)."""
        pose_tokens = pose + self.position_v(pose.size(1)) + self.kind(POSE, pose)
        audio_tokens = audio + self.position_a(audio.size(1)) + self.kind(AUDIO, audio)
        reference_tokens = reference + self.kind(REFERENCE, reference)
        tokens = self.dropout(torch.cat([reference_tokens, audio_tokens, pose_tokens], dim=1))
        return self.transformer_encoder(tokens)


class LandmarkGenerator(nn.Module):
    """(mels (B,T,1,80,16), pose (B,T,2,74), reference pose (B,Nl,2,74), reference content (B,Nl,2,57)) ->
    (B*T, 2, 57): jaw then mouth landmarks of each frame, x and y in the face crop's [0, 1]."""

    def __init__(self, d_model: int = D_MODEL, layers: int = 4, heads: int = 4, feedforward: int = 1024,
                 dropout: float = 0.1):
        super().__init__()
        self.mel_encoder = stack([*audio_encoder_512()[:-1], conv(512, 512, 1, 1, 0, act="tanh")])
        self.ref_encoder = stack(reference_encoder())
        self.pose_encoder = stack(pose_encoder())
        self.fusion_transformer = FusionTransformer(d_model, layers, heads, feedforward, dropout)
        self.mouse_keypoint_map = nn.Linear(d_model, MOUTH_POINTS * 2)
        self.jaw_keypoint_map = nn.Linear(d_model, JAW_POINTS * 2)
        self.apply(reference_init)
        self.Norm = nn.LayerNorm(D_MODEL)

    def forward(self, mels: torch.Tensor, pose: torch.Tensor, ref_pose: torch.Tensor,
                ref_content: torch.Tensor) -> torch.Tensor:
        batch, frames, references = mels.size(0), mels.size(1), ref_content.size(1)
        reference = torch.cat([ref_pose, ref_content], dim=3).flatten(0, 1)          # (B*Nl, 2, 131)
        audio = self.Norm(self.mel_encoder(mels.flatten(0, 1)).flatten(1))           # (B*T, 512)
        pose_embedding = self.Norm(self.pose_encoder(pose.flatten(0, 1)).flatten(1))
        reference_embedding = self.Norm(self.ref_encoder(reference).flatten(1))
        tokens = self.fusion_transformer(reference_embedding.view(batch, references, -1),
                                         audio.view(batch, frames, -1), pose_embedding.view(batch, frames, -1))
        mouth = self.mouse_keypoint_map(tokens[:, references:references + frames])  # (B, T, 80)
        jaw = self.jaw_keypoint_map(tokens[:, references + frames:])                  # (B, T, 34)
        return torch.cat([jaw, mouth], dim=2).view(batch * frames, -1, 2).permute(0, 2, 1)


def reference_init(module: nn.Module) -> None:
    """The reference's weight_init, applied before its LayerNorm exists: Xavier-normal linears, unit BatchNorm1d."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        nn.init.constant_(module.bias, 0)
    elif isinstance(module, nn.BatchNorm1d):
        nn.init.constant_(module.weight, 1)
        nn.init.constant_(module.bias, 0)


class AdaINLayer(nn.Module):
    """Instance norm scaled and shifted by an MLP of a vector (the audio embedding)."""

    def __init__(self, channels: int, modulation: int, hidden: int = 128):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.mlp_shared = nn.Sequential(nn.Linear(modulation, hidden), nn.ReLU())
        self.mlp_gamma = nn.Linear(hidden, channels)
        self.mlp_beta = nn.Linear(hidden, channels)

    def modulation(self, vector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.mlp_shared(vector.flatten(1))
        return self.mlp_gamma(hidden)[..., None, None], self.mlp_beta(hidden)[..., None, None]

    def modulate(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + gamma) + beta


class SPADELayer(nn.Module):
    """Instance norm scaled and shifted per pixel by convolutions of a feature map (no activation between, as in the
    reference)."""

    def __init__(self, channels: int, modulation: int, hidden: int = 256):
        super().__init__()
        self.norm = nn.InstanceNorm2d(channels)
        self.conv1 = nn.Conv2d(modulation, hidden, 3, 1, 1)
        self.gamma = nn.Conv2d(hidden, channels, 3, 1, 1)
        self.beta = nn.Conv2d(hidden, channels, 3, 1, 1)

    def modulation(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.conv1(features)
        return self.gamma(hidden), self.beta(hidden)

    def modulate(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        normalized = self.norm(x)
        return normalized + normalized * gamma + beta


class ModulatedBlock(nn.Module):
    """norm 1 -> LeakyReLU(0.2) -> conv_1 -> norm 2 -> LeakyReLU(0.2) -> conv_2, the norms modulated by a second
    input. The reference's AdaIN and SPADE blocks, whose norms are named `adain_layer_*` / `spade_layer_*`.
    The modulation depends on the second input only, so a caller that reuses one (the flow network, once per
    reference face) computes it once with `modulations` and passes it in."""

    def __init__(self, channels: int, prefix: str, make_norm: Callable[[], nn.Module]):
        super().__init__()
        self.conv_1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.conv_2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.norm_names = (f"{prefix}_layer_1", f"{prefix}_layer_2")
        for name in self.norm_names:
            self.add_module(name, make_norm())

    def norms(self) -> tuple[nn.Module, nn.Module]:
        return tuple(getattr(self, name) for name in self.norm_names)

    def modulations(self, modulation: torch.Tensor) -> tuple:
        return tuple(norm.modulation(modulation) for norm in self.norms())

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, modulations: Optional[tuple] = None) -> torch.Tensor:
        (first, second), (params_1, params_2) = self.norms(), modulations or self.modulations(modulation)
        x = self.conv_1(self.leaky_relu(first.modulate(x, *params_1)))
        return self.conv_2(self.leaky_relu(second.modulate(x, *params_2)))


def adain(channels: int, modulation: int) -> ModulatedBlock:
    return ModulatedBlock(channels, "adain", lambda: AdaINLayer(channels, modulation))


def spade(channels: int, modulation: int, hidden: int = 256) -> ModulatedBlock:
    return ModulatedBlock(channels, "spade", lambda: SPADELayer(channels, modulation, hidden))


def resize_nearest(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(x, size=(size, size), mode="nearest")


def deformation_of(flow: torch.Tensor) -> torch.Tensor:
    """A flow in pixels (B, 2, H, W) -> grid_sample's sampling grid (B, H, W, 2) in [-1, 1]."""
    _, _, height, width = flow.shape
    xs = 2 * (torch.arange(width).to(flow) / (width - 1)) - 1
    ys = 2 * (torch.arange(height).to(flow) / (height - 1)) - 1
    grid = torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)], dim=2)
    scaled = 2 * torch.cat([flow[:, :1] / (width - 1), flow[:, 1:] / (height - 1)], dim=1)
    return grid[None] + scaled.permute(0, 2, 3, 1)


def warp(source: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Sample `source` at `deformation`, the grid resized (bilinear) to the source's size first."""
    if deformation.shape[1:3] != source.shape[2:]:
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=source.shape[2:], mode="bilinear",
                                    align_corners=False).permute(0, 2, 3, 1)
    return F.grid_sample(source, deformation, align_corners=False)


class DenseFlowNetwork(nn.Module):
    def __init__(self, channels: int = 6, modulation: int = 3 * T_FRAMES, hidden: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 7, 1, 3)
        self.conv1_bn = nn.BatchNorm2d(32)
        self.conv1_relu = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 256, 3, 2, 1)
        self.conv2_bn = nn.BatchNorm2d(256)
        self.conv2_relu = nn.ReLU()
        self.spade_layer_1 = spade(256, modulation, hidden)
        self.spade_layer_2 = spade(256, modulation, hidden)
        self.pixel_shuffle_1 = nn.PixelShuffle(2)
        self.spade_layer_4 = spade(64, modulation, hidden)
        self.conv_4 = nn.Conv2d(64, 2, 7, 1, 3)
        self.conv_5 = nn.Sequential(nn.Conv2d(64, 32, 7, 1, 3), nn.ReLU(), nn.Conv2d(32, 1, 7, 1, 3), nn.Sigmoid())

    def forward(self, ref_faces: torch.Tensor, ref_sketches: torch.Tensor,
                sketches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ref_faces, ref_sketches (B, N, 3, H, W); sketches (B, T, 3, H, W) -> the references' encoder features
        (B, 32, H, W) and (B, 256, H/2, W/2) and faces (B, 3, H, W), each warped to the sketches and blended over
        the N references by the predicted weights."""
        driving = sketches.flatten(1, 2)                            # (B, 3T, H, W)
        driving_small = resize_nearest(driving, FLOW_SIZE)
        modulation_1 = self.spade_layer_1.modulations(driving_small)   # the same for every reference: once
        modulation_2 = self.spade_layer_2.modulations(driving_small)
        modulation_4 = self.spade_layer_4.modulations(driving)
        h1_sum = h2_sum = face_sum = weight_sum = 0.0
        for index in range(ref_faces.size(1)):
            face = ref_faces[:, index]
            h1 = self.conv1_relu(self.conv1_bn(self.conv1(torch.cat([face, ref_sketches[:, index]], dim=1))))
            h2 = self.conv2_relu(self.conv2_bn(self.conv2(h1)))
            x = self.spade_layer_2(self.spade_layer_1(h2, driving_small, modulation_1), driving_small, modulation_2)
            x = self.spade_layer_4(self.pixel_shuffle_1(x), driving, modulation_4)
            deformation = deformation_of(self.conv_4(x))
            weight = self.conv_5(x)
            weight_sum = weight_sum + weight
            h1_sum = h1_sum + warp(h1, deformation) * weight
            h2_sum = h2_sum + warp(h2, deformation) * resize_nearest(weight, FLOW_SIZE)
            face_sum = face_sum + warp(face, deformation) * weight
        weight_sum = weight_sum + 1e-5
        return h1_sum / weight_sum, h2_sum / resize_nearest(weight_sum, FLOW_SIZE), face_sum / weight_sum


class TranslationNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.audio_encoder = stack(audio_encoder_512())
        self.conv1 = nn.Conv2d(3 + 3 * T_FRAMES, 32, 7, 1, 3, bias=False)
        self.conv1_bn = nn.BatchNorm2d(32)
        self.conv1_relu = nn.ReLU()
        self.conv2 = nn.Conv2d(32, 256, 3, 2, 1, bias=False)
        self.conv2_bn = nn.BatchNorm2d(256)
        self.conv2_relu = nn.ReLU()
        self.spade_1 = spade(256, 256)
        self.adain_1 = adain(256, 512)
        self.pixel_suffle_1 = nn.PixelShuffle(2)
        self.spade_2 = spade(64, 32)
        self.adain_2 = adain(64, 512)
        self.spade_4 = spade(64, 3)
        self.leaky_relu = nn.LeakyReLU()
        self.conv_last = nn.Conv2d(64, 3, 7, 1, 3, bias=False)
        self.Sigmoid = nn.Sigmoid()

    def forward(self, inputs: torch.Tensor, warped_face: torch.Tensor, warped_h1: torch.Tensor,
                warped_h2: torch.Tensor, mels: torch.Tensor) -> torch.Tensor:
        """inputs (B, 18, H, W): the face with its lower half zeroed and the T sketches; mels (B, 1, 1, 80, 16)."""
        audio = self.audio_encoder(mels.flatten(0, 1)).flatten(1)                    # (B, 512)
        x = self.conv2_relu(self.conv2_bn(self.conv2(self.conv1_relu(self.conv1_bn(self.conv1(inputs))))))
        x = self.pixel_suffle_1(self.adain_1(self.spade_1(x, warped_h2), audio))
        x = self.spade_4(self.adain_2(self.spade_2(x, warped_h1), audio), warped_face)
        return self.Sigmoid(self.conv_last(self.leaky_relu(x)))


VGG19_LAYERS = (64, 64, "pool", 128, 128, "pool", 256, 256, 256, 256, "pool", 512, 512, 512, 512, "pool",
                512, 512, 512, 512, "pool")
PERCEPTUAL_RELUS = {1: "relu_1_1", 6: "relu_2_1", 11: "relu_3_1", 20: "relu_4_1", 29: "relu_5_1"}


def vgg19_features() -> nn.Sequential:
    """torchvision's vgg19().features layout (conv 3x3 + ReLU, max-pools), so that its indices name the keys."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG19_LAYERS:
        if item == "pool":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, 1, 1), nn.ReLU()]
            channels = item
    return nn.Sequential(*layers)


class PerceptualNetwork(nn.Module):
    def __init__(self):
        super().__init__()
        self.network = vgg19_features()
        for parameter in self.parameters():
            parameter.requires_grad = False

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        for index, layer in enumerate(self.network):
            x = layer(x)
            if index in PERCEPTUAL_RELUS:
                features[PERCEPTUAL_RELUS[index]] = x
            if index == max(PERCEPTUAL_RELUS):
                break
        return features


class PerceptualLoss(nn.Module):
    """The reference's training loss: L1 between VGG19 ReLU features (relu_1_1 .. relu_5_1, weight 1 each) of the
    ImageNet-normalised images at full and half size, plus optionally the first scale's Gram-matrix (style) L1."""

    def __init__(self):
        super().__init__()
        self.model = PerceptualNetwork()

    def forward(self, image: torch.Tensor, target: torch.Tensor, style_weight: float = 0.0) -> torch.Tensor:
        self.model.eval()
        image, target = imagenet_normalised(image), imagenet_normalised(target)
        loss = style = image.new_zeros(())
        for scale in range(2):
            ours, theirs = self.model(image), self.model(target)
            for name in PERCEPTUAL_RELUS.values():
                loss = loss + F.l1_loss(ours[name], theirs[name].detach())
                if style_weight and scale == 0:
                    style = style + F.l1_loss(gram(ours[name]), gram(theirs[name].detach()))
            if scale == 0:
                image = F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False,
                                      recompute_scale_factor=True)
                target = F.interpolate(target, scale_factor=0.5, mode="bilinear", align_corners=False,
                                       recompute_scale_factor=True)
        return loss + style * style_weight


def imagenet_normalised(image: torch.Tensor) -> torch.Tensor:
    """As the reference: the image taken to be in [-1, 1] (it is not: the renderer's output is in [0, 1]), moved to
    [0, 1] and normalised with ImageNet's mean and deviation."""
    mean = image.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = image.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((image + 1) / 2 - mean) / std


def gram(x: torch.Tensor) -> torch.Tensor:
    batch, channels, height, width = x.shape
    flat = x.reshape(batch, channels, height * width)
    return flat.bmm(flat.transpose(1, 2)) / (height * width * channels)


class Renderer(nn.Module):
    """(face (B,1,3,H,W), target sketches (B,T,3,H,W), reference faces and their sketches (B,N,3,H,W), mels
    (B,1,1,80,16)) -> (the drawn face (B,3,H,W) in [0, 1], the blended warped reference (B,3,H,W)). Faces are BGR in
    [0, 1] at 128 x 128; the face's lower half is zeroed here, as in the reference."""

    def __init__(self):
        super().__init__()
        self.flow_module = DenseFlowNetwork()
        self.translation = TranslationNetwork()
        self.perceptual = PerceptualLoss()

    def forward(self, face: torch.Tensor, sketches: torch.Tensor, ref_faces: torch.Tensor,
                ref_sketches: torch.Tensor, mels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        warped_h1, warped_h2, warped_face = self.flow_module(ref_faces, ref_sketches, sketches)
        upper = face[:, 0].clone()
        upper[:, :, upper.size(2) // 2:] = 0
        inputs = torch.cat([upper, sketches.flatten(1, 2)], dim=1)
        return self.translation(inputs, warped_face, warped_h1, warped_h2, mels), warped_face
