"""The sans-I/O core: bytes and datagrams in, bytes and events out.

Nothing in this package opens a socket, reads a clock or touches a file;
``tests/test_core_purity.py`` enforces it.
"""
