"""The secured system's token issuer and auth settings (tests/services/security), for the MCP tests here."""

from tests.services.security.conftest import auth_settings, issuer

__all__ = ["auth_settings", "issuer"]
