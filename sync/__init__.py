"""State replication between gateway nodes: a pure protocol core and a thin asyncio transport."""
