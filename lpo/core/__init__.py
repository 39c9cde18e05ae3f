"""Shared plumbing: errors, config overrides, registries, atomic IO, hashes, run folders and the device-hour meter."""
