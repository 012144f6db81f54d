"""The bottom layer every stage and task may import: the task spec and registry, the model bundle (manifest,
hashes, signature). It imports nothing else of sonogate but ``sonogate.errors``."""
