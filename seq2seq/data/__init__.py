"""Data sources: where token ids come from."""
