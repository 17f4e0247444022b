"""Real traffic for the lab: servers and clients that run inside lab hosts and report flow health."""
