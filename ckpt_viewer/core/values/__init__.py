"""The values layer: reads tensor values (numpy, torch only where a dtype needs it) and
computes statistics from them."""
