"""Wav2Lip-288 in primepake's wav2lipv2 layout (+ its 2021 PReLU flavour) and the two 288 lip-sync experts."""
from ..blocks import GeneratorSpec, SyncNetSpec, audio_encoder_512, audio_encoder_1024, conv, res, up, with_act

GENERATOR = GeneratorSpec(
    name="wav2lip288", size=288, description="Wav2Lip 288x288 (primepake wav2lipv2, ReLU)",
    encoder=(
        (conv(6, 16, 7, 1, 3),),                                # 288
        (conv(16, 32, 5, 2, 2), *res(32, 1)),                   # 144
        (conv(32, 32, stride=2), *res(32, 2)),                  # 72
        (conv(32, 64, stride=2), *res(64, 3)),                  # 36
        (conv(64, 128, stride=2), *res(128, 2)),                # 18
        (conv(128, 256, stride=2), *res(256, 2)),               # 9
        (conv(256, 512, stride=2), *res(512, 1)),               # 5
        (conv(512, 512, padding=0), conv(512, 512, 1, 1, 0)),   # 3
        (conv(512, 512, padding=0), conv(512, 512, 1, 1, 0)),   # 1
    ),
    audio=tuple(audio_encoder_512()),
    decoder=(
        (conv(512, 512, 1, 1, 0),),                                              # 1   (+512)
        (up(1024, 512, stride=1, padding=0, output_padding=0), *res(512, 1)),    # 3   (+512)
        (up(1024, 512, output_padding=0), *res(512, 2)),                         # 5   (+512)
        (up(1024, 512, output_padding=0), *res(512, 2)),                         # 9   (+256)
        (up(768, 384), *res(384, 2)),                                            # 18  (+128)
        (up(512, 256), *res(256, 2)),                                            # 36  (+64)
        (up(320, 128), *res(128, 2)),                                            # 72  (+32)
        (up(160, 64), *res(64, 2)),                                              # 144 (+32)
        (up(96, 64), *res(64, 2)),                                               # 288 (+16)
    ),
    output_cin=80,
)

GENERATOR_PRELU_2021 = GENERATOR.with_act("prelu", "wav2lip288_prelu2021",
                                          "Wav2Lip 288x288 (primepake 2021 flavour, PReLU)")

# primepake's 2021 syncnetv2 (PReLU, 512-d); face input 15 x 144 x 288.
SYNCNET_PRELU_2021 = SyncNetSpec(
    name="syncnet288_prelu2021", size=288, description="SyncNet 288 (primepake 2021, PReLU), 512-d",
    face=tuple(with_act([conv(15, 32, 7, 1, 3), conv(32, 32, 5, 1, 1), conv(32, 32), conv(32, 64, 5, (1, 2), 1),
                         *res(64, 2), conv(64, 128, stride=2), *res(128, 3), conv(128, 256, stride=2), *res(256, 2),
                         conv(256, 512, stride=2), *res(512, 2), conv(512, 512, stride=2),
                         conv(512, 512, 3, 2, 0), conv(512, 512, padding=0), conv(512, 512, 2, 1, 0),
                         conv(512, 512, 1, 1, 0)], "prelu")),
    audio=tuple(audio_encoder_512(extra_256_residual=True, act="prelu")),
)

# stream-wav2lip's SyncNet_color_288 (1024-d): the 384 expert with a k5 stride-2 second stage and 3 residuals at 128.
SYNCNET = SyncNetSpec(
    name="syncnet288", size=288, description="SyncNet_color_288 (stream-wav2lip), 1024-d",
    face=(*with_act([conv(15, 16, 7, 1, 3), conv(16, 32, 5, (1, 2), 1), *res(32, 2), conv(32, 64, 5, 2, 1),
                     *res(64, 2), conv(64, 128, stride=2), *res(128, 3), conv(128, 256, stride=2), *res(256, 2),
                     conv(256, 512, stride=2), *res(512, 2), conv(512, 1024, stride=2), *res(1024, 2),
                     conv(1024, 1024, stride=2), conv(1024, 1024, padding=0)], "leaky"),
          conv(1024, 1024, 1, 1, 0)),
    audio=tuple(audio_encoder_1024(act="leaky")),
)
