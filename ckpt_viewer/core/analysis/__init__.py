"""The analysis layer: checks, diffs, per-layer health and verification built on the layers below."""
