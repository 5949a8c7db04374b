"""How the built-in demo is made: its data, the EDM model's and the classifier's training recipes,
and the reference statistics. Reached through `skipsearch demo ...`; the search never imports it.
"""
