"""Study files: the schema of their sections (:mod:`.schema`), and the loader of TOML and --set (:mod:`.loader`)."""
