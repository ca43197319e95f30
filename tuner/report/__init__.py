"""The HTML report of a study: a snapshot read once, pure data functions, figures, and the page."""

from tuner.report.page import write_report

__all__ = ["write_report"]
