"""How actors run and talk: supervision with restart backoff, the config change feed, channel
helpers, asking the config actor, listening on a Unix socket safely, and the checks for files
only Sopy's user may touch."""
