"""A study's workers: opening a study (open), one worker (run) and its trial loop (loop), local worker
processes (pool), what a worker reads from its environment (env), the pre-flight check, heartbeats,
recovery, and the queries of the CLI."""
