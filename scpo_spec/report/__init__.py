"""The certification report: evidence gathered from a run's log and checkpoint (never re-trained),
plots, and an HTML or Markdown page a reviewer can sign off from."""

from scpo_spec.report.evidence import Evidence, gather
from scpo_spec.report.render import write_report

__all__ = ["Evidence", "gather", "write_report"]
