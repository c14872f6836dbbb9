"""Evaluation: preference accuracy on ``test.json`` (Table 3) and the model benchmark (Table 1).

- :mod:`.metrics`: pure metric functions (preference accuracy, bootstrap, Spearman).
- :mod:`.data`: reading ``test.json``, fetching the test set, safe unzipping.
- :mod:`.preference`: scoring the test set and the ``test_<model>.json`` files.
- :mod:`.benchmark`: mean rewards of generation models and rank correlation.
- :mod:`.report`: markdown tables and PNG plots (matplotlib, optional).

Importing this package does not import torch or matplotlib.
"""
