"""`reviewbot flywheel bootstrap`: labelled examples from static analyzers' findings on real code
(analyzers → severity table → the three tasks' examples, split by file, deduplicated, balanced)."""
