"""Pure, deterministic rules (no I/O, no clock): imported by workflows and by backtests alike."""
