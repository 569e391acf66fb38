"""Reviewing a diff: parse it (``bot.diff``), run the model over it (``pipeline``), render the
comments (``render``), and the queue's job that does all of it for a merge request (``job``);
``localgit`` gives ``reviewbot review`` the diff of a local range."""
