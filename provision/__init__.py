"""What makes a host a client, a director or a web node, for every backend."""

from provision.host import Progress, provision

__all__ = ["Progress", "provision"]
