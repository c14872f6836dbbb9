"""The runners: ways into the scorers beyond one in-process call, side by side.

- :mod:`~imagereward.runners.batch`: resumable JSONL batch jobs (``imagereward score --input``);
- :mod:`~imagereward.runners.dataset`: data sets on Ray Data (``imagereward score-dataset``);
- :mod:`~imagereward.runners.serve`: the reward server on Ray Serve (``imagereward serve``).

Every runner loads through :class:`~imagereward.spec.ModelSpec`, decodes through
:mod:`imagereward.items` and scores with ``score_pixels``; see ``docs/adding-a-runner.md``.
ReFL's reward (:mod:`imagereward.refl.reward`) and the command line (:mod:`imagereward.cli`)
use the same pieces. Importing this package imports neither Ray nor FastAPI.
"""
