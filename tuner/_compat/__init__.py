"""The one door to other packages' internals.

Every use of a private name of Optuna, optuna-integration, Lightning or torch passes through here: a small
named function, or a base class that gives a private hook a name of tuner's own, each saying why no public
route does the job. An upgrade that moves one breaks this package alone: ``tests/test_private_names.py``
checks each name still exists, and ``tests/test_compat.py`` fails on any other module of tuner that
reaches past a public API.

Split by upstream, so that importing one part imports no other package (the storage and the report import
no torch, the model and the data no Optuna): :mod:`.optuna`, :mod:`.optuna_grpc` (Optuna's gRPC proxy,
which needs grpcio), :mod:`.optuna_integration`, :mod:`.lightning`, :mod:`.torch`. Nothing here imports
the rest of tuner.
"""
