"""Offline evaluation helpers shared by the export step and the front wing: the bundled data sets
(``datasets``), ranking metrics (``metrics``) and retrieval evaluation over a Pipeline
(``retrieval``).

They import the runtime core, never the front wing or ``crossrank.export``; the core never imports
them (``import crossrank`` does not load this package).
"""
