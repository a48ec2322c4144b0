"""What every layer shares and nothing else provides: the user-facing error type and the command-line wrapper that
prints it in one line, ffmpeg children whose stderr is always drained, and scratch folders that never outlive a
crash."""
