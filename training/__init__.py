"""Offline side: data, BAP training, pruning, evaluation and publishing into the model store."""
