"""Analyses of a model around a run, as library code (their commands: abft.cli.analysis).

heads.py          per-head label attention (heads.json of a run; `abft heads`' discovery)
ceiling.py        accuracy with the last token's attention row edited (`abft ceiling`)
interpolation.py  accuracy on the plane through the base and two runs (`abft interpolate`)
snapshot.py       what a run records from the model for its report (example attention, W_Q/W_K shift)
setup.py          the model and prompt builder of a configuration
"""
