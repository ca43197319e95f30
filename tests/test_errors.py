from __future__ import annotations

import pytest

from tuner.errors import first_line


@pytest.mark.parametrize(("err", "default", "line"), [
    (RuntimeError("boom\nTraceback (most recent call last):\n  ..."), "", "boom"),
    (RuntimeError("\n  server closed the connection\nDETAIL: x"), "", "server closed the connection"),
    (RuntimeError(), "RuntimeError", "RuntimeError"),
    (RuntimeError(" \n "), "", ""),
    ("UNAVAILABLE: no\nmore", "no details", "UNAVAILABLE: no"),
])
def test_first_line_is_the_first_line_with_text_or_the_default(err: BaseException | str, default: str,
                                                                line: str) -> None:
    assert first_line(err, default) == line
