"""A study's workers: the pre-flight check, the worker loop, heartbeats, recovery, and the runner."""
