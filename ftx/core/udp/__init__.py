"""Reliable UDP, sans I/O: packets, loss recovery, congestion control, sessions."""
