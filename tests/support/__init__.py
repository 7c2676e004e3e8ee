"""Test harnesses shared by the suites: real servers and the daemon as a real process."""
