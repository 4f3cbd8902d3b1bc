"""Figures: one function per figure, each writing a PNG (matplotlib, Agg back end)."""
