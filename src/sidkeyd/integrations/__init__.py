"""Adapters that make third-party Smile ID SDKs sign through sidkeyd (imported on demand)."""
