"""Converters from the checkpoint files the paper's README names to files qaclims loads.

Each converter reads one source file, checks every key and shape it keeps, refuses what it
does not recognise, and writes its result atomically (`python -m qaclims convert`).
"""
