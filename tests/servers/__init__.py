"""Local servers speaking other providers' wire protocols, for the integration tests."""
