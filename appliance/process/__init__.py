"""The process model: supervisor parts (slots, sockets, heartbeats, status) and the worker child."""
