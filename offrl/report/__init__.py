"""Run reports: ``write_report(run_dir)`` builds a self-contained ``report.html``."""

from offrl.report.html import load_metrics, write_report

__all__ = ["load_metrics", "write_report"]
