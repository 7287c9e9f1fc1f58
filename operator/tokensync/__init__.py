"""tokensync: keeps OAuth2 client-credentials access tokens fresh in Kubernetes Secrets."""

__version__ = "0.1.0"
