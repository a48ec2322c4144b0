"""Where frames go: files, MPEG-TS/WebM streams for OBS, the virtual camera, a preview window; OBS control."""
