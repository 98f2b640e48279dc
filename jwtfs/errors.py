"""The exception tree shared by every layer.

    JwtfsError
    ├── ConfigError          bad config file, key file or command-line input
    ├── AuthError            a token failed a check (one subclass per check)
    │   ├── TokenMalformedError
    │   ├── TokenSignatureError
    │   ├── TokenExpiredError
    │   ├── TokenNotYetValidError
    │   ├── TokenClaimError   missing or wrongly typed claim, audience, issuer
    │   ├── TokenRevokedError
    │   └── ScopeError        the token is valid but does not reach the path
    ├── NotFoundError        no such inode, version or block
    ├── IntegrityError       ciphertext or a block failed authentication
    ├── StoreError           the local store or index failed (I/O)
    │   └── StoreFullError   the disk holding the store is full
    ├── RemoteError          a pinning target failed or answered wrongly
    └── FilesystemError      a POSIX rule is broken; carries the errno to return

Foreign exceptions are translated into these at the edge of the one module that
uses the foreign library, and chained with ``from``.
"""


class JwtfsError(Exception):
    """Base of every error jwtfs raises on purpose."""


class ConfigError(JwtfsError):
    """A config file, key file or argument is unusable; the message names the fix."""


class AuthError(JwtfsError):
    """A token was refused; the message is the reason, safe to log."""


class TokenMalformedError(AuthError):
    """The token is not a well-formed compact JWS."""


class TokenSignatureError(AuthError):
    """The signature does not verify, or the algorithm or key is not allowed."""


class TokenExpiredError(AuthError):
    """The token's ``exp`` lies in the past beyond the leeway."""


class TokenNotYetValidError(AuthError):
    """The token's ``nbf`` or ``iat`` lies in the future beyond the leeway."""


class TokenClaimError(AuthError):
    """A required claim is missing or wrong (``exp``, ``aud``, ``iss``, ``scope``)."""


class TokenRevokedError(AuthError):
    """The token's ``jti`` is listed in the revocation file."""


class ScopeError(AuthError):
    """Every present token is valid, but none grants the action on the path."""


class NotFoundError(JwtfsError):
    """No such inode, version, stream or block."""


class IntegrityError(JwtfsError):
    """Stored content failed authentication or does not match its CID."""


class StoreError(JwtfsError):
    """The local store or the index could not be read or written."""


class StoreFullError(StoreError):
    """The filesystem holding the store or the staging area is full."""


class RemoteError(JwtfsError):
    """A pinning target was unreachable or answered wrongly."""


class FilesystemError(JwtfsError):
    """A request breaks POSIX rules (name exists, directory not empty, ...).

    ``errno`` is the POSIX error number the request must fail with; the fs
    layer passes it to the kernel unchanged.
    """

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or f"errno {errno}")
        self.errno = errno
