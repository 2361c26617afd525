"""Lab 11 variant notify_before_store: the store and the 'ready' notification start together (asyncio.gather)."""
