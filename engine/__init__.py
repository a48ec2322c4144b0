"""The live loop: audio in, Wav2Lip mel windows per frame, batched inference, enhancement, paste-back, sinks."""
