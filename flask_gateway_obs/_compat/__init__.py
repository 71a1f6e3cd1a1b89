"""The only modules that touch a dependency's private names, one per library.

Each states the versions it was verified with; outside them the concern takes the
library's public path (slower, still correct) and says so once at info level.
"""
