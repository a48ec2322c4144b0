"""Sample media made on the spot from what ships in packages (no download): a presenter clip and speech."""
