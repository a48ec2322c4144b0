"""Commands that join layers the layers themselves must not join: here a video goes through preprocess/ before
models/ judges it, so models/ never imports preprocess/ or engine/."""
