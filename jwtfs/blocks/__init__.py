"""The embedded content-addressed store.

``cid`` names blocks, ``unixfs`` cuts a stream into the same DAG that Kubo's
``add --cid-version=1 --raw-leaves`` builds, ``store`` keeps streams and
their nodes on disk, and ``car`` exports a DAG as a CARv1 file. Nothing here
knows about keys or paths: a stream is opaque bytes.
"""
