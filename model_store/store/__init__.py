"""What a stored model is on disk and how it changes: the manifest, the store's record and lock,
versions, weights and the store CLI (see versions.py for the guarantees)."""
