"""Translation between the three wire formats Sopy's clients speak (Chat Completions, the
Responses API, Anthropic Messages) for a provider that serves another: each format's module
reads and writes the one internal representation of `sopy.translation.items`.
"""
