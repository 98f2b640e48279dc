"""Master key, per-file keys, the segment format, and token key files.

The only package that imports ``cryptography``. ``keys`` holds the master key
and the checks on secret files, ``segments`` the ciphertext stream format of
``docs/FORMAT.md``, ``signing`` the key files used to sign and verify tokens.
"""
