"""Draw a run directory: figures and a self-contained HTML report, from the run's files only.

    from abft.report.html import write_report          # report.html of a run directory (no model needed)
    from abft.report import figures                     # matplotlib Figures (also for `abft heads` / interpolate)

Submodules are imported on use: matplotlib loads only when a figure is drawn.
"""
