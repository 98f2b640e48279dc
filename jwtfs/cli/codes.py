"""Exit codes of the ``jwtfs`` command."""

EXIT_OK = 0
# Something failed at run time (a node down, a token not valid).
EXIT_FAILURE = 1
# The user's mistake: bad arguments, config, key or token file.
EXIT_USAGE = 2
