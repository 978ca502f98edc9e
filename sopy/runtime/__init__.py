"""How actors run and talk: supervision with restart backoff, the config change feed, channel
helpers, asking the config actor, and listening on a Unix socket safely."""
