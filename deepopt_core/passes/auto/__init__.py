"""The `auto` pass: an accuracy-bounded search over recipes of the other passes (see :mod:`.search`)."""
