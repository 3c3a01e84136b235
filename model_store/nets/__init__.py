"""The networks: the per-domain layers, one file per architecture, pruning by slicing and the
one cost counter."""
