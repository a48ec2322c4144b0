"""Weight-free mouth animation: the default lip model when no Wav2Lip checkpoint is given."""
from .animator import MouthAnimator, audio_features

__all__ = ["MouthAnimator", "audio_features"]
