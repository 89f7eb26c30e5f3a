"""Floor 7: widgets, plots, report and narration: the only room that imports ipywidgets or matplotlib.
"""
