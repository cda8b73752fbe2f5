"""The listing layer: opens a checkpoint and lists its structure without executing or
reading tensor values; imports neither torch nor numpy (lint-imports checks it)."""
