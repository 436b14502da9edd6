"""Transport drivers: they own sockets and clocks and move the core's bytes."""
