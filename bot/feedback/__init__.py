"""Reviewers' feedback: signals recorded on findings (``signals``), the labels they give
(``labels``), acceptance figures (``stats``) and their plot (``plot``)."""
