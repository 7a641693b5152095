"""Reporting: a study's tables and figures from its runs (``lmsleep report``, :mod:`.report`), the figures
themselves (:mod:`.study_figures`) and the pictures of single samples that validation logs (:mod:`.plots`).

Layer: above ``data`` and ``lit`` (it reads task configs), below ``callbacks`` (which draw with :mod:`.plots`).
"""
