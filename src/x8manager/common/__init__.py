"""Code shared by every service: journal logging and systemd notification."""
