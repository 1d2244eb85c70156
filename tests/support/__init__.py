"""What the tests share: one mount manager, one layer builder, one tree snapshot, one CLI runner, the test images
and the registry under test (also used by scripts/bench)."""
