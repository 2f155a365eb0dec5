"""Reaching devices: the framed protocol, the agent that serves it on a device, the client and its
transports (local, SSH, serial), deploy, and the model hub."""
