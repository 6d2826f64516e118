"""See what a run did: figures, a self-contained HTML report, head discovery, mode connectivity.

    from abft.report.html import write_report          # report.html of a run directory (no model needed)
    from abft.report.snapshot import RunSnapshot        # what the runner records from the model for it
    from abft.report.discovery import discover_heads    # `abft heads`
    from abft.report.interpolation import interpolation_grid   # `abft interpolate`

Submodules are imported on use: matplotlib loads only when a figure is drawn.
"""
