"""Wav2Lip generators and SyncNet lip experts at 96/288/384 px, their checkpoint loader, the mouth predictor."""
