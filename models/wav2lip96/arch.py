"""Wav2Lip-96 (Rudrabha/Wav2Lip: wav2lip.pth, wav2lip_gan.pth) and its lip-sync expert (lipsync_expert.pth)."""
from ..blocks import DiscriminatorSpec, GeneratorSpec, Layer, SyncNetSpec, audio_encoder_512, conv, res, up

GENERATOR = GeneratorSpec(
    name="wav2lip96", size=96, description="Wav2Lip 96x96 (Rudrabha)",
    encoder=(
        (conv(6, 16, 7, 1, 3),),                                # 96
        (conv(16, 32, stride=2), *res(32, 2)),                  # 48
        (conv(32, 64, stride=2), *res(64, 3)),                  # 24
        (conv(64, 128, stride=2), *res(128, 2)),                # 12
        (conv(128, 256, stride=2), *res(256, 2)),               # 6
        (conv(256, 512, stride=2), *res(512, 1)),               # 3
        (conv(512, 512, padding=0), conv(512, 512, 1, 1, 0)),   # 1
    ),
    audio=tuple(audio_encoder_512()),
    decoder=(
        (conv(512, 512, 1, 1, 0),),                              # 1   (+512)
        (up(1024, 512, stride=1, padding=0, output_padding=0), *res(512, 1)),  # 3 (+512)
        (up(1024, 512), *res(512, 2)),                           # 6   (+256)
        (up(768, 384), *res(384, 2)),                            # 12  (+128)
        (up(512, 256), *res(256, 2)),                            # 24  (+64)
        (up(320, 128), *res(128, 2)),                            # 48  (+32)
        (up(160, 64), *res(64, 2)),                              # 96  (+16)
    ),
    output_cin=80,
)

SYNCNET = SyncNetSpec(
    name="syncnet96", size=96, description="SyncNet_color 96 (Rudrabha lipsync_expert.pth), 512-d",
    face=(conv(15, 32, 7, 1, 3), conv(32, 64, 5, (1, 2), 1), *res(64, 2), conv(64, 128, stride=2), *res(128, 3),
          conv(128, 256, stride=2), *res(256, 2), conv(256, 512, stride=2), *res(512, 2), conv(512, 512, stride=2),
          conv(512, 512, padding=0), conv(512, 512, 1, 1, 0)),
    audio=tuple(audio_encoder_512(extra_256_residual=True)),
)


def _plain(cin: int, cout: int, kernel=3, stride=1, padding=1) -> Layer:
    return Layer(cin, cout, kernel, stride, padding, act="leaky0.01", norm=False)


DISCRIMINATOR = DiscriminatorSpec(  # Rudrabha's Wav2Lip_disc_qual; input: the lower half, 3 x 48 x 96
    name="disc96", size=96,
    blocks=(
        (_plain(3, 32, 7, 1, 3),),                                   # 48 x 96
        (_plain(32, 64, 5, (1, 2), 2), _plain(64, 64, 5, 1, 2)),     # 48 x 48
        (_plain(64, 128, 5, 2, 2), _plain(128, 128, 5, 1, 2)),       # 24
        (_plain(128, 256, 5, 2, 2), _plain(256, 256, 5, 1, 2)),      # 12
        (_plain(256, 512, 3, 2, 1), _plain(512, 512, 3, 1, 1)),      # 6
        (_plain(512, 512, 3, 2, 1), _plain(512, 512, 3, 1, 1)),      # 3
        (_plain(512, 512, 3, 1, 0), _plain(512, 512, 1, 1, 0)),      # 1
    ),
)
