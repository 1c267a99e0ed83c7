"""Figure builders, independent of any model: the Plotly figures of the app and the reports (plots), and the checked
figures of the documents (figures). Evaluation and the app draw with them.
"""
