"""Wav2Lip-384 with spatial attention (primepake Wav2Lip_384 / stream-wav2lip Wav2Lip_384SAM) and SyncNet_color_384."""
from ..blocks import GeneratorSpec, SyncNetSpec, audio_encoder_1024, conv, res, up, with_act

GENERATOR = GeneratorSpec(
    name="wav2lip384", size=384, description="Wav2Lip 384x384 SAM (tanh head)",
    encoder=(
        (conv(6, 8, 7, 1, 3),),                                   # 384
        (conv(8, 16, stride=2), *res(16, 2)),                     # 192
        (conv(16, 32, stride=2), *res(32, 2)),                    # 96
        (conv(32, 64, stride=2), *res(64, 2)),                    # 48
        (conv(64, 128, stride=2), *res(128, 2)),                  # 24
        (conv(128, 256, stride=2), *res(256, 2)),                 # 12
        (conv(256, 512, stride=2), *res(512, 2)),                 # 6
        (conv(512, 1024, stride=2), *res(1024, 2)),               # 3
        (conv(1024, 1024, padding=0), conv(1024, 1024, 1, 1, 0)), # 1
    ),
    audio=tuple(audio_encoder_1024()),
    decoder=(
        (conv(1024, 1024, 1, 1, 0),),                                            # 1   (+1024)
        (up(2048, 1024, stride=1, padding=0, output_padding=0), *res(1024, 1)),  # 3   (+1024)
        (up(2048, 1024), *res(1024, 2)),                                         # 6   (+512)
        (up(1536, 768), *res(768, 2)),                                           # 12  (+256)
        (up(1024, 512), *res(512, 2)),                                           # 24  (+128)
        (up(640, 256), *res(256, 2)),                                            # 48  (+64)
        (up(320, 128), *res(128, 2)),                                            # 96  (+32)
        (up(160, 80), *res(80, 2)),                                              # 192 (+16)
        (up(96, 64), *res(64, 2)),                                               # 384 (+8)
    ),
    output_cin=72, head="tanh", sam=True, audio_refine=True,
)

SYNCNET = SyncNetSpec(
    name="syncnet384", size=384, description="SyncNet_color_384 (primepake / stream-wav2lip), 1024-d",
    face=(*with_act([conv(15, 16, 7, 1, 3), conv(16, 32, 5, (1, 2), 1), *res(32, 2), conv(32, 64, stride=2),
                     *res(64, 2), conv(64, 128, stride=2), *res(128, 2), conv(128, 256, stride=2), *res(256, 2),
                     conv(256, 512, stride=2), *res(512, 2), conv(512, 1024, stride=2), *res(1024, 2),
                     conv(1024, 1024, stride=2), conv(1024, 1024, padding=0)], "leaky"),
          conv(1024, 1024, 1, 1, 0)),
    audio=tuple(audio_encoder_1024(act="leaky")),
)
