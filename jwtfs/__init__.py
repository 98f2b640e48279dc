"""jwtfs: an encrypted, token-gated FUSE filesystem whose content lives on IPFS."""

__version__ = "0.1.0"
