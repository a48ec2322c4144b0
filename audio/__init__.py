"""The audio front end, below every other layer: decoding any input to 16 kHz mono (decode.py) and the exact
Wav2Lip mel with its per-frame windows, offline and streaming (mel.py). models/, preprocess/ and engine/ all read
audio through here; the arithmetic between samples, mel frames and video frames lives in core.timebase."""
