"""The report's snapshot: a study read once, without writing."""

from __future__ import annotations

import pytest
from report_study import NAME, T0

from tuner.errors import TunerError
from tuner.report.snapshot import StudySnapshot, load_snapshot


def test_snapshot_reads_the_study_without_writing(storage: str, snapshot: StudySnapshot) -> None:
    assert snapshot.name == NAME and snapshot.direction == "maximize" and snapshot.metric == "val_kendall_tau"
    assert [t.number for t in snapshot.trials] == list(range(7))
    assert snapshot.trials[0].datetime_start == T0
    with pytest.raises(TunerError, match="no study 'nope'.*studies there"):
        load_snapshot("nope", storage)
