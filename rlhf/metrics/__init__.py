"""`evaluate` metric modules shipped with the package, so evaluation works without the hub."""
