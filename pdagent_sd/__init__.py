"""pdagent-sd: a systemd-native PagerDuty agent."""

__version__ = "0.1.0"
