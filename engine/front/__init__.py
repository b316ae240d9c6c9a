"""The front wing: the ``crossrank`` command line, the demo, bench and tune.

It imports the runtime core (``crossrank``), the evaluation helpers (``crossrank.evaluation``) and,
lazily, the export step; the core never imports anything from here.
"""
