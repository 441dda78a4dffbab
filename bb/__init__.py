"""BlastBeat: an HTTP/HTTPS/WebSocket front server for ZeroMQ nodes."""

__version__ = "0.1.0"
