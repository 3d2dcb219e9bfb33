"""fedsim: fast federated and decentralized learning simulation under Byzantine attack."""

__version__ = "0.1.0"
