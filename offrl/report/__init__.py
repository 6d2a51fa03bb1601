"""Run reports: ``write_report(run_dir)`` builds a self-contained ``report.html``; ``write_comparison_report``
puts several runs side by side (the automated workflow)."""

from offrl.report.html import load_metrics, write_comparison_report, write_report

__all__ = ["load_metrics", "write_comparison_report", "write_report"]
