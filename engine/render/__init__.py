"""The render core: the presenter cache, the audio timeline, the lip-sync and paste-back stages and the clock."""
