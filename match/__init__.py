"""match: a reverse image search server.

Goldberg image signatures (compatible with ascribe's image-match), stored in an
embedded SQLite store or Elasticsearch, served over a dsys/match-compatible HTTP API,
with crowd verification of matches through the MTurk requester API.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "create_app"]


def __getattr__(name: str) -> object:
    # Importing match (for match.signature, say) must not import Flask.
    if name == "create_app":
        from match.app import create_app

        return create_app
    raise AttributeError(name)
