"""The author's code, imported from the bytes it is fingerprinted by (reads no spec)."""
