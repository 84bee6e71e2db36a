"""The JSON API: one blueprint (:mod:`match.api.views`), request fields
(:mod:`match.api.fields`) and the one error renderer (:mod:`match.api.errors`)."""

from match.api.errors import register as register_error_handlers
from match.api.views import blueprint

__all__ = ["blueprint", "register_error_handlers"]
