"""Where studies live: URLs, engines and their retries, the study lock, read-only readers, trial records."""
