"""Test and benchmark helpers that are not part of the engine: `baseline` is an independent
re-statement of the official computation, op for op (the tests' truth at shapes the fixtures do not
cover, and the benchmark's fallback baseline when no official checkout is given)."""
