"""The `sopy` command line: `serve`, `start` (in the background), `admin` (one command over the
admin socket), `events` (follow the change stream) and `mock-upstream`. The top layer: it starts
the supervisor or talks to a running Sopy, and nothing below imports it."""
