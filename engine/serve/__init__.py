"""The network service: the speech protocol, sessions and their capacity, WebRTC, metrics, aiohttp and Ray Serve."""
