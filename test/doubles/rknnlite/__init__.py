"""Test double of rknn-toolkit-lite2 2.5.0's top-level package (the real one is empty too)."""
