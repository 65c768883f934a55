"""Test plugins and throwaway plugin distributions for tests/test_plugins.py and tests/test_cli.py."""
